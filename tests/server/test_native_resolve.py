"""The native gRPC server runs a method's interceptors once, not on every call, when every
interceptor says it may (`handler_per_method`, as the mesh's `CallContext` does); the
handler it then serves is still the one the interceptors return, and calls the front hands
to the fallback server (unknown methods) still pass through them (server/native_server.py).
Real servers on 127.0.0.1:0, real grpcio clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from scillm.server.native_server import DrainingServer

UNARY = "/probe.Probe/Unary"
STREAM = "/probe.Probe/Stream"


class Counting(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts its runs per method and wraps each handler so that replies say so."""

    def __init__(self, per_method: bool) -> None:
        self.handler_per_method = per_method
        self.runs: dict[str, int] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.runs[details.method] = self.runs.get(details.method, 0) + 1
        handler = await continuation(details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return b"wrapped:" + await inner(request, context)
            return grpc.unary_unary_rpc_method_handler(unary)
        inner_stream = handler.unary_stream

        async def stream(request: bytes, context: grpc.aio.ServicerContext,
                         ) -> AsyncIterator[bytes]:
            async for item in inner_stream(request, context):
                yield b"wrapped:" + item
        return grpc.unary_stream_rpc_method_handler(stream)


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _twice(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield request
    yield request


async def _serve(interceptor: Counting) -> tuple[DrainingServer, str]:
    server = DrainingServer(interceptors=[interceptor])
    # As generated code registers a service (the front serves these methods itself).
    server.add_registered_method_handlers("probe.Probe", {
        "Unary": grpc.unary_unary_rpc_method_handler(_echo),
        "Stream": grpc.unary_stream_rpc_method_handler(_twice)})
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("per_method", [True, False])
async def test_interceptors_run_once_per_method_when_they_allow_it(per_method: bool) -> None:
    interceptor = Counting(per_method)
    server, target = await _serve(interceptor)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            unary = channel.unary_unary(UNARY)
            stream = channel.unary_stream(STREAM)
            for i in range(3):
                assert await unary(b"u%d" % i, timeout=20) == b"wrapped:u%d" % i
                assert [r async for r in stream(b"s", timeout=20)] == [b"wrapped:s"] * 2
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await channel.unary_unary("/probe.Probe/Missing")(b"x", timeout=20)
    finally:
        await server.stop(None)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    calls = 1 if per_method else 3
    assert interceptor.runs[UNARY] == calls
    assert interceptor.runs[STREAM] == calls
    # The fallback server was given the interceptors: unknown methods still meet them.
    assert interceptor.runs["/probe.Probe/Missing"] == 1
