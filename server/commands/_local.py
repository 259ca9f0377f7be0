"""The in-process mesh a CLI verb falls back to when no mesh answers at --target."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from ..settings import Settings

__all__ = ["local_mesh"]


@contextlib.asynccontextmanager
async def local_mesh(services: tuple[str, ...]) -> AsyncIterator[str]:
    """A mesh on an ephemeral port serving Completion and `services` (no HTTP shim),
    configured from the environment; yields its gRPC target, stops it afterwards."""
    from ..app import Mesh

    settings = replace(Settings.from_env(), grpc_port=0, http_enabled=False,
                       services=tuple(dict.fromkeys(("completion", *services))))
    mesh = Mesh(settings)
    await mesh.start()
    try:
        yield mesh.grpc_target
    finally:
        await mesh.stop(grace=1.0)
