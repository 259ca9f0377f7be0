"""Workers shared fairly among the callers that want them (`FairGate`).

A prover pool or the code sandbox has a few workers for every caller; a caller's batch
queues all of its items at once. Handed out first come, first served, one caller's batch
of slow items kept every worker for its whole length (another caller's one-line item
waited 39 s behind four slow Coq items, a trivial CodeWorld run 59 s behind forty
sleepers). A slot set free goes instead to the waiting owner holding the fewest: a batch,
a CodeWorld request (`shares_as`), else each call on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["FairGate", "current_owner", "shares_as"]

#: Whom the slots taken in this context are for (a batch, a run); None: each on its own.
_owner: ContextVar[object | None] = ContextVar("fair_share_owner", default=None)


@contextlib.contextmanager
def shares_as(owner: object) -> Iterator[None]:
    """Slots taken in this context (and in tasks created in it) count as `owner`'s."""
    token = _owner.set(owner)
    try:
        yield
    finally:
        _owner.reset(token)


def current_owner() -> object:
    """The owner slots taken here count for: the context's, else a new one (alone)."""
    owner = _owner.get()
    return object() if owner is None else owner


class FairGate:
    """`size` slots; a slot set free goes to the waiting owner holding the fewest slots,
    the one waiting longest among equals. Owners are told apart by identity (any object:
    a batch, a runner), and are alive while they wait or hold a slot."""

    def __init__(self, size: int) -> None:
        self._free = size
        #: Slots held, by id of their owner.
        self._held: dict[int, int] = {}
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def held(self) -> int:
        """Slots held right now."""
        return sum(self._held.values())

    def _grant(self, key: int) -> None:
        self._free -= 1
        self._held[key] = self._held.get(key, 0) + 1

    async def acquire(self, owner: object) -> None:
        """Wait for a slot for `owner`; `release(owner)` gives it back."""
        key = id(owner)
        if self._free > 0 and not self._waiting:
            self._grant(key)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(owner)  # granted, then cancelled before it could run
            else:
                self._waiting = [w for w in self._waiting if w[1] is not waiter]
            raise

    def release(self, owner: object) -> None:
        key = id(owner)
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]
        self._free += 1
        while self._free and self._waiting:
            at = min(range(len(self._waiting)),
                     key=lambda i: (self._held.get(self._waiting[i][0], 0), i))
            key, waiter = self._waiting.pop(at)
            if waiter.done():  # its task was cancelled while it waited
                continue
            self._grant(key)
            waiter.set_result(None)
