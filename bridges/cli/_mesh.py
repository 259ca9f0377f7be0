"""Reach a mesh for a CLI verb: the one at --target (with TLS given the mesh's TLS settings),
else one started here for the call."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scillm.clients import RPCError, ScillmClient, TlsConfig
from scillm.clients.probe import speaks_tls

__all__ = ["LocalMesh", "mesh_client"]

#: Starts a mesh in this process serving the named services; yields its gRPC target.
LocalMesh = Callable[[tuple[str, ...]], AbstractAsyncContextManager[str]]


async def _reachable(target: str, tls: TlsConfig | None) -> bool:
    async with ScillmClient(target, tls=tls) as client:
        try:
            await health_pb2_grpc.HealthStub(client.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.5)
        except grpc.aio.AioRpcError:
            return False
    return True


async def _wrong_kind(target: str, tls: TlsConfig | None) -> RPCError | None:
    """Why the dial of `target` failed when a server is there, of the other kind (TLS
    dialed in plaintext, or the reverse), or one whose handshake failed; None when no
    server answers there."""
    speaks = await speaks_tls(target, 1.5)
    if speaks and tls is None:
        why = (f"{target} speaks TLS, and this command dialed it in plaintext: give the "
               "mesh's TLS settings (--tls-cert and --tls-key, or SCILLM_TLS_CERT and "
               "SCILLM_TLS_KEY; --tls-client-ca with mutual TLS)")
    elif speaks is False and tls is not None:
        why = (f"{target} speaks plaintext, and this command dialed it with TLS: drop "
               "--tls-cert and --tls-key (SCILLM_TLS_CERT, SCILLM_TLS_KEY)")
    elif speaks:
        why = (f"{target} speaks TLS, but the handshake failed: its certificate must chain "
               "to --tls-client-ca (mutual TLS), else to the --tls-cert chain, and name the "
               "host dialed")
    else:
        return None
    return RPCError(grpc.StatusCode.UNAVAILABLE, why)


@contextlib.asynccontextmanager
async def mesh_client(target: str | None, services: tuple[str, ...],
                      local: LocalMesh, api_key: str | None = None,
                      tls: TlsConfig | None = None) -> AsyncIterator[ScillmClient]:
    """A client of the mesh at `target` (dialed with `tls` when given), presenting
    `api_key` (a mesh with a master key needs one); without a mesh there, of the mesh
    `local` starts. A server there that the dial did not fit (TLS dialed in plaintext, or
    the reverse) is RPCError UNAVAILABLE saying so, not a reason to run elsewhere."""
    if target and await _reachable(target, tls):
        async with ScillmClient(target, api_key=api_key, tls=tls) as client:
            yield client
        return
    if target:
        wrong = await _wrong_kind(target, tls)
        if wrong is not None:
            raise wrong
        print(f"scillm: no mesh answers at {target}; starting one in this process",
              file=sys.stderr)
    async with local(services) as started, ScillmClient(started, api_key=api_key) as client:
        yield client
