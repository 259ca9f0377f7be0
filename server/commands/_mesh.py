"""Reach a mesh for a CLI command: the one at --target, else a private in-process one."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scillm.clients import ScillmClient

from ..settings import Settings

__all__ = ["mesh_client"]


async def _reachable(target: str) -> bool:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=1.5)
        except grpc.aio.AioRpcError:
            return False
    return True


@contextlib.asynccontextmanager
async def mesh_client(target: str | None, services: tuple[str, ...],
                      ) -> AsyncIterator[ScillmClient]:
    """A client of the mesh at `target`; without one, of a mesh started here for the call."""
    if target and await _reachable(target):
        async with ScillmClient(target) as client:
            yield client
        return
    if target:
        print(f"scillm: no mesh answers at {target}; starting one in this process",
              file=sys.stderr)
    from ..app import Mesh

    settings = replace(Settings.from_env(), grpc_port=0, http_enabled=False,
                       services=tuple(dict.fromkeys(("completion", *services))))
    mesh = Mesh(settings)
    await mesh.start()
    try:
        async with ScillmClient(mesh.grpc_target) as client:
            yield client
    finally:
        await mesh.stop(grace=1.0)
