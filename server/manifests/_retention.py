"""Retention: runs inactive for longer than the store keeps them are deleted.

A run's last activity (`active_time`, see `_store`) is its end time once it has ended,
else its start time; while it runs, the process running it says it is active again every
`interval_s` (`RunStore.touch_live`), so a run that streams for days is never swept, and
one its process left behind (the process was killed) is swept a retention period after
that process last spoke for it. A row written before `active_time` existed is judged by
its start time.

`RunSweeper` runs in every serving process: when it starts, then every `interval_s`. It
deletes in batches of `batch` rows, each one short statement on the store's worker thread,
with a pause between them, so a backlog of millions neither blocks the event loop nor keeps
the store's lock from the runs being written meanwhile. Processes sharing one store (`scillm
serve --workers N`, replicas on one PostgreSQL) sweep it at once safely: a run is deleted by
one of them and simply not found by the others (PostgreSQL: a row another sweeper or a
run's write holds is skipped, `FOR UPDATE SKIP LOCKED`). A batch the store is too busy for
is tried again after a wait (`TRIES`): runs' writes come first. Every serving process also
keeps its own streaming runs active, whatever the retention (0: nothing is deleted).
Agent traces (`<store dir>/agent-traces/<run_id>.jsonl`) go by the same rule, by the time
they were last written.

`prune` is the same sweep done once, for `scillm runs prune`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ._store import RunStore, RunStoreError, RunStoreUnavailable, instant

__all__ = ["DAY_S", "Pruned", "RunSweeper", "agent_trace_dir", "prune"]

log = logging.getLogger("scillm.server")

#: Seconds in a day.
DAY_S = 86_400.0
#: Rows one statement deletes at most.
BATCH = 500
#: Seconds between sweeps, and between a live run's touches.
INTERVAL_S = 3600.0
#: Seconds between two batches of one sweep: others' writes get the store meanwhile.
PAUSE_S = 0.05
#: Times a batch is tried when the store is busy, and the first wait before a new try.
TRIES, BACKOFF_S = 4, 1.0


def agent_trace_dir(store_path: Path) -> Path:
    """Where agent runs asked with `trace` leave their JSONL traces: beside the store."""
    return store_path.parent / "agent-traces"


@dataclass(frozen=True)
class Pruned:
    """What one sweep removed (or, dry, would remove)."""

    runs: int
    traces: int


def _traces(directory: Path | None, before: float, *, dry_run: bool) -> int:
    """Delete (or count) the `*.jsonl` traces in `directory` last written before `before`
    (seconds since the epoch). Another process deleting the same file first is no error."""
    if directory is None or not directory.is_dir():
        return 0
    removed = 0
    for trace in directory.glob("*.jsonl"):
        try:
            if trace.stat().st_mtime >= before:
                continue
            if not dry_run:
                trace.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def _delete_batch(store: RunStore, cutoff: str, batch: int) -> int:
    """One batch. Runs' writes come first: a store too busy to take it (SQLite's lock held
    by writers past its timeout; a PostgreSQL server restarting) is asked again after a
    wait, doubled each time, `TRIES` times in all. Blocking."""
    for attempt in range(TRIES):
        try:
            return store.delete_inactive(cutoff, batch)
        except RunStoreUnavailable:
            if attempt == TRIES - 1:
                raise
            time.sleep(BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


def prune(store: RunStore, older_than_days: float, *, now: float | None = None,
          dry_run: bool = False, trace_dir: Path | None = None, batch: int = BATCH,
          pause_s: float = PAUSE_S) -> Pruned:
    """Delete (dry: count) the runs inactive for more than `older_than_days` days before
    `now` (default: the time now), in batches. Blocking."""
    now = time.time() if now is None else now
    before = now - older_than_days * DAY_S
    cutoff = instant(before)
    if dry_run:
        runs = store.count_inactive(cutoff)
    else:
        runs = 0
        while (deleted := _delete_batch(store, cutoff, batch)) == batch:
            runs += deleted
            time.sleep(pause_s)
        runs += deleted
    return Pruned(runs, _traces(trace_dir, before, dry_run=dry_run))


class RunSweeper:
    """Keeps a store's live runs marked active and, with `retention_days` > 0, deletes the
    runs inactive for longer: at start, then every `interval_s` (see the module docstring).
    `clock` (seconds since the epoch) and `pause` (awaited between two batches) are the
    tests' hooks."""

    def __init__(self, store: RunStore, retention_days: float, *,
                 trace_dir: Path | None = None, interval_s: float = INTERVAL_S,
                 batch: int = BATCH, clock: Callable[[], float] = time.time,
                 pause: Callable[[], Awaitable[None]] | None = None,
                 on_swept: Callable[[Pruned], None] | None = None) -> None:
        self._store = store
        self._days = retention_days
        self._trace_dir = trace_dir
        self._interval_s = interval_s
        self._batch = batch
        self._clock = clock
        self._pause = pause or (lambda: asyncio.sleep(PAUSE_S))
        self._on_swept = on_swept
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> Pruned:
        """Touch this process's live runs, then delete the inactive ones (with retention)."""
        now = self._clock()
        await asyncio.to_thread(self._store.touch_live, now, self._interval_s)
        if self._days <= 0:
            return Pruned(0, 0)
        before = now - self._days * DAY_S
        cutoff = instant(before)
        runs = 0
        while True:
            deleted = await asyncio.to_thread(_delete_batch, self._store, cutoff, self._batch)
            runs += deleted
            if deleted < self._batch:
                break
            await self._pause()
        traces = await asyncio.to_thread(_traces, self._trace_dir, before, dry_run=False)
        pruned = Pruned(runs, traces)
        log.info("run retention: removed %d runs and %d agent traces inactive for more than "
                 "%g days from %s", runs, traces, self._days, self._store.location)
        if self._on_swept is not None:
            self._on_swept(pruned)
        return pruned

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except RunStoreError as exc:  # unreachable, busy, full: the next sweep retries
                log.warning("run retention: sweep of %s failed, next in %gs: %s",
                            self._store.location, self._interval_s, exc)
            except Exception:
                log.exception("run retention: sweep of %s failed", self._store.location)
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        """Sweep now, then every `interval_s`, in a task of the running loop."""
        self._task = asyncio.create_task(self._sweep_forever(), name="run-retention")

    async def stop(self) -> None:
        """Cancel the sweeps (a batch under way finishes on its thread)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
