"""`logprobs` on `POST /v1/completions` end to end: the real openai SDK against the OpenAI
door of a real mesh, and a loopback upstream speaking OpenAI's /completions wire format
with the legacy `logprobs` object (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`; with `echo` a null first logprob). Unary and streamed, several choices, the
gRPC client, the run kept from a stream, a provider that gives none (`echo/...`: null, as
its chat completions), and an upstream's logprobs of the wrong shape (502)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from completion_upstream import Action, Upstream, send_json, sse_event, sse_head
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import ScillmClient
from scillm.completion.v1 import completion_pb2 as pb
from scillm.server.manifests import open_run_store, replay

#: The prompt the `logprobs` upstream is asked, and its tokens.
PROMPT, PROMPT_TOKENS = "The cat", ["The", " cat"]
#: The tokens it continues the prompt with.
COMPLETION_TOKENS = [" sat", " down"]


def legacy_logprobs(choice: int, top: int, echo: bool) -> dict[str, Any]:
    """OpenAI's legacy `logprobs` of choice `choice`, as api.openai.com writes it: with
    `echo` the prompt's tokens first, the first of them with null logprobs (nothing came
    before it); offsets from the start of the prompt; `top` alternatives besides the token
    itself (binary fractions: they cross every wire exactly)."""
    tokens = (PROMPT_TOKENS if echo else []) + COMPLETION_TOKENS
    values: list[float | None] = [-0.25 * (choice + 1) * (i + 1) for i in range(len(tokens))]
    tops: list[dict[str, float] | None] = [
        {token: value, **{f" alt{a}": value - 1 - a for a in range(top)}}
        for token, value in zip(tokens, values, strict=True)]
    offsets, at = [], 0 if echo else len(PROMPT)
    for token in tokens:
        offsets.append(at)
        at += len(token)
    if echo:
        values[0], tops[0] = None, None
    return {"text_offset": offsets, "token_logprobs": values, "tokens": tokens,
            "top_logprobs": tops}


def _choices(req: dict[str, Any]) -> list[dict[str, Any]]:
    """One choice per `n`, each with its own logprobs (none unless asked for)."""
    out = []
    for i in range(req.get("n") or 1):
        logprobs = legacy_logprobs(i, req["logprobs"], bool(req.get("echo"))) \
            if req.get("logprobs") is not None else None
        text = "".join(logprobs["tokens"]) if logprobs else "".join(COMPLETION_TOKENS)
        out.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": "length"})
    return out


def _stream_chunks(req: dict[str, Any]) -> list[dict[str, Any]]:
    """`_choices` as OpenAI streams them: a chunk per token and choice, each with the
    logprobs of its token; then each choice's finish, with empty logprobs; the usage."""
    base = {"id": "cmpl-lp", "object": "text_completion", "created": 7, "model": req["model"]}
    out = []
    for choice in _choices(req):
        lp = choice["logprobs"]
        for i, token in enumerate(lp["tokens"]):
            out.append({**base, "choices": [{
                "index": choice["index"], "text": token, "finish_reason": None,
                "logprobs": {key: [lp[key][i]] for key in lp}}]})
        out.append({**base, "choices": [{
            "index": choice["index"], "text": "", "finish_reason": "length",
            "logprobs": {"text_offset": [], "token_logprobs": [], "tokens": [],
                         "top_logprobs": []}}]})
    out.append({**base, "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 4,
                                                 "total_tokens": 6}})
    return out


async def with_logprobs(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                        w: asyncio.StreamWriter) -> bool:
    """An OpenAI completions endpoint answering `logprobs` (streamed or not)."""
    if not req.get("stream"):
        send_json(w, 200, {"id": "cmpl-lp", "object": "text_completion", "created": 7,
                           "model": req["model"], "choices": _choices(req)[::-1],
                           "usage": {"prompt_tokens": 2, "completion_tokens": 4,
                                     "total_tokens": 6}})
        return True
    sse_head(w)
    for chunk in _stream_chunks(req):
        sse_event(w, json.dumps(chunk))
    sse_event(w, "[DONE]")
    w.write(b"0\r\n\r\n")
    return True


#: Logprobs of the wrong shape an upstream might send, by name.
MISSHAPEN: dict[str, Any] = {
    "not-an-object": 5,
    "tokens-a-text": {"tokens": "a", "token_logprobs": [-1.0], "top_logprobs": None,
                      "text_offset": [0]},
    "logprob-high": {"tokens": ["a"], "token_logprobs": ["high"], "top_logprobs": None,
                     "text_offset": [0]},
    "logprob-true": {"tokens": ["a"], "token_logprobs": [True], "top_logprobs": None,
                     "text_offset": [0]},
    "one-short": {"tokens": ["a", "b"], "token_logprobs": [-1.0], "top_logprobs": None,
                  "text_offset": [0, 1]},
    "top-a-list": {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [["a", -1]],
                   "text_offset": [0]},
    "offset-negative": {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": None,
                        "text_offset": [-1]},
}


