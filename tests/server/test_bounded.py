"""server/bounded.py: a body read to its limit and not a chunk past it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from scillm.server.bounded import read_bounded


class Over(Exception):
    pass


async def test_a_body_at_the_limit_is_read_and_past_it_stops_at_once() -> None:
    pulled: list[int] = []

    async def chunks(n: int) -> AsyncIterator[bytes]:
        for i in range(n):
            pulled.append(i)
            yield b"x" * 4

    assert await read_bounded(chunks(3), 12, Over) == b"x" * 12
    pulled.clear()
    with pytest.raises(Over):
        await read_bounded(chunks(100), 12, Over)
    assert pulled == [0, 1, 2, 3]  # the chunk that passed the limit, and none after
