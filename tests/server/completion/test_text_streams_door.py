"""`POST /v1/completions` with `"stream": true` end to end: the real openai SDK's
`client.completions.create(..., stream=True)` against the OpenAI door of a real mesh, the
mesh's gRPC client (`text_stream`, async and sync), and a loopback upstream speaking
OpenAI's /completions SSE wire format: chunks in OpenAI's shape, the usage chunk
`stream_options.include_usage` asks for, retries and a fallback before the first chunk,
errors before it (plain answers) and after it (in-band), a caller hanging up (the upstream
request closes), the run kept and replayed, and a virtual key paying."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from completion_upstream import Upstream, status
from keyed import key_spend, keyed_mesh, new_key
from meshutil import RunningMesh, mesh_settings, start_mesh
from text_stream_upstream import text_stream, text_stream_cut, text_stream_endless, text_stream_of

from scillm.clients import RPCError, ScillmClient, SyncScillmClient
from scillm.completion.v1 import completion_pb2 as pb
from scillm.server.manifests import open_run_store, replay
from scillm.server.request_facts import estimate_of

#: The fields of every streamed chunk, as OpenAI's.
CHUNK_FIELDS = {"id", "object", "created", "model", "choices"}


def _sdk(url: str, key: str = "none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


@pytest.fixture
def door(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    """A Completion mesh keeping its runs, with `echo/...` and models at the loopback
    upstream: `flaky` (429 with Retry-After, then streams), `down` (500, falling back to
    `backup`), `cut` (closes after its first chunk), `garbage` (a first chunk of the wrong
    shape), `endless` (streams until the caller leaves) and `claude` (Anthropic: none)."""
    upstream.plan("flaky", status(429, {"retry-after": "1"}), text_stream)
    upstream.plan("down", status(500))
    upstream.plan("backup", text_stream)
    upstream.plan("cut", text_stream_cut)
    upstream.plan("garbage", text_stream_of([{"choices": "no"}]))
    upstream.plan("endless", text_stream_endless)
    names = ("flaky", "down", "backup", "cut", "garbage", "endless")
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": f"{upstream.url}/v1", "api_key": "x"}}
            for name in names] + [
            {"model_name": "claude", "litellm_params": {
                "model": "anthropic/claude-x", "api_base": upstream.url, "api_key": "x"}},
            {"model_name": "echo/*", "litellm_params": {"model": "echo/*"}}],
        "router_settings": {"num_retries": 1, "fallbacks": [{"down": ["backup"]}]}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, store_completions=True,
                                       services=("completion",)))
    yield running
    running.stop()


def _joined(chunks: list[Any]) -> dict[int, tuple[str, str | None]]:
    """Each choice's text, joined, and its finish reason (OpenAI chunks, or the SDK's)."""
    out: dict[int, tuple[str, str | None]] = {}
    for chunk in chunks:
        for c in chunk["choices"] if isinstance(chunk, dict) else chunk.choices:
            index, text, finish = (c["index"], c["text"], c["finish_reason"]) \
                if isinstance(c, dict) else (c.index, c.text, c.finish_reason)
            before, done = out.get(index, ("", None))
            out[index] = (before + text, finish or done)
    return out


async def _events(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                  **headers: str) -> tuple[httpx.Response, list[Any]]:
    """The response, and its SSE `data:` values (JSON, or "[DONE]")."""
    async with client.stream("POST", f"{url}/v1/completions", json=body,
                             headers=headers) as reply:
        raw = (await reply.aread()).decode()
    assert raw.endswith("\n\n"), raw
    return reply, [json.loads(d) if d != "[DONE]" else d for block in raw.split("\n\n")
                   if block for d in [block.removeprefix("data: ")]]


async def test_the_openai_sdk_streams_text_with_its_usage_and_the_run_replays(
        door: RunningMesh) -> None:
    sdk = _sdk(door.http_url)
    request: dict[str, Any] = {"model": "echo/base", "prompt": ["the cat sat on", "a b"],
                               "max_tokens": 3, "n": 2}
    whole = await sdk.completions.create(**request)
    chunks = [c async for c in await sdk.completions.create(
        **request, stream=True, stream_options={"include_usage": True})]
    await sdk.close()
    *texts, last = chunks
    assert _joined(texts) == {c.index: (c.text, c.finish_reason) for c in whole.choices}
    assert _joined(texts)[0] == (" the cat sat", "length")
    assert {(c.id, c.object, c.model) for c in chunks} == {
        (texts[0].id, "text_completion", "echo/base")}
    assert all(c.usage is None and c.choices for c in texts)
    assert last.choices == [] and last.usage == whole.usage
    assert last.usage is not None and last.usage.completion_tokens == 3 * 2 + 2 * 2
    # The run is kept as the text completion it made, and replays as one, identically.
    assert last.model_extra is not None
    run_id = last.model_extra["scillm"]["run_id"]
    assert last.model_extra["scillm"]["routing"]["provider"] == "echo"
    stored = open_run_store(door.mesh.settings.store_path).get(run_id)
    assert stored is not None and stored.manifest.model == "echo/base"
    assert isinstance(stored.request, pb.TextCompletionRequest)
    assert isinstance(stored.result, pb.TextCompletionResponse)
    assert [(c.index, c.text) for c in stored.result.choices] == [
        (c.index, c.text) for c in whole.choices]
    async with ScillmClient(door.grpc_target) as client:
        result, changed, _ = await replay(stored, client)
    assert isinstance(result, pb.TextCompletionResponse) and not changed


async def test_the_wire_shape_request_id_and_the_end(door: RunningMesh) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        reply, events = await _events(client, door.http_url, {
            "model": "echo/t", "prompt": [1, 2, 3], "max_tokens": 2, "stream": True},
            **{"x-request-id": "text-stream-1"})
        assert reply.status_code == 200
        assert reply.headers["x-request-id"] == "text-stream-1"
        assert reply.headers["content-type"].startswith("text/event-stream")
        *chunks, done = events
        assert done == "[DONE]" and chunks  # no usage chunk unless asked for
        assert all(set(c) == CHUNK_FIELDS and c["object"] == "text_completion"
                   for c in chunks)
        assert [c["choices"] for c in chunks] == [
            [{"text": " 1", "index": 0, "logprobs": None, "finish_reason": None}],
            [{"text": " 2", "index": 0, "logprobs": None, "finish_reason": None}],
            [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}]]
        # `"stream": false` is a plain answer, as before.
        plain = await client.post(f"{door.http_url}/completions", json={
            "model": "echo/t", "prompt": "x", "stream": False})
        assert plain.status_code == 200 and plain.json()["choices"][0]["text"] == " x"


@pytest.mark.parametrize(("body", "status_code", "param"), [
    ({"model": "echo/e", "prompt": "a", "stream": "yes"}, 400, "stream"),
    ({"model": "echo/e", "prompt": "a", "stream": True, "stream_options": []}, 400,
     "stream_options"),
    ({"model": "echo/e", "prompt": "a", "stream": True,
      "stream_options": {"include_usage": "yes"}}, 400, "stream_options.include_usage"),
    ({"model": "echo/e", "prompt": "a", "stream": True, "logprobs": 6}, 400, "logprobs"),
    ({"model": "echo/e", "prompt": [], "stream": True}, 400, "prompt"),
    ({"model": "echo/e", "prompt": "a", "stream": True, "n": 0}, 400, "n"),
    ({"model": "claude", "prompt": "a", "stream": True}, 400, "model"),
    ({"model": "no-such-model", "prompt": "a", "stream": True}, 404, "model"),
])
async def test_errors_before_the_first_chunk_are_plain_openai_answers(
        door: RunningMesh, body: dict[str, Any], status_code: int, param: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(f"{door.http_url}/v1/completions", json=body)
    assert reply.status_code == status_code, reply.text
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert "Traceback" not in reply.text and reply.headers["x-request-id"]


async def test_retries_and_fallbacks_happen_before_the_first_chunk(
        door: RunningMesh, upstream: Upstream) -> None:
    sdk = _sdk(door.http_url)
    flaky = [c async for c in await sdk.completions.create(
        model="flaky", prompt=["abcd", "xy"], stream=True,
        stream_options={"include_usage": True})]
    assert _joined(flaky) == {0: ("dcba", "length"), 1: ("yx", "length")}
    assert upstream.calls("flaky") == 2
    path, _, sent = upstream.requests[-1]
    assert path == "/v1/completions" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True} and sent["max_tokens"] == 16
    assert flaky[-1].model_extra is not None
    routing = flaky[-1].model_extra["scillm"]["routing"]
    assert routing["attempts"] == 2 and routing["last_retry_after_ms"] == 1000.0
    assert flaky[-1].usage is not None and flaky[-1].usage.total_tokens == 10
    fell = [c async for c in await sdk.completions.create(
        model="down", prompt="xyz", stream=True, stream_options={"include_usage": True})]
    assert _joined(fell) == {0: ("zyx", "length")}
    assert fell[-1].model_extra is not None
    routing = fell[-1].model_extra["scillm"]["routing"]
    assert (routing["fallback_used"], routing["fallback_model"]) == (True, "backup")
    # A first chunk of the wrong shape is the upstream's failure, tried again, then a 502.
    with pytest.raises(openai.APIStatusError) as bad:
        await sdk.completions.create(model="garbage", prompt="x", stream=True)
    assert bad.value.status_code == 502 and upstream.calls("garbage") == 2
    assert bad.value.body["type"] == "upstream_error"  # type: ignore[index]
    await sdk.close()


async def test_a_failure_after_the_first_chunk_goes_in_band_and_is_not_retried(
        door: RunningMesh, upstream: Upstream) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        reply, events = await _events(client, door.http_url, {
            "model": "cut", "prompt": "abcd", "stream": True,
            "stream_options": {"include_usage": True}})
    assert reply.status_code == 200
    first, error, done = events
    assert _joined([first]) == {0: ("dc", None)}
    assert error["error"]["type"] == "upstream_error" and error["error"]["message"]
    assert done == "[DONE]" and upstream.calls("cut") == 1
    sdk = _sdk(door.http_url)
    seen = []
    with pytest.raises(openai.APIError, match="connection closed"):
        async for chunk in await sdk.completions.create(model="cut", prompt="abcd",
                                                        stream=True):
            seen.append(chunk)
    assert _joined(seen) == {0: ("dc", None)}
    await sdk.close()


async def test_a_caller_who_hangs_up_closes_the_upstream_request(
        door: RunningMesh, upstream: Upstream) -> None:
    async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "POST", f"{door.http_url}/v1/completions",
            json={"model": "endless", "prompt": "tick", "stream": True}) as reply:
        assert reply.status_code == 200
        lines = reply.aiter_lines()
        assert (await anext(lines)).startswith("data: {")
    await asyncio.wait_for(upstream.disconnected.wait(), 20)


async def test_the_grpc_client_streams_text_and_cancels_mid_stream(
        door: RunningMesh, upstream: Upstream) -> None:
    async with ScillmClient(door.grpc_target) as client:
        events = [e async for e in client.completion.text_stream(
            {"model": "backup", "prompt": ["abcd"], "stream": True}, request_id="g-1")]
        *chunks, end = events
        assert all(e.WhichOneof("event") == "chunk" for e in chunks)
        assert "".join(c.text for e in chunks for c in e.chunk.choices) == "dcba"
        assert chunks[-1].chunk.choices[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert end.WhichOneof("event") == "end" and end.end.id == "cmpl-up1"
        assert end.end.usage.total_tokens == 5 and end.end.routing.provider == "openai"
        assert end.end.manifest.request_id == "g-1" and end.end.manifest.run_id
        for bad, code in ((pb.TextCompletionRequest(model="echo/g"),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (pb.TextCompletionRequest(prompt=[pb.EmbeddingInput(text="a")]),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (pb.TextCompletionRequest(model="nope", prompt=[
                              pb.EmbeddingInput(text="a")]), grpc.StatusCode.NOT_FOUND)):
            with pytest.raises(RPCError) as caught:
                [e async for e in client.completion.text_stream(bad)]
            assert caught.value.code == code
        # Closing the iterator cancels the call, and the call its upstream request.
        stream: AsyncIterator[pb.TextCompletionStreamResponse] = \
            client.completion.text_stream({"model": "endless", "prompt": "tick"})
        assert (await anext(stream)).WhichOneof("event") == "chunk"
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(upstream.disconnected.wait(), 20)


def test_the_sync_client_collects_a_text_stream(door: RunningMesh) -> None:
    with SyncScillmClient(door.grpc_target) as sync:
        *chunks, end = sync.text_stream({"model": "echo/s", "prompt": "c d", "echo": True})
    assert "".join(c.text for e in chunks for c in e.chunk.choices) == "c d c d"
    assert end.end.usage.completion_tokens == 2 and end.end.routing.provider == "echo"


MASTER = "sk-master-text-stream"


async def test_a_key_pays_for_its_streamed_text_completions(tmp_path: Path,
                                                            upstream: Upstream) -> None:
    """Charged the usage of the stream's end at the model's prices (asked for upstream
    whatever the caller's include_usage); a caller who leaves mid-stream is charged the
    estimate of its prompt and of what has streamed; a key limited to other models may not
    stream this one."""
    upstream.plan("base", text_stream, text_stream_endless)
    with keyed_mesh(tmp_path, MASTER, upstream.url, "base", prices=(0.5, 1.0)) as mesh:
        key = new_key(mesh, MASTER, max_budget=100.0)
        sdk = _sdk(mesh.http_url, key)
        chunks = [c async for c in await sdk.completions.create(
            model="base", prompt=["a", "b"], max_tokens=4, stream=True)]
        assert _joined(chunks) == {0: ("a", "length"), 1: ("b", "length")}
        # 4 prompt tokens at 0.5, 6 completion tokens at 1.0
        assert await key_spend(mesh, MASTER, key, at_least=8.0) == 8.0
        left = await sdk.completions.create(model="base", prompt="tick", stream=True)
        assert _joined([await anext(aiter(left))]) == {0: ("kc", None)}
        await left.close()
        await asyncio.wait_for(upstream.disconnected.wait(), 20)
        # At least the prompt's token (0.5) and one streamed token (1.0) on top.
        assert await key_spend(mesh, MASTER, key, at_least=9.5) >= 9.5
        await sdk.close()
        other = _sdk(mesh.http_url, new_key(mesh, MASTER, models=["elsewhere"]))
        with pytest.raises(openai.PermissionDeniedError):
            await other.completions.create(model="base", prompt="a", stream=True)
        await other.close()
        assert upstream.calls("base") == 2  # the refused call reached no upstream


def test_a_text_stream_reserves_what_a_text_completion_does() -> None:
    """The estimate a key reserves while the call runs is read through the stream's
    request, as a chat stream's is."""
    inner = pb.TextCompletionRequest(model="m", prompt=[pb.EmbeddingInput(text="x" * 38)],
                                     max_tokens=10, n=3)
    assert estimate_of(pb.TextCompletionStreamRequest(request=inner)) == estimate_of(inner) \
        == (10, 30)
