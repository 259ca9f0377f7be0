"""The channel's retries (clients/_retry.py), against a real gRPC server scripted to fail:
a call no server answered is tried again; an answer, the mesh's status details on it, is
final; a stream is tried again only before its first message."""

from __future__ import annotations

import grpc
import pytest
from scripted_grpc import REQUEST, Scripted, serve

from scillm.clients import RPCError, ScillmClient
from scillm.completion.v1 import completion_pb2 as pb


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_call_no_server_answered_is_tried_again(stream: bool) -> None:
    servicer = Scripted(fails=2)
    server, target = await serve(servicer)
    try:
        async with ScillmClient(target) as client:
            if stream:
                ids = [e.chunk.id async for e in client.completion.stream(REQUEST)]
                assert ids == ["call-3"]
            else:
                assert (await client.completion.create(REQUEST)).id == "call-3"
    finally:
        await server.stop(None)
    assert servicer.calls == 3


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_servers_answer_is_final(stream: bool) -> None:
    """UNAVAILABLE from a mesh handler (its engine's retries spent on the upstream) was
    tried 5 times by the channel's retry policy, each running the engine again."""
    servicer = Scripted(fails=5, answered=True)
    server, target = await serve(servicer)
    try:
        async with ScillmClient(target) as client:
            with pytest.raises(RPCError) as info:
                if stream:
                    [e async for e in client.completion.stream(REQUEST)]
                else:
                    await client.completion.create(REQUEST)
    finally:
        await server.stop(None)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.reason == "UpstreamError"
    assert servicer.calls == 1


async def test_a_stream_is_not_tried_again_after_its_first_message() -> None:
    servicer = Scripted(fails=1, midway=True)
    server, target = await serve(servicer)
    seen: list[str] = []
    try:
        async with ScillmClient(target) as client:
            with pytest.raises(RPCError) as info:
                async for event in client.completion.stream(REQUEST):
                    seen.append(event.chunk.id)
    finally:
        await server.stop(None)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert seen == ["first"] and servicer.calls == 1


async def test_attempts_stop_at_five_and_within_the_deadline() -> None:
    servicer = Scripted(fails=100)
    server, target = await serve(servicer)
    try:
        async with ScillmClient(target) as client:
            with pytest.raises(RPCError) as info:
                await client.completion.create(REQUEST)
            assert servicer.calls == 5
            with pytest.raises(RPCError) as late:
                await client.completion.create(REQUEST, timeout=0.001)
    finally:
        await server.stop(None)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert late.value.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert servicer.calls <= 6  # no attempt after the deadline: at most the first


async def test_a_traced_call_retried_to_an_answer_is_traced_as_answered() -> None:
    """OpenTelemetry's client interceptor (the door's and CompletionLink's, tracing on)
    reads a call's status before anyone awaits it: it read the first attempt's
    UNAVAILABLE, and a call retried to an answer was exported as a failed span."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    servicer = Scripted(fails=2)
    server, target = await serve(servicer)
    try:
        async with ScillmClient(target, interceptors=list(
                aio_client_interceptors(tracer_provider=provider))) as client:
            assert (await client.completion.create(REQUEST)).id == "call-3"
    finally:
        await server.stop(None)
    (span,) = exported.get_finished_spans()
    assert span.status.status_code is not StatusCode.ERROR, span.status
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 0


async def test_a_call_cancelled_between_attempts_is_cancelled() -> None:
    """`cancel()` while the call waited to try again returned False and let the last
    attempt's UNAVAILABLE through: the stopper's 'shutting down' became 'connections to
    all backends failing'."""
    import asyncio

    async with ScillmClient("127.0.0.1:1") as client:  # nothing listens there
        call = client.completion._stub.Completion(
            pb.CompletionRequest(model="m"), timeout=30)
        waiting = asyncio.ensure_future(call)
        # Most likely between attempts by now (the first refused at once); if not, the
        # attempt itself is cancelled: either way, a cancelled call.
        await asyncio.sleep(0.02)
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert call.cancelled()


async def test_a_task_cancelled_while_it_reads_the_status_is_cancelled() -> None:
    """A task asking a retried call's `code()` (OpenTelemetry's interceptor does, inside
    the caller's task) and cancelled meanwhile went on as if nothing happened, reading
    CANCELLED: the wrapper swallowed its task's own cancellation."""
    import asyncio

    async with ScillmClient("127.0.0.1:1") as client:  # nothing listens there: retried
        call = client.completion._stub.Completion(
            pb.CompletionRequest(model="m"), timeout=30)
        reading = asyncio.ensure_future(call.code())
        await asyncio.sleep(0.02)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        call.cancel()
