"""FairGate (server/fair.py): who gets a slot set free, and that no slot is lost when a
waiter is cancelled, before or after it was given one."""

from __future__ import annotations

import asyncio

from scillm.server.fair import FairGate


async def test_a_freed_slot_goes_to_the_owner_holding_the_fewest() -> None:
    gate, big, small = FairGate(2), object(), object()
    await gate.acquire(big)
    await gate.acquire(big)
    order: list[str] = []

    async def take(owner: object, name: str) -> None:
        await gate.acquire(owner)
        order.append(name)

    waiting = [asyncio.create_task(take(big, "big-3")), asyncio.create_task(take(big, "big-4")),
               asyncio.create_task(take(small, "small"))]
    await asyncio.sleep(0)
    gate.release(big)
    await asyncio.sleep(0)
    assert order == ["small"]  # it came last, and holds none
    gate.release(big)
    await asyncio.sleep(0)
    assert order == ["small", "big-3"]  # then the longest waiting among equals
    waiting[1].cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert gate.held == 2


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    gate, a, b = FairGate(1), object(), object()
    await gate.acquire(a)
    waiter = asyncio.create_task(gate.acquire(b))
    await asyncio.sleep(0)
    waiter.cancel()  # cancelled while it waits
    await asyncio.gather(waiter, return_exceptions=True)
    gate.release(a)
    assert gate.held == 0
    await asyncio.wait_for(gate.acquire(a), 5)  # the slot is there to take
    granted = asyncio.create_task(gate.acquire(b))
    await asyncio.sleep(0)
    gate.release(a)  # b is given the slot ...
    granted.cancel()  # ... and cancelled before it runs: the slot comes back
    await asyncio.gather(granted, return_exceptions=True)
    assert gate.held == 0
    await asyncio.wait_for(gate.acquire(a), 5)
