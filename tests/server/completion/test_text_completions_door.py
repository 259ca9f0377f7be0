"""`POST /v1/completions` (OpenAI's legacy text completions) end to end: the real openai
SDK's `client.completions.create` against the OpenAI door of a real mesh, the mesh's gRPC
client, and a loopback upstream speaking OpenAI's /completions wire format (a 429 with
Retry-After, a 500 and a fallback, a reply of the wrong shape), careless and hostile
bodies, and a virtual key paying. Streamed ones: test_text_streams_door.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from completion_upstream import Upstream, embeddings_reply, status, text_completions
from keyed import key_spend, keyed_mesh, new_key
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient, SyncScillmClient
from scillm.completion.v1 import completion_pb2 as pb
from scillm.server.interceptors import _RESERVING
from scillm.server.manifests import open_run_store, replay
from scillm.server.request_facts import estimate_of


def _sdk(url: str, key: str = "none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


async def test_the_default_mesh_serves_echo_text_completions_to_the_openai_sdk(
        mesh: RunningMesh) -> None:
    """The embedded defaults (no config, no keys) continue text with `echo/...`."""
    sdk = _sdk(mesh.http_url)
    reply = await sdk.completions.create(model="echo/base", prompt="the cat sat on",
                                         max_tokens=3, n=2)
    many = await sdk.completions.create(model="echo/base", prompt=["a b", "c"], stop=" b",
                                        echo=True)
    await sdk.close()
    assert reply.object == "text_completion" and reply.model == "echo/base"
    assert reply.id and reply.created > 0
    assert [(c.index, c.text, c.finish_reason) for c in reply.choices] == [
        (0, " the cat sat", "length"), (1, " the cat sat", "length")]
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 6)
    assert [(c.text, c.finish_reason) for c in many.choices] == [
        ("a b a", "stop"), ("c c", "stop")]


@pytest.mark.parametrize("path", ["/v1/completions", "/completions"])
def test_the_wire_shape_request_id_and_run(mesh: RunningMesh, path: str) -> None:
    reply = httpx.post(f"{mesh.http_url}{path}", timeout=30,
                       headers={"x-request-id": "text-req-1"},
                       json={"model": "echo/t", "prompt": [1, 2, 3], "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-request-id"] == "text-req-1"
    body = reply.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage", "scillm"}
    assert body["object"] == "text_completion" and body["model"] == "echo/t"
    assert body["choices"] == [{"index": 0, "text": " 1 2", "logprobs": None,
                                "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert body["scillm"]["routing"]["provider"] == "echo" and body["scillm"]["run_id"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "echo/e", "prompt": []}, "prompt"),
    ({"model": "echo/e", "prompt": ["a", 3]}, "prompt[1]"),
    ({"model": "echo/e", "prompt": ["a", [1]]}, "prompt[1]"),
    ({"model": "echo/e", "prompt": [1.5]}, "prompt[0]"),
    ({"model": "echo/e", "prompt": [None]}, "prompt[0]"),
    ({"model": "echo/e", "prompt": [True]}, "prompt[0]"),
    ({"model": "echo/e", "prompt": [[1, -1]]}, "prompt[0][1]"),
    ({"model": "echo/e", "prompt": [[2**64]]}, "prompt[0][0]"),
    ({"model": "echo/e", "prompt": [{"text": "a"}]}, "prompt[0]"),
    ({"model": "echo/e", "prompt": 5}, "prompt"),
    ({"model": "echo/e", "prompt": "\ud800"}, None),  # JSON no UTF-8 can hold
    ({"model": "echo/e"}, "prompt"),
    ({"prompt": "a"}, "model"),
    ({"model": "echo/e", "prompt": "a", "n": 2, "best_of": 1}, "best_of"),
    ({"model": "echo/e", "prompt": "a", "n": 0}, "n"),
    ({"model": "echo/e", "prompt": "a", "n": "2"}, "n"),
    ({"model": "echo/e", "prompt": "a", "max_tokens": -1}, "max_tokens"),
    ({"model": "echo/e", "prompt": "a", "max_tokens": 2**40}, "max_tokens"),
    ({"model": "echo/e", "prompt": "a", "logprobs": 6}, "logprobs"),
    ({"model": "echo/e", "prompt": "a", "logprobs": -1}, "logprobs"),
    ({"model": "echo/e", "prompt": "a", "temperature": 3}, "temperature"),
    ({"model": "echo/e", "prompt": "a", "top_p": "high"}, "top_p"),
    ({"model": "echo/e", "prompt": "a", "stop": [1]}, "stop"),
    ({"model": "echo/e", "prompt": "a", "echo": 1}, "echo"),
    ({"model": "echo/e", "prompt": "a", "stream": "yes"}, "stream"),
    ({"model": "echo/e", "prompt": "a", "scillm": {"cache": {"bypass": True}}}, "scillm"),
])
def test_careless_and_hostile_bodies_are_openai_400s(mesh: RunningMesh, body: dict[str, Any],
                                                     param: str | None) -> None:
    reply = httpx.post(f"{mesh.http_url}/v1/completions", timeout=30,
                       content=json.dumps(body).encode(),
                       headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert "Traceback" not in reply.text and reply.headers["x-request-id"]


async def test_the_sdk_hears_logprobs_past_5_refused_in_its_own_terms(
        mesh: RunningMesh) -> None:
    """(`logprobs` 0 to 5 is served: test_text_logprobs_door.py.)"""
    sdk = _sdk(mesh.http_url)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        await sdk.completions.create(model="echo/e", prompt="a", logprobs=6)
    await sdk.close()


def test_an_unknown_model_and_a_body_that_is_no_object(mesh: RunningMesh) -> None:
    unknown = httpx.post(f"{mesh.http_url}/v1/completions", timeout=30,
                         json={"model": "no-such-model", "prompt": "a"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    for raw in (b"[1, 2]", b"{not json"):
        reply = httpx.post(f"{mesh.http_url}/v1/completions", content=raw, timeout=30)
        assert reply.status_code == 400 and reply.json()["error"]["type"] == \
            "invalid_request_error"


async def test_the_grpc_client_completes_text_and_refuses_what_the_contract_does(
        mesh: RunningMesh) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        reply = await client.completion.text({"model": "echo/g", "prompt": "x y z",
                                              "max_tokens": 2})
        assert [c.text for c in reply.choices] == [" x y"]
        assert reply.choices[0].finish_reason == pb.FINISH_REASON_LENGTH
        assert reply.usage.prompt_tokens == 3 and reply.manifest.run_id
        assert reply.routing.provider == "echo" and reply.routing.attempts == 1
        for bad in (pb.TextCompletionRequest(model="echo/g"),
                    pb.TextCompletionRequest(model="echo/g", prompt=[
                        pb.EmbeddingInput(text="a"), pb.EmbeddingInput(
                            tokens=pb.TokenIds(ids=[1]))]),
                    pb.TextCompletionRequest(prompt=[pb.EmbeddingInput(text="a")])):
            with pytest.raises(RPCError) as caught:
                await client.completion.text(bad)
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        # Routing options (which the key check reads in `routing`) and a stream (its own
        # call, TextCompletionStream) are no extra_body's, as for chat: refused, naming the
        # field.
        for key, value in (("scillm", {"fallbacks": ["elsewhere"]}), ("stream", True)):
            extra = pb.TextCompletionRequest(model="echo/g", prompt=[pb.EmbeddingInput(text="a")])
            extra.extra_body.update({key: value})
            with pytest.raises(RPCError) as caught:
                await client.completion.text(extra)
            assert (caught.value.code, caught.value.param) == (
                grpc.StatusCode.INVALID_ARGUMENT, f"extra_body.{key}"), caught.value
    with SyncScillmClient(mesh.grpc_target) as sync:
        assert sync.text({"model": "echo/g", "prompt": "c"}).choices[0].text == " c"


@pytest.fixture
def door(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    """A mesh whose models are at the loopback upstream: `flaky` (429 with Retry-After,
    then well), `down` (500, falling back to `backup`), `garbage` (a reply that is no
    text completion), and `claude` (Anthropic: none); a 16 KiB body limit."""
    upstream.plan("flaky", status(429, {"retry-after": "1"}), text_completions)
    upstream.plan("down", status(500))
    upstream.plan("backup", text_completions)
    upstream.plan("garbage", embeddings_reply({"object": "text_completion", "choices": "no"}))
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": f"{upstream.url}/v1", "api_key": "x"}}
            for name in ("flaky", "down", "backup", "garbage")] + [
            {"model_name": "claude", "litellm_params": {
                "model": "anthropic/claude-x", "api_base": upstream.url, "api_key": "x"}}],
        "router_settings": {"num_retries": 1, "fallbacks": [{"down": ["backup"]}]}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, store_completions=True,
                                       max_request_bytes=16 * 1024))
    yield running
    running.stop()


async def test_retry_after_fallback_and_a_bad_upstream_through_the_door(
        door: RunningMesh, upstream: Upstream) -> None:
    sdk = _sdk(door.http_url)
    raw = await sdk.completions.with_raw_response.create(model="flaky", prompt=["ab", "cd"])
    flaky = raw.parse()
    routing = json.loads(raw.http_response.text)["scillm"]["routing"]
    assert [c.text for c in flaky.choices] == ["ba", "dc"]
    assert upstream.calls("flaky") == 2
    assert upstream.requests[-1][0] == "/v1/completions"
    assert upstream.requests[-1][2]["max_tokens"] == 16  # OpenAI's default, asked for
    assert routing["attempts"] == 2 and routing["last_retry_after_ms"] == 1000.0
    assert routing["total_sleep_ms"] >= 1000.0  # the Retry-After was honoured

    fell = await sdk.completions.with_raw_response.create(model="down", prompt="xy")
    assert fell.parse().choices[0].text == "yx"
    routing = json.loads(fell.http_response.text)["scillm"]["routing"]
    assert (routing["fallback_used"], routing["fallback_model"]) == (True, "backup")

    with pytest.raises(openai.APIStatusError) as bad:
        await sdk.completions.create(model="garbage", prompt="x")
    assert bad.value.status_code == 502
    assert bad.value.body["type"] == "upstream_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="serves no text completions"):
        await sdk.completions.create(model="claude", prompt="x")
    # And the mesh serves on, keeping the run as it keeps a completion's.
    again = await sdk.completions.with_raw_response.create(
        model="backup", prompt="still", extra_headers={"x-request-id": "text-req-2"})
    assert again.parse().choices[0].text == "llits"
    assert again.headers["x-request-id"] == "text-req-2"
    run_id = json.loads(again.http_response.text)["scillm"]["run_id"]
    stored = open_run_store(door.mesh.settings.store_path).get(run_id)
    assert stored is not None and stored.manifest.request_id == "text-req-2"
    assert (stored.manifest.model, stored.manifest.provider) == ("backup", "openai")
    assert isinstance(stored.request, pb.TextCompletionRequest)
    assert isinstance(stored.result, pb.TextCompletionResponse) and stored.result.choices
    await sdk.close()
    # A stored text completion replays as one (not as a chat stream), identically.
    async with ScillmClient(door.grpc_target) as client:
        result, changed, _ = await replay(stored, client)
    assert isinstance(result, pb.TextCompletionResponse) and not changed


def test_the_doors_size_limit_applies(door: RunningMesh) -> None:
    reply = httpx.post(f"{door.http_url}/v1/completions", timeout=30,
                       json={"model": "backup", "prompt": ["x" * 1000] * 20})
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"


MASTER = "sk-master-text"


async def test_a_key_pays_for_its_text_completions(tmp_path: Path, upstream: Upstream) -> None:
    """Charged the upstream's usage at the model's prices; a key limited to other models
    may not call this one; a key past its budget is refused."""
    upstream.plan("base", text_completions)
    with keyed_mesh(tmp_path, MASTER, upstream.url, "base", prices=(0.5, 1.0)) as mesh:
        key = new_key(mesh, MASTER, max_budget=100.0)
        sdk = _sdk(mesh.http_url, key)
        reply = await sdk.completions.create(model="base", prompt=["a", "b"], max_tokens=4)
        assert reply.usage is not None and reply.usage.completion_tokens == 6
        # 4 prompt tokens at 0.5, 6 completion tokens at 1.0
        assert await key_spend(mesh, MASTER, key, at_least=8.0) == 8.0
        await sdk.close()
        other = _sdk(mesh.http_url, new_key(mesh, MASTER, models=["elsewhere"]))
        with pytest.raises(openai.PermissionDeniedError):
            await other.completions.create(model="base", prompt="a")
        await other.close()
        poor = new_key(mesh, MASTER, max_budget=3.0)
        spender = _sdk(mesh.http_url, poor)
        await spender.completions.create(model="base", prompt="a")  # 1 + 3 = 4.0 spent
        assert await key_spend(mesh, MASTER, poor, at_least=4.0) == 4.0
        with pytest.raises(openai.PermissionDeniedError, match="budget"):
            await spender.completions.create(model="base", prompt="a")
        await spender.close()
        assert upstream.calls("base") == 2  # the refused calls reached no upstream


def test_a_text_completion_reserves_its_prompt_and_answers() -> None:
    """Reserved while in flight, as a chat completion: its prompts' bytes / 4, and
    max_tokens (OpenAI's 16 unset) for each of its n answers."""
    assert "/scillm.completion.v1.CompletionService/TextCompletion" in _RESERVING
    request = pb.TextCompletionRequest(model="m", prompt=[pb.EmbeddingInput(text="x" * 38)],
                                       max_tokens=10, n=3)
    assert estimate_of(request) == (10, 30)
    assert estimate_of(pb.TextCompletionRequest(
        model="m", prompt=[pb.EmbeddingInput(text="abc")])) == (2, 16)
