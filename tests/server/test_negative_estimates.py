"""A call's estimate can never make room in its key's reservations.

A review spent 11 times a key's budget: calls with `"max_tokens": -2147483648, "n": 128`
(refused a moment later, as invalid) each reserved an estimate far below zero while they
waited on Redis for the key's token window, and meanwhile the key's real calls saw its
calls in flight hold a negative cost and passed both its budget and its tokens per minute.
An estimate is what a call may use: never less than nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scillm.completion.v1 import completion_pb2 as pb
from scillm.server.keys import Authenticator, KeyRateLimited, Principal, SQLiteKeyStore
from scillm.server.request_facts import estimate_of

LOWEST = -(2**31)


def test_negative_numbers_in_a_request_estimate_nothing_below_zero() -> None:
    chat = pb.CompletionRequest(model="m", max_tokens=LOWEST, n=128)
    newer = pb.CompletionRequest(model="m", max_completion_tokens=LOWEST)
    text = pb.TextCompletionRequest(model="m", prompt=[pb.EmbeddingInput(text="x")],
                                    max_tokens=LOWEST, n=128)
    for request in (chat, newer, text, pb.CompletionStreamRequest(request=chat),
                    pb.TextCompletionStreamRequest(request=text)):
        prompt, completion = estimate_of(request)
        assert prompt >= 0 and completion == 0, (type(request).__name__, prompt, completion)


async def test_a_negative_estimate_held_in_flight_makes_no_room(tmp_path: Path) -> None:
    """Without a server: a call holding a negative estimate (as one waiting on Redis did)
    leaves the key's other calls in flight exactly as limited as before."""
    auth = Authenticator("m", SQLiteKeyStore(tmp_path / "k.sqlite3"), {"p": (0.5, 1.0)})
    _, record = await auth.store.create(max_budget=10.0, tpm_limit=100)
    key = Principal(False, record)
    first = await auth.authorize(key, model="p", estimate=(2, 8))  # 9.0, 10 tokens
    hostile = await auth.authorize(key, model="p", estimate=(0, LOWEST * 128))
    assert first is not None
    calls, cost, tokens = auth.in_flight(record.key_hash)
    assert cost >= 9.0 and tokens >= 10, (calls, cost, tokens)
    with pytest.raises(KeyRateLimited):  # 9.0 + 2.0 > 10, whatever the other holds
        await auth.authorize(key, model="p", estimate=(2, 1))
    first.release()
    if hostile is not None:
        hostile.release()
    assert auth.in_flight(record.key_hash) == (0, 0.0, 0)
