"""The door's `CallStopper` among the other client interceptors of its channels, against a
real gRPC server: a failed call still ends its trace span, and a stopped call reads as
UNAVAILABLE "shutting down" however it is read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from scripted_grpc import REQUEST, Scripted, serve

from scillm.clients import RPCError, ScillmClient, openai_wire
from scillm.completion.v1 import completion_pb2 as pb
from scillm.server.call_stopper import CallStopper


@pytest.mark.parametrize("answered", [True, False], ids=["fails", "answers"])
async def test_a_traced_call_through_the_stopper_ends_its_span(answered: bool) -> None:
    """OpenTelemetry's client interceptor ends a unary call's span from the call's done
    callback: the stopper, inside it, raised a failed call's error at it instead of
    passing the call out, and the span was never ended (nor exported: a broken trace)."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    servicer = Scripted(fails=1 if answered else 0, answered=True)
    server, target = await serve(servicer)
    chain = [*aio_client_interceptors(tracer_provider=provider), *CallStopper().interceptors]
    try:
        async with ScillmClient(target, interceptors=chain) as client:
            if answered:
                with pytest.raises(RPCError):
                    await client.completion.create(REQUEST)
            else:
                await client.completion.create(REQUEST)
    finally:
        await server.stop(None)
    (span,) = exported.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == (14 if answered else 0)


async def test_a_stopped_call_reads_as_unavailable() -> None:
    """Awaited, or asked its status (as an interceptor outside the stopper asks it)."""
    release, arrived = asyncio.Event(), asyncio.Event()

    class Held(Scripted):
        async def Completion(self, request: pb.CompletionRequest,
                             context: grpc.aio.ServicerContext[Any, Any],
                             ) -> pb.CompletionResponse:
            arrived.set()
            await release.wait()
            return await super().Completion(request, context)

    server, target = await serve(Held(fails=0))
    stopper = CallStopper()
    try:
        async with ScillmClient(target, interceptors=list(stopper.interceptors)) as client:
            call = client.completion._stub.Completion(
                openai_wire.request_to_proto(REQUEST), timeout=30)
            waiting = asyncio.ensure_future(call)
            await arrived.wait()  # at the server: kept since it was made
            assert stopper.stop_calls("the server is shutting down") == 1
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await waiting
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert await call.code() == grpc.StatusCode.UNAVAILABLE
            assert await call.details() == "the server is shutting down"
    finally:
        release.set()
        await server.stop(None)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_call_whose_caller_is_cancelled_ends_its_span_cancelled(stream: bool) -> None:
    """OpenTelemetry's client interceptor records a failure only as an `AioRpcError`: a
    caller cancelled mid-call (the door's caller hung up) left a unary call's span unended,
    never exported, and ended a stream's as a success. The channel here is the door's
    chain without the retry wrapper `ScillmClient` adds, which happens to swallow the
    cancellation where OpenTelemetry's waits (tests/server/test_tracing.py has the door)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from scillm.completion.v1 import completion_pb2_grpc
    from scillm.server.telemetry import client_interceptors

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    release, arrived = asyncio.Event(), asyncio.Event()

    class Held(Scripted):
        async def Completion(self, request: pb.CompletionRequest,
                             context: grpc.aio.ServicerContext[Any, Any],
                             ) -> pb.CompletionResponse:
            arrived.set()
            await release.wait()
            return await super().Completion(request, context)

        async def CompletionStream(self, request: pb.CompletionStreamRequest,
                                   context: grpc.aio.ServicerContext[Any, Any],
                                   ) -> AsyncIterator[pb.CompletionStreamResponse]:
            yield pb.CompletionStreamResponse(chunk=pb.CompletionChunk(id="first"))
            arrived.set()
            await release.wait()

    server, target = await serve(Held(fails=0))
    chain = [*client_interceptors(True, provider), *CallStopper().interceptors]
    request = openai_wire.request_to_proto(REQUEST)
    try:
        async with grpc.aio.insecure_channel(target, interceptors=chain) as channel:
            stub = completion_pb2_grpc.CompletionServiceStub(channel)

            async def ask() -> object:
                if stream:
                    return [event async for event in stub.CompletionStream(
                        pb.CompletionStreamRequest(request=request), timeout=30)]
                return await stub.Completion(request, timeout=30)

            asking = asyncio.ensure_future(ask())
            await arrived.wait()  # the server holds the call (a stream, after a message)
            asking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asking
    finally:
        release.set()
        await server.stop(None)
    (span,) = exported.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert span.status.status_code == StatusCode.ERROR
    assert "cancel" in (span.status.description or "").lower()
