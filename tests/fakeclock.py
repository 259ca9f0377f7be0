"""A monotonic clock a test moves: `clock()` reads `clock.now`, the test sets it."""

from __future__ import annotations

__all__ = ["Clock"]


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
