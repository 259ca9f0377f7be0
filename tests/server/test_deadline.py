"""`Deadline` behaves as `asyncio.timeout` does, case by case (each case runs on both)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from scillm.server.deadline import Deadline

TIMERS: list[Callable[[float | None], Any]] = [asyncio.timeout, Deadline]
IDS = ["asyncio.timeout", "Deadline"]


def run(coro: Any) -> Any:
    return uvloop.run(coro)


@pytest.mark.parametrize("timer", TIMERS, ids=IDS)
def test_a_block_past_its_delay_raises_timeout_error_from_the_cancellation(
        timer: Callable[[float | None], Any]) -> None:
    async def go() -> BaseException:
        with pytest.raises(TimeoutError) as info:
            async with timer(0.01):
                await asyncio.sleep(5)
        return info.value

    error = run(go())
    assert isinstance(error.__context__, asyncio.CancelledError)


@pytest.mark.parametrize("timer", TIMERS, ids=IDS)
def test_a_block_in_time_is_left_alone_after_it_ends(
        timer: Callable[[float | None], Any]) -> None:
    async def go() -> str:
        async with timer(0.05):
            await asyncio.sleep(0)
        await asyncio.sleep(0.15)  # past the delay: the timer must be gone
        return "done"

    assert run(go()) == "done"


@pytest.mark.parametrize("timer", TIMERS, ids=IDS)
def test_none_sets_no_timer(timer: Callable[[float | None], Any]) -> None:
    async def go() -> str:
        async with timer(None):
            await asyncio.sleep(0.05)
        return "done"

    assert run(go()) == "done"


@pytest.mark.parametrize("timer", TIMERS, ids=IDS)
def test_a_cancellation_from_outside_goes_through_as_cancellation(
        timer: Callable[[float | None], Any]) -> None:
    async def go() -> None:
        async def body() -> None:
            async with timer(5):
                await asyncio.sleep(5)

        task = asyncio.create_task(body())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())


@pytest.mark.parametrize("timer", TIMERS, ids=IDS)
def test_expiry_and_an_outside_cancellation_together_give_the_cancellation(
        timer: Callable[[float | None], Any]) -> None:
    """The timer fires and someone else cancels the task in the same loop turn: the
    other cancellation is still pending, so it is not turned into a TimeoutError."""
    async def go() -> None:
        async def body() -> None:
            async with timer(0):
                asyncio.get_running_loop().call_soon(task.cancel)
                await asyncio.sleep(5)

        task = asyncio.create_task(body())
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())


def test_expired_tells_whether_the_delay_passed() -> None:
    async def go() -> tuple[bool, bool]:
        quick = Deadline(5)
        async with quick:
            pass
        slow = Deadline(0.01)
        with pytest.raises(TimeoutError):
            async with slow:
                await asyncio.sleep(5)
        return quick.expired, slow.expired

    assert run(go()) == (False, True)
