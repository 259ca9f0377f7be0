"""A key's budget and tokens per minute hold for the calls it has in flight together.

A key's `max_budget` and `tpm_limit` were checked when a call came in and charged when it
ended, so the calls a key had in flight at once were all checked against what it had spent
before any of them ended: a review's 200 concurrent calls spent 100 times a key's budget.
Each call of such a key now reserves an estimate of its cost and tokens while it runs (a
token per four bytes of its request, plus its `max_tokens`), and is admitted only while
the key's spend (or tokens of the minute), what its calls in flight reserved and its own
reservation fit in the limit; a call with no other in flight is admitted as before. The
reservation is released however the call ends (answer, stream end, a caller that left).

Against a real mesh (keys on, priced models) and a loopback upstream that holds every call
until each of a burst's calls has either reached it or been refused, so that they are all
in flight together whatever the machine's load: the tests count answers, refusals, spend
and what is still reserved, never time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from completion_upstream import Upstream, openai_chunks, send_json, sse_event, sse_head
from keyed import keyed_mesh, new_key
from meshutil import RunningMesh

from scillm.server.keys import hash_key

MASTER = "sk-master-reservations"
#: Prompts are free and each completion token costs 1/8 (exact in binary): an answer of
#: 4 tokens costs 0.5, a reservation of `max_tokens` 8 is 1.0.
PRICE_IN, PRICE_OUT = 0.0, 0.125
#: The usage every answer reports.
PROMPT_TOKENS, COMPLETION_TOKENS = 10, 4
BURST = 10


class Gate:
    """What the held upstream shares with a test: the calls that reached it, and the event
    that lets them all answer."""

    def __init__(self) -> None:
        self.arrived = 0
        self.open = asyncio.Event()
        self.hung_up = 0  # calls whose mesh side hung up before the answer


async def _held(gate: Gate, req: dict[str, Any], r: asyncio.StreamReader,
                w: asyncio.StreamWriter) -> bool:
    """Hold the call until the gate opens (or the mesh hangs up), then answer it with the
    fixed usage, whole or streamed."""
    gate.arrived += 1
    opened = asyncio.ensure_future(gate.open.wait())
    gone = asyncio.ensure_future(r.read(1))
    await asyncio.wait((opened, gone), return_when=asyncio.FIRST_COMPLETED)
    opened.cancel()
    gone.cancel()
    # Finished before the connection is read again (a pending read there is an error).
    await asyncio.gather(opened, gone, return_exceptions=True)
    if not gate.open.is_set():
        gate.hung_up += 1
        return False
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
             "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}
    if "input" in req:  # an embeddings call
        send_json(w, 200, {"object": "list", "model": req["model"], "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS}})
    elif "prompt" in req:  # a text completion, whole or streamed
        chunk = {"id": "up-1", "object": "text_completion", "created": 1, "model": req["model"],
                 "choices": [{"index": 0, "text": "four words of answer", "logprobs": None,
                              "finish_reason": "stop"}]}
        if not req.get("stream"):
            send_json(w, 200, {**chunk, "usage": usage})
            return True
        sse_head(w)
        for data in [json.dumps(chunk), json.dumps({**chunk, "choices": [], "usage": usage}),
                     "[DONE]"]:
            sse_event(w, data)
        w.write(b"0\r\n\r\n")
    elif req.get("stream"):
        sse_head(w)
        chunks = [json.loads(c) for c in openai_chunks(req, "four words of answer")]
        chunks[-1]["usage"] = usage
        for data in [*map(json.dumps, chunks), "[DONE]"]:
            sse_event(w, data)
        w.write(b"0\r\n\r\n")
    else:
        send_json(w, 200, {
            "id": "up-1", "object": "chat.completion", "created": 1, "model": req["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "four words of answer"}}],
            "usage": usage})
    return True


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def keyed(tmp_path: Path, upstream: Upstream, gate: Gate) -> Iterator[RunningMesh]:
    async def held(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                   w: asyncio.StreamWriter) -> bool:
        return await _held(gate, req, r, w)

    upstream.plan("held", held)
    with keyed_mesh(tmp_path, MASTER, upstream.url, "held", (PRICE_IN, PRICE_OUT),
                    services=("completion", "agent")) as running:
        yield running


async def _info(mesh: RunningMesh, key: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        info = await client.get(f"{mesh.http_url}/key/info", params={"key": key},
                                headers={"authorization": f"Bearer {MASTER}"})
    return dict(info.json()["info"])


def _reserved(mesh: RunningMesh, key: str) -> tuple[int, float, int]:
    """What the key's calls in flight hold now, in the mesh's process: calls, cost, tokens."""
    return mesh.mesh.auth.in_flight(hash_key(key))


def _body(max_tokens: int | None = 8, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "held", "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def _burst(mesh: RunningMesh, gate: Gate, key: str, body: dict[str, Any],
                 calls: int = BURST, path: str = "/v1/chat/completions") -> list[int]:
    """`calls` calls at once on connections of their own; the upstream answers once each
    has reached it or been refused (all in flight together): their statuses, sorted."""
    gate.arrived = 0
    gate.open = asyncio.Event()
    limits = httpx.Limits(max_connections=calls, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def call() -> int:
            reply = await client.post(f"{mesh.http_url}{path}", json=body,
                                      headers={"authorization": f"Bearer {key}"})
            if body.get("stream") and reply.status_code == 200:
                assert "[DONE]" in reply.text and '"error"' not in reply.text, reply.text
            return reply.status_code

        tasks = [asyncio.create_task(call()) for _ in range(calls)]
        safety = time.monotonic() + 60  # a net against a hang, not a measure
        while True:
            if sum(t.done() for t in tasks) + gate.arrived >= calls or \
                    time.monotonic() > safety:
                break
            await asyncio.sleep(0.01)
        gate.open.set()
        return sorted(await asyncio.gather(*tasks))


async def test_a_budget_bounds_the_calls_a_key_has_in_flight(
        keyed: RunningMesh, gate: Gate) -> None:
    # Each call reserves 1.0 (8 completion tokens at 1/8) and costs 0.5: the budget of 2.0
    # covers two calls in flight, whatever they end up costing.
    key = new_key(keyed, MASTER, max_budget=2.0)
    assert await _burst(keyed, gate, key, _body()) == [200] * 2 + [429] * (BURST - 2)
    assert (await _info(keyed, key))["spend"] == 2 * 0.5
    assert _reserved(keyed, key) == (0, 0.0, 0)  # every call's reservation was released
    # Spent 1.0: one call's reservation fits beside it, a second's does not.
    assert await _burst(keyed, gate, key, _body()) == [200] + [429] * (BURST - 1)
    assert (await _info(keyed, key))["spend"] == 1.5
    # A call alone is admitted while the key is under its budget, and may end past it.
    assert await _burst(keyed, gate, key, _body(max_tokens=1000), calls=1) == [200]
    assert (await _info(keyed, key))["spend"] == 2.0
    assert await _burst(keyed, gate, key, _body(), calls=1) == [403]
    assert _reserved(keyed, key) == (0, 0.0, 0)


async def test_a_call_without_max_tokens_reserves_a_default_answer(
        keyed: RunningMesh, gate: Gate) -> None:
    # The review's case: no max_tokens, so each call reserves a default answer (1,024
    # tokens, 128 here): more than the budget, so one call at a time.
    key = new_key(keyed, MASTER, max_budget=2.0)
    assert await _burst(keyed, gate, key, _body(max_tokens=None)) == \
        [200] + [429] * (BURST - 1)
    assert (await _info(keyed, key))["spend"] == 0.5
    assert _reserved(keyed, key) == (0, 0.0, 0)


async def test_streams_reserve_and_release_as_calls_do(keyed: RunningMesh, gate: Gate) -> None:
    key = new_key(keyed, MASTER, max_budget=2.0)
    assert await _burst(keyed, gate, key, _body(stream=True)) == \
        [200] * 2 + [429] * (BURST - 2)
    assert (await _info(keyed, key))["spend"] == 2 * 0.5
    assert _reserved(keyed, key) == (0, 0.0, 0)


async def test_text_streams_reserve_and_release_as_calls_do(
        keyed: RunningMesh, gate: Gate) -> None:
    """`/v1/completions` with `"stream": true` (gRPC TextCompletionStream) reserves what a
    text completion does: two fit in the budget together, the rest are refused."""
    key = new_key(keyed, MASTER, max_budget=2.0)
    body = {"model": "held", "prompt": "hi", "max_tokens": 8, "stream": True}
    assert await _burst(keyed, gate, key, body, path="/v1/completions") == \
        [200] * 2 + [429] * (BURST - 2)
    assert (await _info(keyed, key))["spend"] == 2 * 0.5
    assert _reserved(keyed, key) == (0, 0.0, 0)


async def test_a_text_completions_best_of_reserves_every_answer_it_bills(
        keyed: RunningMesh, gate: Gate) -> None:
    """`best_of` (OpenAI's legacy completions, in the request's `extra_body`) makes the
    upstream write and bill that many answers of which it returns `n`: a review's key of
    budget 1.0 spent 18 with `best_of` 20, each call having reserved one answer. With
    `best_of` 2 each call reserves 2.0, the whole budget: one at a time."""
    key = new_key(keyed, MASTER, max_budget=2.0)
    body = {"model": "held", "prompt": "hi", "max_tokens": 8, "best_of": 2}
    assert await _burst(keyed, gate, key, body, path="/v1/completions") == \
        [200] + [429] * (BURST - 1)
    # As OpenAI: a stream cannot pick the best of its candidates (a 400, reserving nothing).
    streamed = await _burst(keyed, gate, key, {**body, "stream": True}, calls=1,
                            path="/v1/completions")
    assert streamed == [400]
    assert _reserved(keyed, key) == (0, 0.0, 0)
    # A chat completion's too (an upstream's own field, as vLLM's chat takes it); without
    # best_of two such calls fit (the first test).
    key = new_key(keyed, MASTER, max_budget=2.0)
    assert await _burst(keyed, gate, key, {**_body(), "best_of": 2}) == \
        [200] + [429] * (BURST - 1)
    assert _reserved(keyed, key) == (0, 0.0, 0)


async def test_tokens_per_minute_bound_the_calls_a_key_has_in_flight(
        keyed: RunningMesh, gate: Gate) -> None:
    # Each call reserves 300 tokens of answer and its prompt's few (a token per four bytes
    # of a small request) and uses 14: three fit in 1,000 tokens a minute, four do not.
    key = new_key(keyed, MASTER, tpm_limit=1000)
    assert await _burst(keyed, gate, key, _body(max_tokens=300)) == \
        [200] * 3 + [429] * (BURST - 3)
    assert _reserved(keyed, key) == (0, 0.0, 0)
    # 42 tokens used this minute: three calls' reservations still fit beside them.
    assert await _burst(keyed, gate, key, _body(max_tokens=300)) == \
        [200] * 3 + [429] * (BURST - 3)
    # 84 used: one call asking for 600 fits, a second does not.
    assert await _burst(keyed, gate, key, _body(max_tokens=600)) == \
        [200] + [429] * (BURST - 1)
    assert _reserved(keyed, key) == (0, 0.0, 0)


async def test_a_call_its_caller_gave_up_on_releases_its_reservation(
        keyed: RunningMesh, gate: Gate) -> None:
    key = new_key(keyed, MASTER, max_budget=2.0, tpm_limit=100_000)
    gate.arrived = 0
    gate.open = asyncio.Event()
    async with httpx.AsyncClient(timeout=1.0) as client:
        with pytest.raises(httpx.TimeoutException):
            await client.post(f"{keyed.http_url}/v1/chat/completions", json=_body(),
                              headers={"authorization": f"Bearer {key}"})
    # The mesh hangs up on the upstream when it sees the caller gone, then the call ends.
    safety = time.monotonic() + 30
    while True:
        if (gate.hung_up and _reserved(keyed, key) == (0, 0.0, 0)) or \
                time.monotonic() > safety:
            break
        await asyncio.sleep(0.02)
    assert gate.hung_up == 1
    assert _reserved(keyed, key) == (0, 0.0, 0)
    # Nothing of it is held: two calls fit in the budget again.
    assert await _burst(keyed, gate, key, _body()) == [200] * 2 + [429] * (BURST - 2)
    assert _reserved(keyed, key) == (0, 0.0, 0)


async def test_the_model_calls_of_runs_reserve_as_completions_do(
        keyed: RunningMesh, gate: Gate) -> None:
    """A service's model call for a caller (an agent run's turn) was admitted beside the
    key's reservations but reserved nothing itself: ten agent runs at once each had their
    model call admitted, and spent 2.5 times the key's budget of 2.0. Each reserves its
    estimate now, as a completion does: two runs' calls fit in flight together."""
    key = new_key(keyed, MASTER, max_budget=2.0)
    body = {"model": "agent/held", "max_tokens": 8, "use_tools": False,
            "messages": [{"role": "user", "content": "hi"}]}
    statuses = await _burst(keyed, gate, key, body)
    assert statuses == [200] * BURST  # a run whose model call was refused says so in-band
    assert gate.arrived == 2, gate.arrived
    assert (await _info(keyed, key))["spend"] == 2 * 0.5
    assert _reserved(keyed, key) == (0, 0.0, 0)


async def test_embeddings_reserve_their_input_as_completions_do(
        keyed: RunningMesh, gate: Gate) -> None:
    """Embedding calls were not reserved: a key's calls in flight together all passed its
    tokens per minute. Each reserves its input's estimate (a token per four bytes: some 300
    here) and no answer: three fit in 1,000 tokens a minute, four do not."""
    key = new_key(keyed, MASTER, tpm_limit=1000)
    body = {"model": "held", "input": "word " * 240}
    assert await _burst(keyed, gate, key, body, path="/v1/embeddings") == \
        [200] * 3 + [429] * (BURST - 3)
    assert _reserved(keyed, key) == (0, 0.0, 0)
