"""A call whose handler fails with trailing metadata the native front refuses is answered,
as grpcio's server answers it (server/native_server.py `DrainingServer._fail`).

The front sends no `grpc-` key but `grpc-status-details-bin`, nor an invalid key: it
raised, pygrpc-native sent nothing, and the caller waited for its deadline. Each call here
has a short deadline, so a server that sends nothing fails the test with
DEADLINE_EXCEEDED instead of holding it. Real servers on 127.0.0.1:0: the native one, and
grpcio's (the mesh's `GrpcioServer`) as the reference it must match.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import pytest

from scillm.server.grace_end import GrpcioServer
from scillm.server.native_server import DrainingServer

#: Long enough for a loopback call on a busy machine; short enough that a hang fails fast.
DEADLINE_S = 5.0
DETAILS = ("grpc-status-details-bin", b"\x08\x05")
RESERVED = [("grpc-retry-pushback-ms", "-1"), ("x-kept", "1"), DETAILS, ("grpc-foo", "v")]
INVALID = [("X-Not-Lowercase", "v"), ("x-kept", "1")]


def _aborting(trailers: Sequence[tuple[str, str | bytes]]) -> Callable[..., Any]:
    async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing",
                            trailing_metadata=tuple(trailers))
    return unary


async def _stream_then_abort(request: bytes, context: grpc.aio.ServicerContext[Any, Any],
                             ) -> AsyncIterator[bytes]:
    yield b"first"
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing",
                        trailing_metadata=tuple(RESERVED))


@pytest.fixture(params=["native", "grpcio"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    server: grpc.aio.Server = (DrainingServer() if request.param == "native"
                               else GrpcioServer(interceptors=(), options=()))
    server.add_registered_method_handlers("probe.Probe", {
        "Reserved": grpc.unary_unary_rpc_method_handler(_aborting(RESERVED)),
        "Invalid": grpc.unary_unary_rpc_method_handler(_aborting(INVALID)),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream_then_abort)})
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _trailers(error: grpc.aio.AioRpcError) -> list[tuple[str, str | bytes]]:
    return list(error.trailing_metadata() or ())


async def test_a_failure_with_reserved_trailers_gets_its_status(
        target: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "scillm.server")
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/probe.Probe/Reserved")(b"x", timeout=DEADLINE_S)
        seen: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for message in channel.unary_stream("/probe.Probe/Stream")(
                    b"x", timeout=DEADLINE_S):
                seen.append(message)
    for error in (info.value, streamed.value):
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        assert error.details() == "no such thing"
        assert DETAILS in _trailers(error)
    assert ("x-kept", "1") in _trailers(info.value)
    assert seen == [b"first"]
    if "grpc-foo" not in dict(_trailers(info.value)):  # dropped (native): and said so
        assert "grpc-foo, grpc-retry-pushback-ms" in caplog.text
        assert "/probe.Probe/Reserved" in caplog.text


async def test_a_failure_with_invalid_trailers_is_internal(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/probe.Probe/Invalid")(b"x", timeout=DEADLINE_S)
    assert info.value.code() == grpc.StatusCode.INTERNAL, info.value
    assert info.value.details() == "Invalid metadata"
    assert "x-kept" not in dict(_trailers(info.value))
