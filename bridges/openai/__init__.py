"""The OpenAI-compatible HTTP door (Starlette, plain ASGI)."""

from .app import create_app

__all__ = ["create_app"]
