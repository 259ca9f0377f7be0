"""The `smt` backend: warm `z3 -in` processes in the jail, one obligation after another.

An obligation is posed by the rule in `_smtlib` (a preamble of declarations, definitions
and assertions; one goal term). Each runs in its own scope::

    (push 1) <preamble> (push 1) (assert (not <goal>)) (check-sat)

`unsat` proves the goal; the inner scope is then popped and `(check-sat)` asked of the
preamble alone: `unsat` there means the assumptions are inconsistent and the proof is
*vacuous* (PROVED, `vacuous`, and a warning diagnostic starting with "vacuous:"); an
answer of `unknown`, or no answer within the item's time limit, adds an info diagnostic
instead. `sat` on the goal refutes it with z3's model; `unknown` is UNKNOWN. The outer
scopes are popped before the next item, so nothing leaks between items.

z3's replies are read between sentinels named with a fresh nonce, and must be exactly
one answer (`sat`, `unsat` or `unknown`) or z3's own errors: nothing of the item's text
is printed by z3 except inside an error, and an error makes the item FAILED. z3 numbers
lines over its whole input stream, so each worker counts the lines it sent to locate
errors in the obligation's own source.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets

from ..jail import Jail
from ._backend import probe_version
from ._pool import WorkerPool
from ._process import ProverProcess
from ._settings import ProveSettings
from ._smtlib import SmtScript, pose
from ._types import BackendInfo, CheckOutcome, Diagnostic, Limits, Obligation, Verdict

__all__ = ["SmtBackend", "Z3Worker"]

log = logging.getLogger("scillm.prove")

_ERROR = re.compile(r'^\(error "(?:line (\d+) column (\d+): )?(.*)"\)$', re.DOTALL)
_ANSWERS = frozenset({"sat", "unsat", "unknown"})

INSTRUCTIONS = """\
You write SMT-LIB2 obligations checked by Z3.
Reply with one fenced code block (```smt2 ... ```) holding, in order:
the declarations (declare-const / declare-fun / define-fun), then a line `; goal`
followed by ONE term: the claim to prove. What the requirement assumes goes into that
term as (=> (and assumptions...) conclusion): write no (assert ...), no (check-sat) and no
other command, and do not redefine a name the solver defines (not, =, +, Int, ...): the
checker asserts the negated goal and proves the claim when that is unsatisfiable."""


class _Reply:
    """z3's output between two sentinels, split into answers, errors and the rest."""

    def __init__(self, lines: list[str], to_source: dict[int, int]) -> None:
        self.errors = [_error(text, to_source) for text in _join_errors(lines)]
        self.answers = [ln for ln in lines if ln in _ANSWERS]
        self.other = [ln for ln in lines if ln not in _ANSWERS and ln.strip()]

    def answer(self) -> str | None:
        """The one answer, when z3 said exactly that and nothing else."""
        if self.errors or len(self.answers) != 1:
            return None
        return self.answers[0]


class Poisoned(Exception):
    """A warm z3 held something of an earlier item after its scopes were popped."""