def misshapen(logprobs: Any) -> Action:
    """A completions endpoint whose one choice carries `logprobs` (streamed or not)."""
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        choice = {"index": 0, "text": "a", "logprobs": logprobs, "finish_reason": "stop"}
        body = {"id": "cmpl-bad", "object": "text_completion", "created": 7,
                "model": req["model"], "choices": [choice]}
        if not req.get("stream"):
            send_json(w, 200, body)
            return True
        sse_head(w)
        for data in (json.dumps(body), "[DONE]"):
            sse_event(w, data)
        w.write(b"0\r\n\r\n")
        return True
    return act


@pytest.fixture
def door(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    """A Completion mesh keeping its runs, with `echo/...`, `lp` (the upstream answering
    logprobs) and `bad-<name>` (logprobs of the shape `MISSHAPEN[name]`)."""
    upstream.plan("lp", with_logprobs)
    for name, logprobs in MISSHAPEN.items():
        upstream.plan(f"bad-{name}", misshapen(logprobs))
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": f"{upstream.url}/v1", "api_key": "x"}}
            for name in ("lp", *(f"bad-{name}" for name in MISSHAPEN))] + [
            {"model_name": "echo/*", "litellm_params": {"model": "echo/*"}}],
        "router_settings": {"num_retries": 0}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, store_completions=True,
                                       services=("completion",)))
    yield running
    running.stop()


def _sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


async def test_the_sdk_gets_each_choices_logprobs_in_openais_legacy_shape(
        door: RunningMesh, upstream: Upstream) -> None:
    """`logprobs` was a 400 (not served): it goes upstream, and every choice's logprobs
    come back as the upstream wrote them, the null first logprob of `echo` included."""
    sdk = _sdk(door.http_url)
    reply = await sdk.completions.create(model="lp", prompt=PROMPT, logprobs=2, n=2,
                                         echo=True)
    plain = await sdk.completions.create(model="lp", prompt=PROMPT, logprobs=0)
    await sdk.close()
    sent = [body for _, _, body in upstream.requests]
    assert [(s["logprobs"], s.get("echo")) for s in sent] == [(2, True), (0, None)]
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.logprobs is not None
        assert choice.logprobs.model_dump() == legacy_logprobs(choice.index, 2, True)
        assert choice.text == "The cat sat down"
    first = reply.choices[0].logprobs
    assert first is not None and first.token_logprobs is not None
    assert first.token_logprobs[:2] == [None, -0.5] and first.tokens == [
        "The", " cat", " sat", " down"]
    assert first.top_logprobs is not None and first.top_logprobs[1] == {
        " cat": -0.5, " alt0": -1.5, " alt1": -2.5}
    assert plain.choices[0].logprobs is not None
    assert plain.choices[0].logprobs.model_dump() == legacy_logprobs(0, 0, False)
    assert plain.choices[0].logprobs.text_offset == [7, 11]
    # The JSON on the wire holds OpenAI's four keys exactly, and nothing else.
    async with httpx.AsyncClient(timeout=30) as client:
        raw = (await client.post(f"{door.http_url}/v1/completions", json={
            "model": "lp", "prompt": PROMPT, "logprobs": 1, "echo": True})).json()
    assert raw["choices"][0]["logprobs"] == legacy_logprobs(0, 1, True)


async def test_a_stream_carries_each_chunks_logprobs_as_the_upstream_sent_them(
        door: RunningMesh, upstream: Upstream) -> None:
    sdk = _sdk(door.http_url)
    chunks = [c async for c in await sdk.completions.create(
        model="lp", prompt=PROMPT, logprobs=1, n=2, stream=True,
        stream_options={"include_usage": True})]
    await sdk.close()
    assert upstream.requests[-1][2]["logprobs"] == 1
    *texts, last = chunks
    assert last.choices == [] and last.usage is not None
    joined: dict[int, dict[str, list[Any]]] = {}
    for chunk in texts:
        for c in chunk.choices:
            assert c.logprobs is not None  # the finishing chunk's empty ones too
            into = joined.setdefault(c.index, {})
            for key, values in c.logprobs.model_dump().items():
                into.setdefault(key, []).extend(values)
    assert joined == {i: legacy_logprobs(i, 1, False) for i in (0, 1)}
    # Each event on the wire is the upstream's chunk, its logprobs as they came.
    async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "POST", f"{door.http_url}/v1/completions", json={
                "model": "lp", "prompt": PROMPT, "logprobs": 1, "echo": True,
                "stream": True}) as reply:
        data = [line[6:] for line in [x async for x in reply.aiter_lines()] if line]
    assert data[-1] == "[DONE]"
    sent = [json.loads(d)["choices"] for d in data[:-1]]
    upstream_chunks = _stream_chunks({"model": "lp", "logprobs": 1, "echo": True})
    assert [[c["logprobs"] for c in choices] for choices in sent] == [
        [c["logprobs"] for c in chunk["choices"]] for chunk in upstream_chunks[:-1]]
    assert sent[0][0]["logprobs"]["token_logprobs"] == [None]


