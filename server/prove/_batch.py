"""A running batch: results in completion order, then a summary."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType

from ..fair import shares_as
from ._types import BatchSummary, ItemResult, Obligation, Verdict

__all__ = ["BatchRun"]

log = logging.getLogger("scillm.prove")


class BatchRun:
    """Results of one batch as items finish.

    Iterate it once (`async for result in run`); `summary` is final when iteration
    ends. Cancelling the consumer, breaking out of the loop inside `async with run`,
    or `aclose()` cancels the items still running, which kills their provers.
    """

    def __init__(self, items: Sequence[Obligation],
                 check: Callable[[Obligation], Awaitable[ItemResult]], concurrency: int) -> None:
        self._items = list(items)
        self._check = check
        self._concurrency = max(1, min(concurrency, len(self._items)))
        self._results: list[ItemResult] = []
        self._started = time.monotonic()
        self._finished: float | None = None
        self._iterator: AsyncIterator[ItemResult] | None = None

    def __aiter__(self) -> AsyncIterator[ItemResult]:
        if self._iterator is not None:
            raise RuntimeError("a BatchRun can be iterated only once")
        self._iterator = self._run()
        return self._iterator

    async def __aenter__(self) -> BatchRun:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the batch: cancel running items and kill their provers."""
        if self._iterator is not None:
            aclose = getattr(self._iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        self._finished = self._finished or time.monotonic()

    async def _run(self) -> AsyncIterator[ItemResult]:
        self._started = time.monotonic()
        pending = iter(self._items)
        done: asyncio.Queue[ItemResult] = asyncio.Queue()

        async def lane() -> None:
            for item in pending:
                await done.put(await self._check_safely(item))

        with shares_as(self):  # the lanes' prover leases count as this batch's
            lanes = [asyncio.create_task(lane()) for _ in range(self._concurrency)]
        try:
            for _ in self._items:
                result = await done.get()
                self._results.append(result)
                yield result
        finally:
            for task in lanes:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            self._finished = time.monotonic()

    async def _check_safely(self, item: Obligation) -> ItemResult:
        """The item's result; a bug becomes an ERROR result (logged), not a dead batch."""
        try:
            return await self._check(item)
        except Exception:
            log.exception("internal error checking item %r", item.item_id)
            return ItemResult(item.item_id, item.backend, Verdict.ERROR, source="",
                              message="internal error while checking this item")

    @property
    def summary(self) -> BatchSummary:
        """Totals over the results yielded so far (final once iteration ended)."""
        counts = Counter(r.verdict for r in self._results)
        end = self._finished if self._finished is not None else time.monotonic()
        return BatchSummary(
            total=len(self._items), completed=len(self._results),
            counts={v: counts.get(v, 0) for v in Verdict},
            cache_hits=sum(r.cached for r in self._results),
            vacuous=sum(r.vacuous for r in self._results if r.verdict is Verdict.PROVED),
            prompt_tokens=sum(a.prompt_tokens for r in self._results for a in r.attempts),
            completion_tokens=sum(a.completion_tokens for r in self._results
                                  for a in r.attempts),
            duration_s=end - self._started)