class Z3Worker:
    """One long-lived `z3 -in` process in the jail."""

    def __init__(self, proc: ProverProcess) -> None:
        self._proc = proc
        self._lines = 0  # lines sent so far; z3 numbers them from 1
        self._depth = 0  # scopes the last item left open; popped before the next one

    @classmethod
    async def start(cls, z3_path: str, memory_mb: int, jail: Jail) -> Z3Worker:
        worker = cls(await ProverProcess.spawn([z3_path, "-in"], jail=jail,
                                               memory_mb=memory_mb))
        # Interactive mode keeps the assertions, so that `_clean` can ask for them.
        try:
            reply = await worker._ask("(set-option :interactive-mode true)\n")
        except BaseException:
            await worker.kill()
            raise
        if reply:
            await worker.kill()
            raise RuntimeError(f"z3 refused interactive mode: {' '.join(reply)[:300]}")
        return worker

    @property
    def alive(self) -> bool:
        return self._proc.alive

    async def kill(self) -> None:
        await self._proc.kill()

    async def _ask(self, text: str, before: str = "") -> list[str]:
        """Send `text`, then a fresh sentinel; the output lines before the sentinel.

        With `before`, that text goes first in the same write, framed by a sentinel of its
        own, and its reply must show a clean solver (see `_clean`)."""
        head = ""
        if before:
            first = f"scillm-done-{secrets.token_hex(8)}"
            head = before + f'(echo "{first}")\n'
        nonce = f"scillm-done-{secrets.token_hex(8)}"
        text = head + text + f'(echo "{nonce}")\n'
        self._lines += text.count("\n")
        await self._proc.send(text)
        if before:
            data = await self._proc.read_until(f"{first}\n".encode())
            self._clean(data[:-len(first) - 1].splitlines())
        data = await self._proc.read_until(f"{nonce}\n".encode())
        return data[:-len(nonce) - 1].splitlines()

    def _clean(self, lines: list[str]) -> None:
        """Raise `Poisoned` unless, with the last item's scopes popped, the solver holds no
        assertion at any level: what one item asserts never reaches the next one."""
        if lines != ["()", "(:assertion-stack-levels 0)"]:
            self._proc.kill_now()
            raise Poisoned(" ".join(lines)[:300])

    async def run(self, script: SmtScript, limits: Limits) -> CheckOutcome:
        """Check a posed script within `limits`; TimeoutError past the limit on the goal,
        EOFError when z3 dies."""
        self._proc.set_memory_limit(limits.memory_mb)
        deadline = asyncio.get_running_loop().time() + limits.timeout_s
        source = script.source
        # The last item's scopes are popped and the solver shown clean in a frame of its
        # own, written together with this item.
        before = (f"(pop {self._depth})\n(get-assertions)\n"
                  "(get-info :assertion-stack-levels)\n") if self._depth else ""
        head = "(push 1)\n"
        base = self._lines + before.count("\n") + (1 if before else 0) + head.count("\n")
        pre_lines = script.preamble.count("\n")
        # Stream line -> source line: the preamble's lines, then (after our inner push)
        # the query's.
        to_source = {base + i: i for i in range(1, pre_lines + 1)}
        to_source.update({base + pre_lines + 1 + i: pre_lines + i
                          for i in range(1, script.query.count("\n") + 1)})
        self._depth = 2
        async with asyncio.timeout_at(deadline):
            reply = _Reply(await self._ask(head + script.preamble + "(push 1)\n" + script.query,
                                           before), to_source)
        # z3 out of memory says `(error "out of memory")` and exits (EOFError): an error
        # that reaches the sentinel is about the item, whatever its text says.
        if reply.errors:
            return CheckOutcome(Verdict.FAILED, source, tuple(reply.errors),
                                message=reply.errors[0].message)
        answer = reply.answer()
        warnings = tuple(Diagnostic("warning", ln) for ln in reply.other)
        if answer is None:
            return CheckOutcome(Verdict.ERROR, source, warnings, message=(
                f"z3 did not give one answer: {' | '.join(reply.answers + reply.other)[:300]}"))
        if answer == "sat":
            async with asyncio.timeout_at(deadline):
                model = "\n".join(await self._ask("(get-model)\n"))
            return CheckOutcome(Verdict.REFUTED, source, warnings, counterexample=model,
                                message="negated goal is sat: counterexample found")
        if answer == "unknown":
            async with asyncio.timeout_at(deadline):
                reason = " ".join(await self._ask("(get-info :reason-unknown)\n"))
            return CheckOutcome(Verdict.UNKNOWN, source, warnings,
                                message=f"z3 answered unknown {reason}")
        if not script.preamble.strip():
            return CheckOutcome(Verdict.PROVED, source, warnings, message="negated goal is unsat")
        return await self._consistency(script, warnings, deadline)

    async def _consistency(self, script: SmtScript, warnings: tuple[Diagnostic, ...],
                           deadline: float) -> CheckOutcome:
        """PROVED, told apart from a proof that only holds because the preamble is
        inconsistent (the preamble alone checked in the same solver)."""
        source = script.source
        end = _end_of(script.preamble)
        try:
            async with asyncio.timeout_at(deadline):
                self._depth = 1
                answer = _Reply(await self._ask("(pop 1)\n(check-sat)\n"), {}).answer()
        except TimeoutError:
            await self.kill()
            answer = "timeout"
        if answer == "unsat":
            return CheckOutcome(Verdict.PROVED, source, (*warnings, Diagnostic(
                "warning", "vacuous: the preamble's assumptions are inconsistent (unsat "
                "without the goal), so every goal follows from them", 1, 0, *end)),
                message="negated goal is unsat, but vacuously: the assumptions are "
                "inconsistent", vacuous=True)
        if answer == "sat":
            return CheckOutcome(Verdict.PROVED, source, warnings,
                                message="negated goal is unsat; the assumptions are consistent")
        said = "did not answer in time" if answer == "timeout" else f"answered {answer}"
        return CheckOutcome(Verdict.PROVED, source, (*warnings, Diagnostic(
            "info", f"whether the preamble's assumptions are consistent is not known: z3 "
            f"{said} on them alone", 1, 0, *end)), message="negated goal is unsat")


