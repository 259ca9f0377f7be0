"""The in-process channel the mesh gives its own clients (the shim, CompletionLink): the
same handlers and interceptors as the gRPC door, value semantics, deadlines, cancellation.

The shim's suites (tests/bridges) run through it too: every HTTP call in them takes it.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import uvloop
from grpc_health.v1 import health_pb2
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient, openai_wire
from scillm.completion.v1 import completion_pb2 as pb
from scillm.server.handler_registry import HandlerRegistry
from scillm.server.interceptors import CallContext
from scillm.server.local_channel import LocalChannel
from scillm.server.metrics import Metrics
from scillm.server.settings import Settings

T = TypeVar("T")

ECHO = {"model": "echo/local", "messages": [{"role": "user", "content": "hi there"}]}


def text(reply: pb.CompletionResponse) -> str:
    content = openai_wire.response_from_proto(reply)["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


def run(mesh: RunningMesh, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the mesh's own loop (the channel belongs to it)."""
    return asyncio.run_coroutine_threadsafe(coro, mesh.loop).result(timeout=30)


def local(mesh: RunningMesh) -> LocalChannel:
    channel = mesh.mesh.local_channel
    assert isinstance(channel, LocalChannel)
    return channel


@pytest.fixture(scope="module")
def cached_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """A Completion mesh with the response cache on (it is off unless configured)."""
    tmp = tmp_path_factory.mktemp("cached")
    config = tmp / "models.yaml"
    config.write_text('{"model_list": [{"model_name": "echo/*", "litellm_params": '
                      '{"model": "echo/*"}}], "litellm_settings": {"cache": true}}')
    running = start_mesh(mesh_settings(tmp, config_path=config, services=("completion",)))
    yield running
    running.stop()


def test_a_unary_call_answers_as_the_grpc_door_does(cached_mesh: RunningMesh) -> None:
    mesh = cached_mesh

    async def both() -> tuple[pb.CompletionResponse, pb.CompletionResponse]:
        inproc = ScillmClient(channel=local(mesh))
        async with ScillmClient(mesh.grpc_target) as remote:
            request = {**ECHO, "messages": [{"role": "user", "content": "same both ways"}]}
            return (await inproc.completion.create(request),
                    await remote.completion.create(request))

    mine, theirs = run(mesh, both())
    assert text(mine) == text(theirs)
    assert "same both ways" in text(mine)
    # One engine behind both doors: the gRPC call is the in-process call's cache hit.
    assert not mine.routing.cache_hit and theirs.routing.cache_hit


def test_errors_carry_status_details_and_request_id(mesh: RunningMesh) -> None:
    async def fail(client: ScillmClient) -> RPCError:
        with pytest.raises(RPCError) as info:
            await client.completion.create({**ECHO, "model": "no-such-model"},
                                           request_id="rid-local-1")
        return info.value

    async def both() -> tuple[RPCError, RPCError]:
        async with ScillmClient(mesh.grpc_target) as remote:
            return await fail(ScillmClient(channel=local(mesh))), await fail(remote)

    mine, theirs = run(mesh, both())
    assert mine.code == theirs.code == grpc.StatusCode.NOT_FOUND
    assert mine.request_id == "rid-local-1"
    assert mine.reason == theirs.reason and mine.reason
    assert str(mine) == str(theirs)


def test_an_unknown_method_is_unimplemented(mesh: RunningMesh) -> None:
    async def call() -> grpc.StatusCode:
        method = local(mesh).unary_unary("/scillm.nothing.v1.Nope/Call")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await method(pb.ListModelsRequest())
        return info.value.code()

    assert run(mesh, call()) == grpc.StatusCode.UNIMPLEMENTED


def test_replies_are_copies(cached_mesh: RunningMesh) -> None:
    """Two identical requests (the second a cache hit): changing the first reply must not
    change what the cache hands out next."""
    async def twice() -> tuple[str, str, bool]:
        client = ScillmClient(channel=local(cached_mesh))
        request = {**ECHO, "messages": [{"role": "user", "content": "copy me"}]}
        first = await client.completion.create(request)
        original = text(first)
        first.choices[0].message.content[0].text = "mutated by the caller"
        second = await client.completion.create(request)
        return original, text(second), second.routing.cache_hit

    original, again, hit = run(cached_mesh, twice())
    assert hit
    assert again == original


def test_a_stream_arrives_in_order_and_ends(mesh: RunningMesh) -> None:
    async def collect() -> list[pb.CompletionStreamResponse]:
        client = ScillmClient(channel=local(mesh))
        request = {**ECHO, "messages": [{"role": "user", "content": "one two three four"}],
                   "scillm": {"cache": {"bypass": True}}}
        return [e async for e in client.completion.stream(request)]

    events = run(mesh, collect())
    assert events[-1].HasField("end")
    said = "".join(c["delta"].get("content") or "" for e in events if e.HasField("chunk")
                   for c in openai_wire.chunk_from_proto(e.chunk)["choices"])
    assert "one two three four" in said


