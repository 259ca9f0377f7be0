"""The in-process channel the mesh gives its own clients (the shim, CompletionLink): the
same handlers and interceptors as the gRPC door, value semantics, deadlines, cancellation.

The shim's suites (tests/bridges) run through it too: every HTTP call in them takes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient, openai_wire
from scillm.completion.v1 import completion_pb2 as pb
from scillm.server.local_channel import LocalChannel

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


def test_a_unary_call_answers_as_the_grpc_door_does(mesh: RunningMesh) -> None:
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


def test_replies_are_copies(mesh: RunningMesh) -> None:
    """Two identical requests (the second a cache hit): changing the first reply must not
    change what the cache hands out next."""
    async def twice() -> tuple[str, str, bool]:
        client = ScillmClient(channel=local(mesh))
        request = {**ECHO, "messages": [{"role": "user", "content": "copy me"}]}
        first = await client.completion.create(request)
        original = text(first)
        first.choices[0].message.content[0].text = "mutated by the caller"
        second = await client.completion.create(request)
        return original, text(second), second.routing.cache_hit

    original, again, hit = run(mesh, twice())
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
