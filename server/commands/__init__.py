"""Server-side subcommands of `scillm` (doctor, codex-sidecar) and the in-process mesh the
client verbs of `scillm.bridges.cli` fall back to."""