class _Silent:
    """An OpenAI-compatible base URL that accepts, reads the request and never answers;
    `disconnects` counts the connections its peer closed."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.requests = 0
        self._server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            while await reader.read(4096):
                pass
            self.disconnects += 1
        finally:
            writer.close()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])


@pytest.fixture(scope="module")
def silent_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningMesh, _Silent]]:
    import threading

    import uvloop

    tmp = tmp_path_factory.mktemp("silent")
    loop = uvloop.new_event_loop()
    silent = _Silent()
    port = loop.run_until_complete(silent.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = Path(tmp / "models.yaml")
    config.write_text(
        "model_list:\n"
        "  - model_name: silent\n"
        "    litellm_params: {model: openai/silent, api_base: "
        f"'http://127.0.0.1:{port}/v1', api_key: none, timeout: 30}}\n"
        "router_settings: {num_retries: 0}\n")
    running = start_mesh(mesh_settings(tmp, config_path=config, http_enabled=False))
    yield running, silent
    running.stop()
    loop.call_soon_threadsafe(loop.stop)


def test_the_timeout_is_the_deadline(silent_mesh: tuple[RunningMesh, _Silent]) -> None:
    mesh, _ = silent_mesh

    async def call() -> tuple[grpc.StatusCode, float]:
        client = ScillmClient(channel=local(mesh))
        started = asyncio.get_running_loop().time()
        with pytest.raises(RPCError) as info:
            await client.completion.create({**ECHO, "model": "silent"}, timeout=0.3)
        return info.value.code, asyncio.get_running_loop().time() - started

    code, took = run(mesh, call())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 5


def test_cancelling_a_stream_closes_the_upstream(
        silent_mesh: tuple[RunningMesh, _Silent]) -> None:
    mesh, silent = silent_mesh

    async def open_then_cancel() -> int:
        before_requests, before = silent.requests, silent.disconnects
        call = local(mesh).unary_stream(
            "/scillm.completion.v1.CompletionService/CompletionStream")(
            pb.CompletionStreamRequest(request=openai_wire.request_to_proto(
                {**ECHO, "model": "silent"})),
            timeout=30)
        nxt = asyncio.ensure_future(call.__anext__())
        for _ in range(200):  # until the upstream has the request
            if silent.requests > before_requests:
                break
            await asyncio.sleep(0.01)
        assert not nxt.done()
        call.cancel()
        nxt.cancel()
        for _ in range(200):  # the upstream sees its connection close
            if silent.disconnects > before:
                break
            await asyncio.sleep(0.01)
        return silent.disconnects - before

    assert run(mesh, open_then_cancel()) == 1


# -- semantics, against handlers written for the purpose -----------------------------------

Req, Rep = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
SERVICE = "scillm.test.v1.Probe"


class Probe:
    """Handlers that misbehave on purpose, and what they saw."""

    def __init__(self) -> None:
        self.kept: list[Any] = []
        self.reply = Rep(status=Rep.SERVING)
        self.stopped: list[str] = []
        self.log: list[str] = []

    async def keep(self, request: Any, context: Any) -> Any:
        self.kept.append(request)
        request.service = "changed by the handler"
        return self.reply

    async def sleep(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(5)
        return self.reply

    async def nothing(self, request: Any, context: Any) -> Any:
        return None

    async def stray_cancel(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield self.reply
        raise asyncio.CancelledError  # not a cancellation of this call

    async def burst(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """Three replies ready at once: nothing awaited between them."""
        for i in range(1, 4):
            self.log.append(f"made {i}")
            yield Rep(status=i)

    async def forever(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            while True:
                yield self.reply
                await asyncio.sleep(0.01)
        except BaseException as exc:
            self.stopped.append(type(exc).__name__)
            raise


def probe_channel(**kwargs: Any) -> tuple[LocalChannel, Probe, Metrics]:
    probe, metrics = Probe(), Metrics()
    unary = {name: grpc.unary_unary_rpc_method_handler(getattr(probe, name))
             for name in ("keep", "sleep", "nothing")}
    stream = {name: grpc.unary_stream_rpc_method_handler(getattr(probe, name))
              for name in ("stray_cancel", "forever", "burst")}
    registry = HandlerRegistry()
    registry.add_methods(SERVICE, {**unary, **stream})
    chain = [CallContext(Settings(), {}, metrics)]
    return LocalChannel(registry, chain, **kwargs), probe, metrics


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def test_messages_are_copied_both_ways() -> None:
    async def go() -> None:
        channel, probe, _ = probe_channel()
        request = Req(service="the caller's")
        reply = await channel.unary_unary(method("keep"))(request)
        assert request.service == "the caller's"  # the handler changed its own copy
        request.service = "changed by the caller"
        reply.status = Rep.NOT_SERVING
        assert probe.kept[0].service == "changed by the handler"
        assert probe.reply.status == Rep.SERVING

    uvloop.run(go())


def test_expired_deadlines_are_deadline_exceeded_and_counted_so() -> None:
    """Under uvloop, whose timers may fire a little early: every expiry counts."""
    async def go() -> Metrics:
        channel, _, metrics = probe_channel()
        call = channel.unary_unary(method("sleep"))
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(Req(), timeout=0.01)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        return metrics

    metrics = uvloop.run(go())
    counted = metrics.registry.get_sample_value(
        "scillm_rpc_requests_total",
        {"method": "Probe/sleep", "model": "", "code": "DEADLINE_EXCEEDED"})
    assert counted == 20


def test_refusals_before_the_handler_runs() -> None:
    async def go() -> tuple[grpc.StatusCode, grpc.StatusCode, list[Any]]:
        channel, probe, _ = probe_channel(max_receive_bytes=10)
        keep = channel.unary_unary(method("keep"))
        with pytest.raises(grpc.aio.AioRpcError) as big:
            await keep(Req(service="x" * 100))
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await keep(Req(), timeout=0)
        return big.value.code(), late.value.code(), probe.kept

    too_big, too_late, kept = uvloop.run(go())
    assert too_big == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert too_late == grpc.StatusCode.DEADLINE_EXCEEDED
    assert kept == []


def test_a_reply_that_is_not_a_message_is_unknown() -> None:
    async def go() -> grpc.StatusCode:
        channel, _, _ = probe_channel()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(method("nothing"))(Req())
        return info.value.code()

    assert uvloop.run(go()) == grpc.StatusCode.UNKNOWN


def test_a_stray_cancellation_does_not_end_a_stream_cleanly() -> None:
    async def go() -> tuple[int, grpc.StatusCode]:
        channel, _, _ = probe_channel()
        got = 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(5):  # a stream that never ends fails the test
                async for _ in channel.unary_stream(method("stray_cancel"))(Req()):
                    got += 1
        return got, info.value.code()

    assert uvloop.run(go()) == (1, grpc.StatusCode.CANCELLED)


def test_the_first_reply_of_a_burst_reaches_the_caller_before_the_next_is_made() -> None:
    """A handler with replies ready at once (an upstream's whole stream in one read) lets
    its caller take the first before it makes the second, so the caller can send it on;
    the rest still arrive, in order."""
    async def go() -> list[str]:
        channel, probe, _ = probe_channel()
        async for reply in channel.unary_stream(method("burst"))(Req()):
            probe.log.append(f"got {reply.status}")
        return probe.log

    log = uvloop.run(go())
    assert log[:3] == ["made 1", "got 1", "made 2"]
    assert [entry for entry in log if entry.startswith("got")] == ["got 1", "got 2", "got 3"]


def test_dropping_a_stream_cancels_its_handler() -> None:
    """Dropped while the handler awaits: cancelled there (CancelledError). Dropped right
    after the first reply, while the handler waits at the channel's hand-over of it:
    closed at its yield (GeneratorExit)."""
    async def go(taken: int) -> list[str]:
        channel, probe, _ = probe_channel()
        call = channel.unary_stream(method("forever"))(Req())
        for _ in range(taken):
            await call.__anext__()
        del call
        gc.collect()
        for _ in range(100):
            if probe.stopped:
                break
            await asyncio.sleep(0.01)
        return probe.stopped

    assert uvloop.run(go(2)) == ["CancelledError"]
    assert uvloop.run(go(1)) == ["GeneratorExit"]


def test_a_local_call_leaves_the_callers_request_id_alone() -> None:
    from scillm.server.interceptors import _request_id, current_request_id

    async def go() -> str:
        channel, _, _ = probe_channel()
        _request_id.set("the caller's id")
        await channel.unary_unary(method("keep"))(Req(), metadata=(("x-request-id", "inner"),))
        return current_request_id()

    assert uvloop.run(go()) == "the caller's id"


class _Counting(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts how often the channel asks it for a handler; adds a reply mark per call."""

    def __init__(self, per_method: bool) -> None:
        self.handler_per_method = per_method
        self.asked = 0

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.asked += 1
        return await continuation(details)


@pytest.mark.parametrize("per_method", [True, False])
def test_a_method_is_resolved_once_only_when_every_interceptor_allows_it(
        per_method: bool) -> None:
    async def go() -> tuple[int, int, list[Any]]:
        probe = Probe()
        registry = HandlerRegistry()
        registry.add_methods(SERVICE, {"keep": grpc.unary_unary_rpc_method_handler(probe.keep)})
        counting = _Counting(per_method)
        channel = LocalChannel(registry, [counting, CallContext(Settings(), {}, Metrics())])
        keep = channel.unary_unary(method("keep"))
        for _ in range(5):
            await keep(Req())
        with pytest.raises(grpc.aio.AioRpcError) as info:  # nothing cached for a miss
            await channel.unary_unary(method("missing"))(Req())
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        return counting.asked, len(probe.kept), probe.kept

    asked, calls, _ = uvloop.run(go())
    assert calls == 5  # every call reaches the handler (through CallContext)
    assert asked == (1 + 1 if per_method else 5 + 1)
