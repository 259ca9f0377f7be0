"""The CodeWorld facade: validate a request, run it, judge it, stream events."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence

from ._autogen import Complete, generate, variants_prompt
from ._events import Event, Generation, MctsStats, Ranked, RunResult, SessionInfo, Summary
from ._judge import check_judge, rank
from ._mcts import Search, check_mcts
from ._model import RunRequest, Strategy
from ._retention import SessionSweeper
from ._runner import Prepared, Runner, prepare
from ._scoring import TIMING_METRICS, aggregate, check_scorer
from ._sessions import RedisSessionStore, SessionStore
from ._settings import CodeWorldSettings
from .errors import InvalidRequest, SessionStoreError, TooManyItems, TooManyStrategies
from .sandbox import Language, Sandbox, Toolchain

log = logging.getLogger("scillm.server")


class CodeWorldEngine:
    """Runs strategies on items in the sandbox and judges them.

    ``complete`` is the injected model call used by autogeneration and MCTS steps.
    """

    def __init__(self, settings: CodeWorldSettings | None = None, *,
                 complete: Complete | None = None) -> None:
        self._settings = settings or CodeWorldSettings()
        self._complete = complete
        self._sandbox = Sandbox(self._settings.sandbox)
        window, threshold = self._settings.plateau_window, self._settings.plateau_threshold
        retention = self._settings.session_retention_days
        self._sessions: SessionStore | RedisSessionStore = (
            RedisSessionStore(self._settings.session_redis_url, window=window,
                              threshold=threshold, retention_days=retention)
            if self._settings.session_redis_url else
            SessionStore(self._settings.session_db, window=window, threshold=threshold,
                         retention_days=retention))
        self._sweeper = SessionSweeper(self._sessions)

    @property
    def sandbox(self) -> Sandbox:
        """The engine's sandbox (shared with the agent loop's code tools)."""
        return self._sandbox

    async def start(self) -> None:
        """Start the sandbox workers, open the session store and, with a retention, sweep
        it now and hourly (`_retention`)."""
        if isinstance(self._sessions, SessionStore):  # a file's first open builds an index
            await asyncio.to_thread(self._sessions.open)
        else:
            self._sessions.open()
        self._sweeper.start()
        await self._sandbox.start()

    async def close(self) -> None:
        """Stop the sweeps and the workers, and close the session store."""
        await self._sweeper.stop()
        await self._sandbox.close()
        self._sessions.close()

    async def __aenter__(self) -> CodeWorldEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def health(self) -> dict[str, str]:
        """``{"status": "serving" | "not_serving", "isolation": ..., "languages": ...}``."""
        serving = bool(self._sandbox.isolation)
        return {"status": "serving" if serving else "not_serving",
                "isolation": self._sandbox.isolation,
                "languages": ",".join(lang.value for lang in self._sandbox.languages)}

    def languages(self) -> tuple[Toolchain, ...]:
        """Every strategy language: available or not (with why), its version."""
        return self._sandbox.toolchains()

    def validate(self, request: RunRequest) -> None:
        """Raise an ``InvalidRequest`` subclass for a request that cannot run."""
        if not request.items:
            raise InvalidRequest("a run needs at least one item")
        if len(request.items) > self._settings.max_items:
            raise TooManyItems(f"{len(request.items)} items > {self._settings.max_items}")
        extra = request.autogenerate.n if request.autogenerate else 0
        if len(request.strategies) + extra > self._settings.max_strategies:
            raise TooManyStrategies(
                f"{len(request.strategies) + extra} strategies > {self._settings.max_strategies}")
        if not request.strategies and request.autogenerate is None:
            raise InvalidRequest("a run needs strategies or autogenerate")
        known = {lang.value for lang in Language}
        for strategy in request.strategies:
            if strategy.language not in known:
                raise InvalidRequest(f"strategy {strategy.name!r}: unknown language "
                                     f"{strategy.language!r}; choose from "
                                     f"{', '.join(sorted(known))}")
        for kind, names in (("task_id", [i.task_id for i in request.items]),
                            ("strategy name", [s.name for s in request.strategies])):
            repeated = sorted(n for n, c in Counter(names).items() if c > 1)
            if repeated:
                raise InvalidRequest(f"repeated {kind}: {', '.join(repeated)}")
        if request.scorer is not None:
            check_scorer(request.scorer)
        check_judge(request.judge)
        if request.mcts is not None:
            check_mcts(request.mcts)
        if request.autogenerate is not None:
            if self._complete is None:
                raise InvalidRequest("autogenerate needs a model (no complete() injected)")
            if not 1 <= request.autogenerate.n <= 16:
                raise InvalidRequest("autogenerate.n must be in [1, 16]")
        if request.concurrency is not None and not 1 <= request.concurrency <= 256:
            raise InvalidRequest("concurrency must be in [1, 256]")

    async def run(self, request: RunRequest) -> AsyncIterator[Event]:
        """Run a request; yields ``RunResult``, ``Generation``, ``MctsProgress``, then a
        terminal ``Summary``. Raises ``InvalidRequest`` before the first event."""
        self.validate(request)
        strategies = list(request.strategies)
        generation: Generation | None = None
        if request.autogenerate is not None:
            spec = request.autogenerate
            assert self._complete is not None
            messages = variants_prompt(request.items, spec.n, spec.language, spec.instructions)
            made, generation = await generate(
                self._complete, messages, n=spec.n, model=spec.model,
                temperature=spec.temperature, seed=spec.seed, language=spec.language)
            taken = {s.name for s in strategies}
            strategies += [s for s in made if s.name not in taken]
            yield generation
        strict = self._settings.sandbox.strict if request.strict is None else request.strict
        runner = Runner(self._sandbox, self._settings.rubric, request.judge.weights,
                        request.limits, request.scorer,
                        request.concurrency or self._sandbox.workers)
        results: list[RunResult] = []
        stats: MctsStats | None = None
        if request.mcts is not None:
            search = Search(
                request.mcts, evaluate=lambda s: self._evaluate(runner, s, strict, request),
                reward=lambda runs: _reward(runs, request), items=request.items,
                complete=self._complete,
                language=strategies[0].language if strategies else "python")
            async for event in search.run(strategies):
                if isinstance(event, RunResult):
                    results.append(event)
                yield event
            stats = search.stats()
        else:
            prepared = [self._prepare(s, strict) for s in strategies]
            async for result in runner.run_many(prepared, request.items):
                results.append(result)
                yield result
        yield await self._summary(request, results, stats, generation)

    def _prepare(self, strategy: Strategy, strict: bool) -> Prepared:
        unavailable = {t.language.value: t.reason for t in self._sandbox.toolchains()
                       if not t.available}
        return prepare(strategy, strict=strict, unavailable=unavailable)

    async def _evaluate(self, runner: Runner, strategy: Strategy, strict: bool,
                        request: RunRequest) -> list[RunResult]:
        runs = [r async for r in runner.run_many([self._prepare(strategy, strict)],
                                                 request.items)]
        order = {item.task_id: i for i, item in enumerate(request.items)}
        return sorted(runs, key=lambda r: order[r.task_id])

    async def _summary(self, request: RunRequest, results: Sequence[RunResult],
                       stats: MctsStats | None, generation: Generation | None) -> Summary:
        per_item: dict[str, list[tuple[str, Mapping[str, float]]]] = defaultdict(list)
        totals: dict[str, list[float]] = defaultdict(list)
        for run in sorted(results, key=lambda r: (r.task_id, r.strategy)):
            per_item[run.task_id].append((run.strategy, run.metrics))
        rankings = {task: rank(entries, request.judge) for task, entries in per_item.items()}
        for ranked in rankings.values():
            for entry in ranked:
                totals[entry.strategy].append(entry.score)
        overall = sorted(((sum(v) / len(v), name) for name, v in totals.items()),
                         key=lambda row: (-row[0], row[1]))
        counts = Counter(run.status.value for run in results)
        counts["runs"] = len(results)
        counts["strategies"] = len(totals)
        counts["items"] = len(request.items)
        counts["correct"] = sum(1 for run in results if run.correct)
        session: SessionInfo | None = None
        if request.session_id is not None:
            mean = sum(r.aggregate for r in results) / len(results) if results else 0.0
            try:
                session = await self._sessions.record(request.session_id, request.track, mean,
                                                      owner=request.session_owner)
            except SessionStoreError as exc:
                # The run is done: its results are not lost because its session log failed.
                log.warning("codeworld: run not recorded in session %r, track %r: %s",
                            request.session_id, request.track, exc)
                session = SessionInfo(request.session_id, request.track, 0, mean, None, None,
                                      False, error=str(exc))
        return Summary(
            rankings=rankings,
            overall=tuple(Ranked(i + 1, name, score) for i, (score, name) in enumerate(overall)),
            counts=dict(counts), isolation=self._sandbox.isolation, mcts_stats=stats,
            session=session, generation=generation,
            volatile_metrics=_volatile(request) & {m for r in results for m in r.metrics})


def _volatile(request: RunRequest) -> frozenset[str]:
    """Metrics of this request that are derived from wall time."""
    return TIMING_METRICS | frozenset(request.volatile_metrics)


def _reward(runs: Sequence[RunResult], request: RunRequest) -> float:
    if not runs:
        return 0.0
    keep_timing = request.mcts is not None and request.mcts.timing_in_reward
    volatile = _volatile(request)
    total = 0.0
    for run in runs:
        metrics = {k: v for k, v in run.metrics.items()
                   if keep_timing or k not in volatile}
        total += aggregate(metrics, request.judge.weights)
    return total / len(runs)