async def test_the_run_a_stream_made_keeps_its_logprobs_and_replays_as_it_was(
        door: RunningMesh) -> None:
    sdk = _sdk(door.http_url)
    chunks = [c async for c in await sdk.completions.create(
        model="lp", prompt=PROMPT, logprobs=1, n=2, stream=True,
        stream_options={"include_usage": True})]
    await sdk.close()
    last = chunks[-1]
    run_id = last.model_extra["scillm"]["run_id"] if last.model_extra else ""
    stored = open_run_store(door.mesh.settings.store_path).get(run_id)
    assert stored is not None and isinstance(stored.result, pb.TextCompletionResponse)
    kept = {c.index: [t.token for t in c.logprobs.tokens] for c in stored.result.choices}
    assert kept == {0: COMPLETION_TOKENS, 1: COMPLETION_TOKENS}
    async with ScillmClient(door.grpc_target) as grpc_client:
        _, changed, _ = await replay(stored, grpc_client)
    assert changed == []


async def test_the_grpc_client_reads_a_null_logprob_as_an_unset_one(
        door: RunningMesh) -> None:
    async with ScillmClient(door.grpc_target) as client:
        reply = await client.completion.text({"model": "lp", "prompt": PROMPT,
                                              "logprobs": 1, "echo": True})
    tokens = reply.choices[0].logprobs.tokens
    assert [t.token for t in tokens] == PROMPT_TOKENS + COMPLETION_TOKENS
    assert [t.HasField("logprob") for t in tokens] == [False, True, True, True]
    assert [t.HasField("top_logprobs") for t in tokens] == [False, True, True, True]
    assert [t.text_offset for t in tokens] == [0, 3, 7, 11]
    assert [(a.token, a.logprob) for a in tokens[1].top_logprobs.alternatives] == [
        (" cat", -0.5), (" alt0", -1.5)]


async def test_a_provider_that_gives_none_answers_null_as_chat_does(
        door: RunningMesh) -> None:
    """`echo/...` gives no logprobs: null, unary and streamed, as its chat completions
    answer `logprobs: true` (the local model is the same: llama.cpp gives them only to a
    model loaded with every position's logits)."""
    sdk = _sdk(door.http_url)
    reply = await sdk.completions.create(model="echo/x", prompt="a b", logprobs=3)
    streamed = [c async for c in await sdk.completions.create(
        model="echo/x", prompt="a b", logprobs=3, stream=True)]
    chat = await sdk.chat.completions.create(model="echo/x", logprobs=True, top_logprobs=3,
                                             messages=[{"role": "user", "content": "a b"}])
    await sdk.close()
    assert reply.choices[0].text == " a b" and reply.choices[0].logprobs is None
    assert all(c.logprobs is None for chunk in streamed for c in chunk.choices)
    assert chat.choices[0].logprobs is None


@pytest.mark.parametrize("name", list(MISSHAPEN))
async def test_an_upstreams_logprobs_of_another_shape_are_a_bad_gateway(
        door: RunningMesh, name: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for stream in (False, True):
            reply = await client.post(f"{door.http_url}/v1/completions", json={
                "model": f"bad-{name}", "prompt": "a", "logprobs": 1, "stream": stream})
            assert reply.status_code == 502, reply.text
            error = reply.json()["error"]
            assert error["type"] == "upstream_error" and "logprobs" in error["message"]


async def test_a_token_with_half_a_character_has_the_replacement_character(
        door: RunningMesh, upstream: Upstream) -> None:
    """A token holding one half of a UTF-16 surrogate pair (which no protobuf string
    holds) was an INTERNAL error: it is U+FFFD, as in a text."""
    upstream.plan("bad-logprob-high", misshapen({
        "tokens": ["\ud83d", "ok"], "token_logprobs": [-1.0, -2.0],
        "top_logprobs": [{"\ude00": -1.0}, {"ok": -2.0}], "text_offset": [0, 1]}))
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(f"{door.http_url}/v1/completions", json={
            "model": "bad-logprob-high", "prompt": "a", "logprobs": 1})
    assert reply.status_code == 200, reply.text
    logprobs = reply.json()["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["\ufffd", "ok"]
    assert logprobs["top_logprobs"] == [{"\ufffd": -1.0}, {"ok": -2.0}]
