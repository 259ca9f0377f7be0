"""Translators between other wire formats and the SciLLM gRPC services; no business logic."""
