"""What a kept completion run holds, through a real mesh keeping its completions.

Two defects of `SCILLM_STORE_COMPLETIONS`, each seen through the gRPC client, the OpenAI
door, the run store, `scillm runs show`, the runs UI and replay, against a loopback
upstream speaking OpenAI's wire format:

- A call ended by the server's own default deadline (`default_unary_timeout_s`,
  `default_stream_timeout_s`: no deadline of the caller's) was kept as `interrupted`, as
  if its caller had left; its caller was sent DEADLINE_EXCEEDED, and the run now reads
  `failed` with that status, as a call ended by its upstream's timeout did.
- A chat stream that reached its end was kept as its end event (usage, routing): the
  answer itself was not kept, so its page and `scillm runs show` showed no answer. It is
  kept as the chat completion it made (each choice's text, its tool calls, finish
  reasons, usage and routing), and replays as a stream, compared as that completion.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from completion_upstream import Upstream, slow, sse_event, sse_head
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.bridges.cli.runs import show_run
from scillm.clients import RPCError, ScillmClient, openai_wire
from scillm.completion.v1 import completion_pb2 as pb
from scillm.server.manifests import StoredRun, open_run_store, replay, run_state

_MODELS = ("slow", "tooly")


def _models(upstream: Upstream, tmp_path: Path) -> Path:
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": f"{upstream.url}/v1", "api_key": "x"}}
            for name in _MODELS],
        "router_settings": {"num_retries": 0}, "litellm_settings": {"cache": False}}))
    return config


def _chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
    return json.dumps({"id": "up-tool", "object": "chat.completion.chunk", "created": 7,
                       "model": "tooly", "choices": choices, **extra})


#: Two choices: an answer in pieces, and a tool call whose arguments come in pieces.
_TOOL_STREAM = [
    _chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
            {"index": 1, "delta": {"role": "assistant"}, "finish_reason": None}]),
    _chunk([{"index": 0, "delta": {"content": "The answer"}, "finish_reason": None}]),
    _chunk([{"index": 1, "delta": {"tool_calls": [{
        "index": 0, "id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": None}]),
    _chunk([{"index": 0, "delta": {"content": " is 42"}, "finish_reason": None},
            {"index": 1, "delta": {"tool_calls": [{
                "index": 0, "function": {"arguments": '{"city": '}}]}, "finish_reason": None}]),
    _chunk([{"index": 1, "delta": {"tool_calls": [{
        "index": 0, "function": {"arguments": '"Paris"}'}}]}, "finish_reason": None}]),
    _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"},
            {"index": 1, "delta": {}, "finish_reason": "tool_calls"}]),
    _chunk([], usage={"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}),
    "[DONE]"]


async def _tool_stream(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                       w: asyncio.StreamWriter) -> bool:
    assert req.get("stream"), req
    sse_head(w)
    for data in _TOOL_STREAM:
        sse_event(w, data)
    w.write(b"0\r\n\r\n")
    return True


@pytest.fixture
def short_deadlines(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    """Keeps its completions; the server ends a call after 0.5 s (its defaults), and
    `slow` answers after 5 s."""
    upstream.plan("slow", slow(5))
    running = start_mesh(mesh_settings(
        tmp_path, config_path=_models(upstream, tmp_path), store_completions=True,
        services=("completion",), default_unary_timeout_s=0.5, default_stream_timeout_s=0.5))
    yield running
    running.stop()


@pytest.fixture
def tools(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    """Keeps its completions; `tooly` streams an answer and a tool call (`_TOOL_STREAM`)."""
    upstream.plan("tooly", _tool_stream)
    running = start_mesh(mesh_settings(
        tmp_path, config_path=_models(upstream, tmp_path), store_completions=True,
        services=("completion",)))
    yield running
    running.stop()


def _chat(model: str, **more: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "what is it?"}], **more}


def _stored(mesh: RunningMesh, run_id: str) -> StoredRun:
    store = open_run_store(mesh.mesh.settings.store_path)
    try:
        run = store.get(run_id)
    finally:
        store.close()
    assert run is not None, run_id
    return run


async def _kept(mesh: RunningMesh, count: int, seconds: float = 20) -> list[StoredRun]:
    """The mesh's kept runs, once there are `count` of them (each written as its call
    ends, which its caller may see first)."""
    deadline = time.monotonic() + seconds
    while True:
        store = open_run_store(mesh.mesh.settings.store_path)
        try:
            runs = [store.get(m.run_id) for m in store.list(limit=-1)]
        finally:
            store.close()
        if len(runs) >= count and all(r is not None and r.manifest.HasField("end_time")
                                      for r in runs):
            assert len(runs) == count, runs
            return [r for r in runs if r is not None]
        assert time.monotonic() < deadline, f"{len(runs)} runs kept: {runs}"
        await asyncio.sleep(0.05)


async def test_a_call_the_servers_own_deadline_ends_is_kept_failed_deadline_exceeded(
        short_deadlines: RunningMesh) -> None:
    mesh = short_deadlines
    async with ScillmClient(mesh.grpc_target) as client:
        raised = []
        for call in (lambda: client.completion.create(_chat("slow"), timeout=None),
                     lambda: client.completion.embed({"model": "slow", "input": "hi"},
                                                     timeout=None),
                     lambda: client.completion.text({"model": "slow", "prompt": "hi"},
                                                    timeout=None)):
            with pytest.raises(RPCError) as unary:
                await call()
            raised.append(unary.value.code)
        with pytest.raises(RPCError) as streamed:
            [e async for e in client.completion.stream(_chat("slow"), timeout=None)]
        raised.append(streamed.value.code)
        with pytest.raises(RPCError) as text_streamed:
            [e async for e in client.completion.text_stream(
                {"model": "slow", "prompt": "hi"}, timeout=None)]
        raised.append(text_streamed.value.code)
    # The OpenAI door calls Completion in-process: the same deadline, the same record.
    sdk = openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="none", max_retries=0,
                             timeout=30)
    with pytest.raises(openai.APIStatusError) as door:
        await sdk.chat.completions.create(**_chat("slow"))  # type: ignore[call-overload]
    await sdk.close()
    assert raised == [grpc.StatusCode.DEADLINE_EXCEEDED] * 5
    assert door.value.status_code == 408, door.value

    runs = await _kept(mesh, 6)
    kinds = sorted(type(r.request).__name__ for r in runs)
    assert kinds == ["CompletionRequest", "CompletionRequest", "CompletionStreamRequest",
                     "EmbeddingRequest", "TextCompletionRequest", "TextCompletionRequest"]
    for run in runs:
        assert run_state(run.manifest, run.result) == "failed", run
        assert run.result.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], run  # type: ignore[attr-defined]
        assert "deadline" in run.result.message  # type: ignore[attr-defined]
    # The UI says how it ended.
    async with httpx.AsyncClient(timeout=10) as http:
        listed = await http.get(f"{mesh.http_url}/ui/api/runs", params={"model": "slow"})
    assert {r["outcome"]["text"].split(":")[0] for r in listed.json()["runs"]} == {
        "failed · DEADLINE_EXCEEDED"}


def _check_made(made: pb.CompletionResponse, run_id: str) -> None:
    """`made` is what `_TOOL_STREAM` made, as one chat completion."""
    answer, call = made.choices
    assert (answer.index, call.index) == (0, 1)
    assert [p.text for p in answer.message.content] == ["The answer is 42"]
    assert answer.message.role == pb.ROLE_ASSISTANT
    assert answer.finish_reason == pb.FINISH_REASON_STOP
    assert call.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [(t.id, t.function.name, t.function.arguments) for t in call.message.tool_calls] == [
        ("call_1", "get_weather", '{"city": "Paris"}')]
    assert not [p.text for p in call.message.content if p.text]
    assert (made.usage.prompt_tokens, made.usage.completion_tokens) == (7, 9)
    assert made.routing.provider and made.routing.attempts == 1
    assert (made.id, made.model, made.manifest.run_id) == ("up-tool", "tooly", run_id)


async def test_a_finished_chat_stream_is_kept_as_the_completion_it_made(
        tools: RunningMesh, capsys: pytest.CaptureFixture[str]) -> None:
    mesh = tools
    async with ScillmClient(mesh.grpc_target) as client:
        events = [e async for e in client.completion.stream(_chat("tooly", n=2))]
        end = events[-1].end
        run_id = end.manifest.run_id
        run = _stored(mesh, run_id)
        assert run_state(run.manifest, run.result) == "done"
        assert isinstance(run.request, pb.CompletionStreamRequest)
        assert run.request.include_usage and run.request.request.n == 2
        assert isinstance(run.result, pb.CompletionResponse), type(run.result)
        _check_made(run.result, run_id)
        assert run.result.usage == end.usage and run.result.routing == end.routing
        assert run.result.manifest == end.manifest == run.manifest

        # Replayed as the stream it was, and compared as the completion it makes.
        again, differences, volatile = await replay(run, client)
        assert (differences, volatile) == ([], [])
        assert isinstance(again, pb.CompletionResponse)
        _check_made(again, again.manifest.run_id)
        assert again.manifest.run_id != run_id

    # `scillm runs show` and the run's page show the answer and the tool call.
    assert show_run(mesh.mesh.settings.store_path, run_id) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "done"
    first, second = shown["result"]["choices"]
    assert first["message"]["content"] == [{"text": "The answer is 42"}]
    assert second["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": '{"city": "Paris"}'}
    async with httpx.AsyncClient(timeout=10) as http:
        page = await http.get(f"{mesh.http_url}/ui/runs/{run_id}")
    assert page.status_code == 200, page.text[:2000]
    assert "The answer is 42" in page.text
    assert "get_weather" in page.text and "{&#34;city&#34;: &#34;Paris&#34;}" in page.text
    assert "finish: tool_calls" in page.text and "finish: stop" in page.text


async def test_a_chat_stream_over_the_door_is_kept_with_its_answer(tools: RunningMesh) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.post(f"{tools.http_url}/v1/chat/completions", json=_chat(
            "tooly", n=2, stream=True, stream_options={"include_usage": True}))
        assert reply.status_code == 200, reply.text
        events = [json.loads(line[6:]) for line in reply.text.splitlines()
                  if line.startswith("data: {")]
        run_id = next(e["scillm"]["run_id"] for e in events if "scillm" in e)
        page = await http.get(f"{tools.http_url}/ui/runs/{run_id}")
    run = _stored(tools, run_id)
    assert isinstance(run.result, pb.CompletionResponse)
    _check_made(run.result, run_id)
    assert "The answer is 42" in page.text and "get_weather" in page.text


async def test_a_chat_stream_kept_as_its_end_before_still_replays(tools: RunningMesh) -> None:
    """A store written before keeps a finished chat stream as its end event: it replays
    as it did, end against end."""
    async with ScillmClient(tools.grpc_target) as client:
        events = [e async for e in client.completion.stream(_chat("tooly", n=2))]
        end = events[-1].end
        old = StoredRun(end.manifest, pb.CompletionStreamRequest(
            request=pb.CompletionRequest(model="tooly", n=2, messages=[pb.Message(
                role=pb.ROLE_USER, content=[pb.ContentPart(text="what is it?")])]),
            include_usage=True), end)
        again, differences, _ = await replay(old, client)
    assert isinstance(again, pb.CompletionStreamEnd)
    assert differences == [] and again.usage.total_tokens == 16


async def test_a_run_under_its_callers_own_id_replays(tools: RunningMesh) -> None:
    """A replay is a new run: it was sent with the stored run's own id, which is taken
    (ALREADY_EXISTS), so a call kept under its caller's id could not be replayed."""
    request = openai_wire.request_to_proto(_chat("tooly", n=2))
    request.context.run_id = "my-stream-1"
    request.context.session_id = "replays"
    async with ScillmClient(tools.grpc_target) as client:
        events = [e async for e in client.completion.stream(request)]
        assert events[-1].end.manifest.run_id == "my-stream-1"
        again, differences, _ = await replay(_stored(tools, "my-stream-1"), client)
    assert differences == [] and again.manifest.run_id not in ("", "my-stream-1")  # type: ignore[attr-defined]
    assert again.manifest.session_id == ""  # type: ignore[attr-defined]  # not one more of it
