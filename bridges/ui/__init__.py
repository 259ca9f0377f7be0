"""The runs UI: a small server-rendered site over the run store, mounted by the shim at
`/ui` (see `_app` for its routes and `_access` for its keys)."""

from ._app import create_ui

__all__ = ["create_ui"]
