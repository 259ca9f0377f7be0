"""The `smt` backend: warm `z3 -in` processes, one obligation after another.

Each obligation runs inside `(push)`/`(pop)` (about 0.2 ms, where `(reset)` costs
about 8 ms), so nothing leaks between items; a stateful script gets `(reset)` before
and after instead. Its verdict follows the rule in `_smtlib`. z3 numbers lines over
its whole input stream, so each worker counts the lines it sent to locate errors in
the obligation's own source.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path

from ._backend import probe_version
from ._pool import WorkerPool
from ._process import ProverProcess
from ._settings import ProveSettings
from ._smtlib import SmtScript, pose
from ._types import BackendInfo, CheckOutcome, Diagnostic, Limits, Obligation, Verdict

__all__ = ["SmtBackend", "Z3Worker"]

_ERROR = re.compile(r'^\(error "(?:line (\d+) column (\d+): )?(.*)"\)$', re.DOTALL)
_ANSWERS = frozenset({"sat", "unsat", "unknown"})

INSTRUCTIONS = """\
You write SMT-LIB2 obligations checked by Z3.
Reply with one fenced code block (```smt2 ... ```) holding, in order:
the declarations (declare-const / declare-fun / define-fun), then the assumptions as
(assert ...), then a line `; goal` followed by ONE term: the claim to prove.
Do not assert the goal yourself and do not write (check-sat): the checker asserts the
negated goal and proves the claim when that is unsatisfiable."""


class Z3Worker:
    """One long-lived `z3 -in` process."""

    def __init__(self, proc: ProverProcess) -> None:
        self._proc = proc
        self._nonce = f"scillm-done-{secrets.token_hex(8)}"
        self._lines = 0  # lines sent so far; z3 numbers them from 1
        self._dirty = False  # a stateful script ran: reset before the next one
        self._scoped = False  # the last script's (push) still awaits its (pop)

    @classmethod
    async def start(cls, z3_path: str, memory_mb: int, cwd: Path | None) -> Z3Worker:
        return cls(await ProverProcess.spawn([z3_path, "-in"], memory_mb=memory_mb, cwd=cwd))

    @property
    def alive(self) -> bool:
        return self._proc.alive

    async def kill(self) -> None:
        await self._proc.kill()

    async def _ask(self, text: str) -> list[str]:
        """Send `text`, then the sentinel; the output lines before the sentinel."""
        text += f'(echo "{self._nonce}")\n'
        self._lines += text.count("\n")
        await self._proc.send(text)
        lines: list[str] = []
        while (line := await self._proc.read_line()) != self._nonce:
            lines.append(line)
        return lines

    async def run(self, script: SmtScript, memory_mb: int) -> CheckOutcome:
        """Check a posed script; EOFError when z3 dies."""
        self._proc.set_memory_limit(memory_mb)
        source = script.source
        head = "(pop)\n" if self._scoped else ""
        head += "(reset)\n" if self._dirty or script.stateful else ""
        head += "" if script.stateful else "(push)\n"
        base = self._lines + head.count("\n")
        self._dirty, self._scoped = True, False
        lines = await self._ask(head + source)
        self._dirty, self._scoped = script.stateful, not script.stateful
        answers = [ln for ln in lines if ln in _ANSWERS]
        errors = [_error(ln, base) for ln in _join_errors(lines)]
        if any("out of memory" in d.message for d in errors):
            return CheckOutcome(Verdict.ERROR, source, tuple(errors),
                                message=f"z3 ran out of memory (limit {memory_mb} MiB)")
        if errors:
            return CheckOutcome(Verdict.FAILED, source, tuple(errors), message=errors[0].message)
        if not answers:
            return CheckOutcome(Verdict.FAILED, source, message="z3 gave no check-sat answer")
        if answers[-1] == "unsat":
            return CheckOutcome(Verdict.PROVED, source, message="negated goal is unsat")
        if answers[-1] == "sat":
            model = "\n".join(await self._ask("(get-model)\n"))
            return CheckOutcome(Verdict.REFUTED, source, counterexample=model,
                                message="negated goal is sat: counterexample found")
        reason = " ".join(await self._ask("(get-info :reason-unknown)\n"))
        return CheckOutcome(Verdict.UNKNOWN, source, message=f"z3 answered unknown {reason}")


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


def _error(text: str, base: int) -> Diagnostic:
    m = _ERROR.match(text)
    if m is None:
        return Diagnostic("error", text)
    message = m.group(3).replace('""', '"')
    if m.group(1) is None:
        return Diagnostic("error", message)
    line = int(m.group(1)) - base
    column = int(m.group(2))
    if line < 1:
        return Diagnostic("error", message)
    return Diagnostic("error", message, line, column, line, column + 1)


class SmtBackend:
    """Z3 behind the `Backend` interface."""

    name = "smt"

    def __init__(self, settings: ProveSettings) -> None:
        self._settings = settings
        self._info: BackendInfo | None = None
        self._pool = WorkerPool(self._new_worker, settings.smt_pool_size)

    async def _new_worker(self) -> Z3Worker:
        s = self._settings
        return await Z3Worker.start(s.z3_path, s.default_limits.memory_mb, s.scratch_dir)

    async def info(self) -> BackendInfo:
        if self._info is None:
            self._info = await probe_version(self.name, [self._settings.z3_path, "--version"])
        return self._info

    def source_of(self, obligation: Obligation) -> str:
        return pose(obligation.preamble, obligation.statement).source

    def instructions(self) -> str:
        return INSTRUCTIONS

    async def check(self, obligation: Obligation, limits: Limits) -> CheckOutcome:
        script = pose(obligation.preamble, obligation.statement)
        if script.diagnostics:
            return CheckOutcome(Verdict.FAILED, script.source, script.diagnostics,
                                message=script.diagnostics[0].message)
        async with self._pool.lease() as worker:
            try:
                async with asyncio.timeout(limits.timeout_s):
                    return await worker.run(script, limits.memory_mb)
            except TimeoutError:
                await worker.kill()
                return CheckOutcome(Verdict.TIMEOUT, script.source,
                                    message=f"z3 killed after {limits.timeout_s:g} s")
            except EOFError as exc:
                await worker.kill()
                return CheckOutcome(Verdict.ERROR, script.source, message=(
                    f"z3 exited (memory limit {limits.memory_mb} MiB?): {str(exc)[-300:]}"))

    async def start(self, *, prewarm: bool) -> None:
        if prewarm and (await self.info()).available:
            await self._pool.prewarm()

    async def close(self) -> None:
        await self._pool.close()

    @property
    def pool(self) -> WorkerPool[Z3Worker]:
        return self._pool
