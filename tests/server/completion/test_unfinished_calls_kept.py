"""With `SCILLM_STORE_COMPLETIONS`, a routed call that ends without its reply is kept too.

Only calls that succeeded, and streams that reached their end, were stored: a completion
whose upstream failed (502) and a stream its caller abandoned left no run, so the
manifest promised of every routed completion missed exactly the calls one looks for. Now,
as an Agent run is, a call that failed is kept with the error its caller was sent (the
run reads `failed`), and one whose caller left as `interrupted`, with what it had
streamed. Through a real mesh: the gRPC client, the OpenAI door (the openai SDK, and an
HTTP client that hangs up), the run store, the runs UI's JSON and pages, and replay,
against a loopback upstream speaking OpenAI's wire format.
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
from completion_upstream import Upstream, endless_stream, slow, status
from meshutil import RunningMesh, mesh_settings, start_mesh
from text_stream_upstream import text_stream_endless

from scillm.bridges.cli.runs import show_run
from scillm.clients import RPCError, ScillmClient
from scillm.completion.v1 import completion_pb2 as pb
from scillm.server.manifests import StoredRun, open_run_store, replay, run_state


@pytest.fixture
def kept(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    """A Completion mesh keeping its runs, with models at the loopback upstream: `broken`
    (502, not retried), `endless` (chat, streams until its caller leaves) and
    `endless-text` (the same for text completions) and `slow` (answers after 5 s)."""
    upstream.plan("broken", status(502))
    upstream.plan("endless", endless_stream)
    upstream.plan("endless-text", text_stream_endless)
    upstream.plan("slow", slow(5))
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": f"{upstream.url}/v1", "api_key": "x"}}
            for name in ("broken", "endless", "endless-text", "slow")],
        "router_settings": {"num_retries": 0}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, store_completions=True,
                                       services=("completion",)))
    yield running
    running.stop()


def _chat(model: str, text: str = "hi") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def _runs(mesh: RunningMesh, model: str, count: int,
                seconds: float = 20) -> list[dict[str, Any]]:
    """The runs UI's JSON rows of `model`'s runs, once there are `count` of them."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            reply = await http.get(f"{mesh.http_url}/ui/api/runs",
                                   params={"model": model, "service": "completion"})
            assert reply.status_code == 200, reply.text
            runs: list[dict[str, Any]] = reply.json()["runs"]
            if len(runs) >= count:
                assert len(runs) == count, runs
                return runs
            assert time.monotonic() < deadline, f"{len(runs)} runs of {model} kept: {runs}"
            await asyncio.sleep(0.05)


def _stored(mesh: RunningMesh, run_id: str) -> StoredRun:
    store = open_run_store(mesh.mesh.settings.store_path)
    try:
        run = store.get(run_id)
    finally:
        store.close()
    assert run is not None, run_id
    return run


