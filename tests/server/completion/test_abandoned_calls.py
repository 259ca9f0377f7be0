"""A non-streamed call its caller abandons is charged an estimate, as a stream is.

The upstream has been sent the prompt, and bills it, whether or not the caller waits for
the answer. A caller that left a stream early was charged an estimate; one that gave up
on a whole answer (a client timeout, a gRPC deadline) was charged nothing at all, so a key
could spend without limit on calls it never waited for. Such a call is now charged the
estimate of its prompt (a token per four characters), once: through the OpenAI door with
the openai SDK and through gRPC, against a real mesh and a loopback upstream that answers
only after its caller gave up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from completion_upstream import Upstream, openai_reply, send_json
from keyed import key_spend, keyed_mesh, new_key
from meshutil import RunningMesh

from scillm.clients import ScillmClient

MASTER = "sk-master-abandoned"
#: Prices per token: a spend reads back as tokens (prompt at 1, completion at 1000).
PRICE_IN, PRICE_OUT = 1.0, 1000.0
PROMPT = "x" * 4000  # 1,000 tokens by the estimate
CALLS = 4


async def _answer_late(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                       w: asyncio.StreamWriter) -> bool:
    """The whole answer (with its usage), once the mesh has hung up or after 8 s."""
    try:
        await asyncio.wait_for(r.read(1), 8)
    except TimeoutError:
        pass
    try:
        send_json(w, 200, openai_reply(req, "late"))
        await w.drain()
    except ConnectionError:
        pass
    return False


@pytest.fixture
def keyed(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    upstream.plan("slow", _answer_late)
    with keyed_mesh(tmp_path, MASTER, upstream.url, "slow", (PRICE_IN, PRICE_OUT)) as running:
        yield running


async def test_a_whole_answer_the_caller_gave_up_on_is_charged_its_prompt(
        keyed: RunningMesh, upstream: Upstream) -> None:
    key = new_key(keyed, MASTER)
    sdk = openai.AsyncOpenAI(base_url=f"{keyed.http_url}/v1", api_key=key, max_retries=0,
                             timeout=1.0)

    async def ask() -> None:
        with pytest.raises(openai.APITimeoutError):
            await sdk.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": PROMPT}])

    await asyncio.gather(*(ask() for _ in range(CALLS)))
    await sdk.close()
    assert upstream.calls("slow") == CALLS
    expected = CALLS * 1000 * PRICE_IN
    assert await key_spend(keyed, MASTER, key, within=10.0, settle=0.5,
                           at_least=expected) == expected


async def test_a_grpc_call_past_its_deadline_is_charged_its_prompt(
        keyed: RunningMesh, upstream: Upstream) -> None:
    key = new_key(keyed, MASTER)
    async with ScillmClient(keyed.grpc_target, api_key=key) as client:
        with pytest.raises(Exception) as info:
            await client.completion.create(
                {"model": "slow", "messages": [{"role": "user", "content": PROMPT}]},
                timeout=1.0)
    assert getattr(info.value, "code", None) in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                 grpc.StatusCode.CANCELLED), info.value
    assert await key_spend(keyed, MASTER, key, within=10.0, settle=0.5,
                           at_least=1000 * PRICE_IN) == 1000 * PRICE_IN
