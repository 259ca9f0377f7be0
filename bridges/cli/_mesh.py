"""Reach a mesh for a CLI verb: the one at --target, else one started here for the call."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scillm.clients import ScillmClient

__all__ = ["LocalMesh", "mesh_client"]

#: Starts a mesh in this process serving the named services; yields its gRPC target.
LocalMesh = Callable[[tuple[str, ...]], AbstractAsyncContextManager[str]]


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
                      local: LocalMesh, api_key: str | None = None,
                      ) -> AsyncIterator[ScillmClient]:
    """A client of the mesh at `target`, presenting `api_key` (a mesh with a master key
    needs one); without a mesh there, of the mesh `local` starts."""
    if target and await _reachable(target):
        async with ScillmClient(target, api_key=api_key) as client:
            yield client
        return
    if target:
        print(f"scillm: no mesh answers at {target}; starting one in this process",
              file=sys.stderr)
    async with local(services) as started, ScillmClient(started, api_key=api_key) as client:
        yield client