async def test_a_call_whose_upstream_failed_is_kept_with_its_error(
        kept: RunningMesh, capsys: pytest.CaptureFixture[str]) -> None:
    async with ScillmClient(kept.grpc_target) as client:
        with pytest.raises(RPCError) as chat:
            await client.completion.create(_chat("broken"))
        with pytest.raises(RPCError) as embedding:
            await client.completion.embed({"model": "broken", "input": "hi"})
        with pytest.raises(RPCError) as text:
            await client.completion.text({"model": "broken", "prompt": "hi"})
        sdk = openai.AsyncOpenAI(base_url=f"{kept.http_url}/v1", api_key="none",
                                 max_retries=0)
        with pytest.raises(openai.APIStatusError) as door:
            await sdk.chat.completions.create(**_chat("broken"))  # type: ignore[call-overload]
        await sdk.close()
        assert door.value.status_code == 502
        sent = {chat.value.code, embedding.value.code, text.value.code}
        assert sent == {grpc.StatusCode.UNAVAILABLE}

        runs = await _runs(kept, "broken", 4)
        assert {r["outcome"]["tone"] for r in runs} == {"bad"}
        assert all(r["outcome"]["text"].startswith("failed · UNAVAILABLE: ") for r in runs), runs
        kinds = set()
        for row in runs:
            run = _stored(kept, row["manifest"]["run_id"])
            assert run_state(run.manifest, run.result) == "failed"
            assert run.manifest.HasField("end_time") and run.manifest.model == "broken"
            assert run.result.code == grpc.StatusCode.UNAVAILABLE.value[0]  # type: ignore[attr-defined]
            assert "502" in run.result.message  # type: ignore[attr-defined]
            kinds.add(type(run.request).__name__)
            with pytest.raises(ValueError, match="failed"):
                await replay(run, client)
        assert kinds == {"CompletionRequest", "EmbeddingRequest", "TextCompletionRequest"}
    # The UI shows the run's error and offers no replay.
    async with httpx.AsyncClient(timeout=10) as http:
        page = await http.get(f"{kept.http_url}/ui/runs/{runs[0]['manifest']['run_id']}")
    assert page.status_code == 200
    assert "failed · UNAVAILABLE" in page.text and "This call failed" in page.text
    assert 'id="replay"' not in page.text
    # `scillm runs show` says so too.
    assert show_run(kept.mesh.settings.store_path, runs[0]["manifest"]["run_id"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "failed" and shown["result"]["code"] == 14, shown


async def test_a_stream_its_caller_abandons_is_kept_as_interrupted_with_what_it_streamed(
        kept: RunningMesh) -> None:
    # Over HTTP: the caller reads a few chunks and hangs up.
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("POST", f"{kept.http_url}/v1/chat/completions",
                               json={**_chat("endless"), "stream": True}) as reply:
            assert reply.status_code == 200
            seen = 0
            async for line in reply.aiter_lines():
                seen += line.startswith("data: ")
                if seen == 5:
                    break
    # Over gRPC: chat and text streams, left after a few chunks.
    async with ScillmClient(kept.grpc_target) as client:
        chat = client.completion.stream(_chat("endless"))
        for _ in range(5):
            assert (await anext(chat)).HasField("chunk")
        await chat.aclose()
        text = client.completion.text_stream({"model": "endless-text", "prompt": "the cat"})
        for _ in range(5):
            assert (await anext(text)).HasField("chunk")
        await text.aclose()

        for model, count in (("endless", 2), ("endless-text", 1)):
            for row in await _runs(kept, model, count):
                assert row["outcome"] == {"text": "interrupted", "tone": "bad"}, row
                run = _stored(kept, row["manifest"]["run_id"])
                assert run_state(run.manifest, run.result) == "interrupted"
                # What it had streamed: one completion, its choice's text so far.
                (made,) = run.events
                (choice,) = made["choices"]
                said = (choice["message"]["content"][0]["text"] if model == "endless"
                        else choice["text"])
                assert said, made
                with pytest.raises(ValueError, match="interrupted"):
                    await replay(run, client)


async def test_a_stream_whose_upstream_fails_is_kept_with_its_error(
        kept: RunningMesh) -> None:
    async with ScillmClient(kept.grpc_target) as client:
        with pytest.raises(RPCError) as raised:
            [e async for e in client.completion.stream(_chat("broken"))]
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    (row,) = await _runs(kept, "broken", 1)
    assert row["outcome"]["text"].startswith("failed · UNAVAILABLE"), row
    run = _stored(kept, row["manifest"]["run_id"])
    assert isinstance(run.request, pb.CompletionStreamRequest)
    assert run_state(run.manifest, run.result) == "failed"
    assert run.events == ()  # nothing had streamed


async def test_a_whole_answer_its_caller_gave_up_on_is_kept_as_interrupted(
        kept: RunningMesh) -> None:
    async with ScillmClient(kept.grpc_target) as client:
        with pytest.raises(RPCError) as raised:
            await client.completion.create(_chat("slow"), timeout=0.5)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    (row,) = await _runs(kept, "slow", 1)
    assert row["outcome"] == {"text": "interrupted", "tone": "bad"}, row
    run = _stored(kept, row["manifest"]["run_id"])
    assert run.manifest.HasField("end_time") and run.events == ()
