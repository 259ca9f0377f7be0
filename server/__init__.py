"""The SciLLM server process: gRPC services, interceptors, health, reflection, CLI."""
