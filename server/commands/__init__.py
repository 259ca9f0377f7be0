"""Client-side subcommands of `scillm` (prove, codeworld): they talk to a mesh over gRPC."""
