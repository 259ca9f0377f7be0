"""`ProveEngine`: the facade the Prove servicer calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import TracebackType

from ..jail import Jail
from ._backend import Backend
from ._batch import BatchRun
from ._cache import CACHEABLE, MemoryCache, VerdictCache, cache_key
from ._characters import unreadable_controls
from ._coq import CoqBackend
from ._crosscheck import DEFAULT_SOLVER, solvers_of
from ._formalize import Complete, Deadline, formalize
from ._lean import LeanBackend
from ._settings import ProveSettings
from ._smt import SmtBackend
from ._types import BackendInfo, CheckOutcome, FormalizeOptions, ItemResult, Limits, Obligation
from ._validate import validate_batch
from .errors import EngineClosed

__all__ = ["ProveEngine"]


class ProveEngine:
    """Checks batches of obligations on warm prover pools.

    Use as `async with ProveEngine(settings) as engine:` (or `start()`/`close()`).
    `backends` and `cache` may be replaced (tests, a shared Redis cache).
    """

    def __init__(self, settings: ProveSettings | None = None, *,
                 cache: VerdictCache | None = None,
                 backends: Mapping[str, Backend] | None = None) -> None:
        self.settings = settings or ProveSettings()
        self._cache: VerdictCache = cache or MemoryCache(self.settings.cache_size)
        if backends is None:
            made: list[Backend] = [SmtBackend(self.settings), CoqBackend(self.settings),
                                   LeanBackend(self.settings)]
            backends = {b.name: b for b in made}
        self._backends: dict[str, Backend] = dict(backends)
        self._infos: dict[str, BackendInfo] = {}
        self._jail: Jail | None = None
        self._running = False

    async def start(self) -> None:
        """Probe the jail and every backend (versions, availability); prewarm pools if
        configured. Raises `JailUnavailable` when bubblewrap is required and missing."""
        self._jail = await Jail.probe(self.settings.jail)
        await asyncio.gather(*(b.start(prewarm=self.settings.prewarm, jail=self._jail)
                               for b in self._backends.values()))
        names = list(self._backends)
        infos = await asyncio.gather(*(self._backends[n].info() for n in names))
        self._infos = dict(zip(names, infos, strict=True))
        self._running = True

    @property
    def isolation(self) -> str:
        """How provers are isolated: "bubblewrap", or "rlimits" (weaker; see the jail)."""
        self._require_running()
        assert self._jail is not None
        return self._jail.isolation

    async def close(self) -> None:
        """Kill every prover process, and give the jail's uid back."""
        self._running = False
        await asyncio.gather(*(b.close() for b in self._backends.values()))
        if self._jail is not None:
            self._jail.release()

    async def __aenter__(self) -> ProveEngine:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def backends(self) -> list[BackendInfo]:
        """What each backend is, in registration order (probed by `start()`)."""
        self._require_running()
        return [self._infos[name] for name in self._backends]

    def readiness(self) -> dict[str, bool]:
        """Whether each part can check obligations, named as the service's health entries
        (`<service>/<part>`) name them: each backend ("smt" is z3's readiness, the default
        solver's), then each other SMT solver on its own ("cvc5": items asking for cvc5,
        or both, need it; z3 items do not)."""
        self._require_running()
        ready = {name: self._infos[name].available for name in self._backends}
        for info in self._infos.values():
            ready.update({s.name: s.available for s in info.solvers
                          if s.name != DEFAULT_SOLVER})
        return ready

    def backend(self, name: str) -> Backend:
        """The backend called `name` (KeyError when unknown)."""
        return self._backends[name]

    def _require_running(self) -> None:
        if not self._running:
            raise EngineClosed("the prove engine is not started (or already closed)")

    def run_batch(self, items: Sequence[Obligation], *, defaults: Limits | None = None,
                  formalize: FormalizeOptions | None = None,
                  complete: Complete | None = None, no_cache: bool = False,
                  deadline: Deadline | None = None) -> BatchRun:
        """Validate `items` now (typed errors), then check them as the run is iterated.

        Items without `limits` take `defaults` (else the settings' defaults); items with
        only `requirement_text` are formalised with `formalize` options and `complete`.
        With `no_cache` every item is checked again (fresh verdicts still refresh the
        cache). No formalisation runs past `deadline` (the call's), nor any longer than
        the settings' `formalize_max_s`.
        """
        self._require_running()
        limits = defaults or self.settings.default_limits
        validate_batch(items, settings=self.settings, backends=self._infos, defaults=limits,
                       formalize=formalize, can_complete=complete is not None)
        # An smt item that names no solver is z3's (its result and cache key say so).
        items = [replace(o, smt_solver=DEFAULT_SOLVER)
                 if o.backend == "smt" and not o.smt_solver else o for o in items]

        async def run(item: Obligation) -> ItemResult:
            return await self._run_item(item, item.limits or limits, formalize, complete,
                                        no_cache, deadline)

        return BatchRun(items, run, self.settings.max_concurrency)

    async def check(self, item: Obligation, *, limits: Limits | None = None) -> ItemResult:
        """Check one item with formal text (a batch of one, without the iterator)."""
        async with self.run_batch([item], defaults=limits) as run:
            async for result in run:
                return result
        raise AssertionError("a batch of one yields one result")

    async def _check_cached(self, item: Obligation, limits: Limits, no_cache: bool
                            ) -> tuple[CheckOutcome, bool]:
        backend = self._backends[item.backend]
        refused = unreadable_controls(backend.source_of(item))
        if refused is not None:  # no prover reads it (see `_characters`)
            return refused, False
        key = cache_key(item, self._version(item))
        hit = None if no_cache else await self._cache.get(key)
        if hit is not None:
            return hit, True
        outcome = await backend.check(item, limits)
        if outcome.verdict in CACHEABLE:
            await self._cache.put(key, outcome)
        return outcome, False

    def _version(self, item: Obligation) -> str:
        """The version of what checks `item`: its backend's, or the solvers' its
        `smt_solver` picks ("<z3's> + <cvc5's>" for both)."""
        info = self._infos[item.backend]
        if not info.solvers:
            return info.version
        versions = {s.name: s.version for s in info.solvers}
        return " + ".join(versions.get(n, "") for n in solvers_of(item.smt_solver))

    async def _run_item(self, item: Obligation, limits: Limits,
                        options: FormalizeOptions | None, complete: Complete | None,
                        no_cache: bool, deadline: Deadline | None = None) -> ItemResult:
        started = time.monotonic()
        if not item.needs_formalization:
            outcome, cached = await self._check_cached(item, limits, no_cache)
            return ItemResult(item.item_id, item.backend, outcome.verdict, outcome.source,
                              outcome.diagnostics, outcome.counterexample, outcome.message,
                              time.monotonic() - started, cached, vacuous=outcome.vacuous,
                              smt_solver=item.smt_solver, solvers=outcome.solvers)
        assert options is not None and complete is not None  # validated
        hits = 0

        async def check(candidate: Obligation) -> CheckOutcome:
            nonlocal hits
            outcome, cached = await self._check_cached(candidate, limits, no_cache)
            hits += cached
            return outcome

        most = self.settings.formalize_max_s
        bound = Deadline(asyncio.get_running_loop().time() + most, "formalize_max_s", most)
        done = await formalize(item, instructions=_join(
            self._backends[item.backend].instructions(), options.instructions),
            options=options, complete=complete, check=check,
            max_source_bytes=self.settings.max_source_bytes,
            deadline=deadline if deadline is not None and deadline.at < bound.at else bound)
        out = done.outcome
        result = ItemResult(item.item_id, item.backend, out.verdict, out.source,
                            out.diagnostics, out.counterexample, out.message,
                            time.monotonic() - started, False, done.attempts,
                            vacuous=out.vacuous, smt_solver=item.smt_solver,
                            solvers=out.solvers)
        return replace(result, cached=hits == len(done.attempts) and hits > 0)


def _join(*parts: str) -> str:
    return "\n\n".join(p.strip() for p in parts if p.strip())