def _end_of(text: str) -> tuple[int, int]:
    """1-based line and 0-based column just past the last character of `text`."""
    body = text.rstrip("\n")
    return body.count("\n") + 1, len(body) - (body.rfind("\n") + 1)


def _join_errors(lines: list[str]) -> list[str]:
    """Error messages, which z3 may spread over several lines."""
    out: list[str] = []
    buf: list[str] = []
    for line in lines:
        if line.startswith("(error ") or buf:
            buf.append(line)
            if line.endswith('")'):
                out.append("\n".join(buf))
                buf = []
    return out


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


class SmtBackend:
    """Z3 behind the `Backend` interface."""

    name = "smt"

    def __init__(self, settings: ProveSettings) -> None:
        self._settings = settings
        self._info: BackendInfo | None = None
        self._jail: Jail | None = None
        self._pool = WorkerPool(self._new_worker, settings.smt_pool_size)

    @property
    def jail(self) -> Jail:
        if self._jail is None:
            raise RuntimeError("the smt backend is not started")
        return self._jail

    async def _new_worker(self) -> Z3Worker:
        s = self._settings
        return await Z3Worker.start(s.z3_path, s.default_limits.memory_mb, self.jail)

    async def info(self) -> BackendInfo:
        if self._info is None:
            self._info = await probe_version(self.name, [self._settings.z3_path, "--version"],
                                             self.jail)
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
        for _ in range(2):  # a worker found poisoned is dropped; the item runs on a fresh one
            try:
                return await self._run(script, limits)
            except Poisoned as exc:
                log.error("a warm z3 held an earlier item's assertions (%s); replaced", exc)
        raise RuntimeError("two warm z3 workers in a row held an earlier item's assertions")

    async def _run(self, script: SmtScript, limits: Limits) -> CheckOutcome:
        async with self._pool.lease() as worker:
            try:
                return await worker.run(script, limits)
            except TimeoutError:
                await worker.kill()
                return CheckOutcome(Verdict.TIMEOUT, script.source,
                                    message=f"z3 killed after {limits.timeout_s:g} s")
            except EOFError as exc:
                await worker.kill()
                return CheckOutcome(Verdict.ERROR, script.source, message=(
                    f"z3 exited (memory limit {limits.memory_mb} MiB?): {str(exc)[-300:]}"))

    async def start(self, *, prewarm: bool, jail: Jail) -> None:
        self._jail = jail
        if prewarm and (await self.info()).available:
            await self._pool.prewarm()

    async def close(self) -> None:
        await self._pool.close()

    @property
    def pool(self) -> WorkerPool[Z3Worker]:
        return self._pool
