"""The `smt` backend: warm SMT solvers in the jail, one obligation after another.

An obligation is posed by the rule in `_smtlib` (a preamble of declarations, definitions
and assertions; one goal term), then checked by the solver its `smt_solver` picks: z3
(the default; `Z3Worker`, `z3 -in`), cvc5 (`_cvc5`), or both, each on its own and at the
same time, their verdicts made one by `_crosscheck` (PROVED only when both prove it). Each
solver keeps a warm pool of its own (`smt_pool_size` workers), runs in the same jail
under the item's limits, and speaks the protocol of `_solver`: the item in scopes of its
own, read between nonce sentinels, the solver shown clean before the next item, the
preamble alone checked after a proof to tell a vacuous one apart.

z3 says its errors as `(error "line L column C: message")`, counting lines from 1 over its
whole input stream and columns from 0, and goes on reading after one.
"""

from __future__ import annotations

import asyncio
import logging
import re

from ..jail import Jail
from ._backend import probe_version
from ._crosscheck import cross_check, single, solvers_of
from ._cvc5 import Cvc5Worker
from ._pool import WorkerPool
from ._settings import ProveSettings
from ._smtlib import SmtScript, pose
from ._solver import Poisoned, Reply, SolverWorker
from ._types import BackendInfo, CheckOutcome, Diagnostic, Limits, Obligation, Verdict

__all__ = ["Poisoned", "SmtBackend", "Z3Worker"]

log = logging.getLogger("scillm.prove")

_ERROR = re.compile(r'^\(error "(?:line (\d+) column (\d+): )?(.*)"\)$', re.DOTALL)

INSTRUCTIONS = """\
You write SMT-LIB2 obligations checked by Z3 (or cvc5).
Reply with one fenced code block (```smt2 ... ```) holding, in order:
the declarations (declare-const / declare-fun / define-fun), then a line `; goal`
followed by ONE term: the claim to prove. What the requirement assumes goes into that
term as (=> (and assumptions...) conclusion): write no (assert ...), no (check-sat) and no
other command, and do not redefine a name the solver defines (not, =, +, Int, ...): the
checker asserts the negated goal and proves the claim when that is unsatisfiable."""


class _Reply(Reply):
    """z3's output between two sentinels (a `Reply` read with z3's form of errors)."""

    def __init__(self, lines: list[str], to_source: dict[int, int]) -> None:
        super().__init__(lines, to_source, _error)


class Z3Worker(SolverWorker):
    """One long-lived `z3 -in` process in the jail."""

    solver = "z3"
    # Interactive mode keeps the assertions, so that `_clean` can ask for them.
    SETUP = "(set-option :interactive-mode true)\n"
    CLEAN = ("()", "(:assertion-stack-levels 0)")

    @classmethod
    def argv(cls, path: str) -> list[str]:
        return [path, "-in"]

    def _error(self, text: str, to_source: dict[int, int]) -> Diagnostic:
        return _error(text, to_source)

    def _reply(self, lines: list[str], to_source: dict[int, int]) -> Reply:
        return _Reply(lines, to_source)


def _error(text: str, to_source: dict[int, int]) -> Diagnostic:
    """z3's `(error "line L column C: msg")`, located in the obligation's source when L
    is one of its lines (`to_source` maps z3's stream lines to source lines)."""
    m = _ERROR.match(text)
    if m is None:
        return Diagnostic("error", text)
    message = m.group(3).replace('""', '"')
    if m.group(1) is None:
        return Diagnostic("error", message)
    line = to_source.get(int(m.group(1)))
    column = int(m.group(2))
    if line is None:
        return Diagnostic("error", message)
    return Diagnostic("error", message, line, column, line, column + 1)


class _Solver:
    """One solver of the smt backend: how its workers start, its pool, and its probe."""

    def __init__(self, worker: type[SolverWorker], path: str, settings: ProveSettings,
                 backend: SmtBackend) -> None:
        self.worker = worker
        self.path = path
        self.info: BackendInfo | None = None
        self._settings = settings
        self._backend = backend
        self.pool: WorkerPool[SolverWorker] = WorkerPool(self._new_worker,
                                                         settings.smt_pool_size)

    async def _new_worker(self) -> SolverWorker:
        return await self.worker.start(self.path, self._settings.default_limits.memory_mb,
                                       self._backend.jail)

    async def probe(self, jail: Jail) -> BackendInfo:
        if self.info is None:
            self.info = await probe_version(self.worker.solver, [self.path, "--version"], jail)
        return self.info


class SmtBackend:
    """SMT solvers behind the `Backend` interface: z3 (the default) and cvc5, each with a
    warm pool of its own; an item's `smt_solver` picks one, or both (`_crosscheck`)."""

    name = "smt"

    def __init__(self, settings: ProveSettings) -> None:
        self._settings = settings
        self._info: BackendInfo | None = None
        self._jail: Jail | None = None
        self._solvers: dict[str, _Solver] = {
            "z3": _Solver(Z3Worker, settings.z3_path, settings, self),
            "cvc5": _Solver(Cvc5Worker, settings.cvc5_path, settings, self)}

    @property
    def jail(self) -> Jail:
        if self._jail is None:
            raise RuntimeError("the smt backend is not started")
        return self._jail

    async def info(self) -> BackendInfo:
        """z3's availability and version (the default solver's), with each solver's own
        in `solvers`."""
        if self._info is None:
            infos = await asyncio.gather(*(s.probe(self.jail) for s in self._solvers.values()))
            z3 = infos[0]
            self._info = BackendInfo(self.name, z3.available, z3.version, z3.reason,
                                     tuple(infos))
        return self._info

    def source_of(self, obligation: Obligation) -> str:
        return pose(obligation.preamble, obligation.statement).source

    def instructions(self) -> str:
        return INSTRUCTIONS

    async def check(self, obligation: Obligation, limits: Limits) -> CheckOutcome:
        script = pose(obligation.preamble, obligation.statement)
        if script.diagnostics:
            return CheckOutcome(Verdict.FAILED, script.source, script.diagnostics,
                                message=script.diagnostics[0].message, prover_ran=False)
        names = solvers_of(obligation.smt_solver)
        if len(names) == 1:
            return single(names[0], await self._check_with(names[0], script, limits),
                          self._version(names[0]))
        # Each solver on its own worker, at the same time, each held to the item's limits.
        tasks = [asyncio.ensure_future(self._check_with(n, script, limits)) for n in names]
        try:
            first, second = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return cross_check((names[0], first, self._version(names[0])),
                           (names[1], second, self._version(names[1])))

    def _version(self, solver: str) -> str:
        info = self._solvers[solver].info
        return info.version if info is not None else ""

    async def _check_with(self, solver: str, script: SmtScript, limits: Limits
                          ) -> CheckOutcome:
        info = await self._solvers[solver].probe(self.jail)
        if not info.available:  # validation refuses such an item first
            return CheckOutcome(Verdict.ERROR, script.source,
                                message=f"{solver} is unavailable: {info.reason}")
        for _ in range(2):  # a worker found poisoned is dropped; the item runs on a fresh one
            try:
                return await self._run(solver, script, limits)
            except Poisoned as exc:
                log.error("a warm %s held an earlier item's assertions (%s); replaced",
                          solver, exc)
        raise RuntimeError(f"two warm {solver} workers in a row held an earlier item's "
                           "assertions")

    async def _run(self, solver: str, script: SmtScript, limits: Limits) -> CheckOutcome:
        async with self._solvers[solver].pool.lease() as worker:
            try:
                return await worker.run(script, limits)
            except TimeoutError:
                await worker.kill()
                return CheckOutcome(Verdict.TIMEOUT, script.source,
                                    message=f"{solver} killed after {limits.timeout_s:g} s")
            except EOFError as exc:
                await worker.kill()
                return CheckOutcome(Verdict.ERROR, script.source, message=(
                    f"{solver} exited (memory limit {limits.memory_mb} MiB?): "
                    f"{worker.exit_words(str(exc))}"))

    async def start(self, *, prewarm: bool, jail: Jail) -> None:
        """With `prewarm`, z3's pool starts now; cvc5's, which only the items that ask for it
        use, on their first."""
        self._jail = jail
        z3 = self._solvers["z3"]
        if prewarm and (await z3.probe(jail)).available:
            await z3.pool.prewarm()

    async def close(self) -> None:
        await asyncio.gather(*(s.pool.close() for s in self._solvers.values()))

    @property
    def pool(self) -> WorkerPool[SolverWorker]:
        """z3's pool."""
        return self._solvers["z3"].pool

    def solver_pool(self, solver: str) -> WorkerPool[SolverWorker]:
        """The pool of `solver` ("z3", "cvc5")."""
        return self._solvers[solver].pool
