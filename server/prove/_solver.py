"""One warm SMT solver process in the jail, one obligation after another (z3 or cvc5).

A `SolverWorker` checks a posed script (`_smtlib`) in scopes of its own::

    (push 1) <preamble> (push 1) (assert (not <goal>)) (check-sat)

`unsat` proves the goal; the inner scope is then popped and `(check-sat)` asked of the
preamble alone: `unsat` there means the assumptions are inconsistent and the proof is
*vacuous* (PROVED, `vacuous`, and a warning diagnostic starting with "vacuous:"); an
answer of `unknown`, or no answer within the item's time limit, adds an info diagnostic
instead. `sat` on the goal refutes it with the solver's model (the model alone: what else
the solver prints then is a warning diagnostic, `_model`); `unknown` is UNKNOWN. The
outer scopes are popped before the next item, and the solver must then show that it holds
no assertion at any level (`_clean`), so nothing leaks between items.

Replies are read between sentinels (`(echo "<nonce>")`, a fresh nonce each time), and must
be exactly one answer (`sat`, `unsat` or `unknown`) or the solver's own errors: nothing of
the item's text is printed by the solver except inside an error or a warning, and an error
makes the item FAILED. Any other line is a warning the solver printed (cvc5's, on its
standard error, are read with its output), kept as a warning diagnostic. Solvers number
lines over their whole input stream, so each worker counts the lines it sent to locate
errors (and cvc5's warnings) in the obligation's own source.

What differs between solvers (how they start, print a sentinel, word an error, or stop
after one) is said by a subclass: `Z3Worker` (`_smt`), `Cvc5Worker` (`_cvc5`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import ClassVar, TypeVar

from ..jail import Jail
from ._process import ProverProcess
from ._smtlib import SmtScript
from ._types import CheckOutcome, Diagnostic, Limits, Verdict

__all__ = ["ANSWERS", "Exited", "Poisoned", "Reply", "SolverWorker", "end_of", "join_errors"]

ANSWERS = frozenset({"sat", "unsat", "unknown"})

#: A solver's error text (one `(error "...")`, perhaps over several lines) and the map of
#: its stream lines to the item's source lines -> a diagnostic.
ErrorReader = Callable[[str, dict[int, int]], Diagnostic]


class Reply:
    """A solver's output between two sentinels, split into answers, errors and the rest."""

    def __init__(self, lines: list[str], to_source: dict[int, int],
                 error: ErrorReader) -> None:
        self.errors = [error(text, to_source) for text in join_errors(lines)]
        self.answers = [ln for ln in lines if ln in ANSWERS]
        self.other = [ln for ln in lines if ln not in ANSWERS and ln.strip()]

    def answer(self) -> str | None:
        """The one answer, when the solver said exactly that and nothing else."""
        if self.errors or len(self.answers) != 1:
            return None
        return self.answers[0]


class Poisoned(Exception):
    """A warm solver held something of an earlier item after its scopes were popped."""


class Exited(EOFError):
    """The solver exited while answering the item's own text; `output` is what it printed
    first (cvc5 stops at the first error in what it reads)."""

    def __init__(self, output: str) -> None:
        super().__init__(output)
        self.output = output


W = TypeVar("W", bound="SolverWorker")


class SolverWorker:
    """One long-lived SMT solver process in the jail."""

    #: The solver's name, as messages say it ("z3", "cvc5").
    solver: ClassVar[str] = ""
    #: Sent once at start; the solver must print nothing back.
    SETUP: ClassVar[str] = ""
    #: What `(get-assertions)` then `(get-info :assertion-stack-levels)` print when the
    #: solver holds no assertion at any level.
    CLEAN: ClassVar[tuple[str, ...]] = ()
    #: Whether the solver exits after an error in what it reads (cvc5) or reads on (z3).
    STOPS_AT_ERROR: ClassVar[bool] = False

    def __init__(self, proc: ProverProcess) -> None:
        self._proc = proc
        self._lines = 0  # lines sent so far; the solver numbers them (see `_located`)
        self._depth = 0  # scopes the last item left open; popped before the next one

    @classmethod
    def argv(cls, path: str) -> list[str]:
        """The command line of a solver reading SMT-LIB2 commands on its standard input."""
        raise NotImplementedError

    @classmethod
    async def start(cls: type[W], path: str, memory_mb: int, jail: Jail) -> W:
        worker = cls(await ProverProcess.spawn(cls.argv(path), jail=jail,
                                               memory_mb=memory_mb))
        try:
            reply = await worker._ask(cls.SETUP)
        except BaseException:
            await worker.kill()
            raise
        if reply:
            await worker.kill()
            raise RuntimeError(f"{cls.solver} refused its set-up: {' '.join(reply)[:300]}")
        return worker

    @property
    def alive(self) -> bool:
        return self._proc.alive

    async def kill(self) -> None:
        await self._proc.kill()

    def _echoed(self, nonce: str) -> str:
        """How the solver prints `(echo "<nonce>")`."""
        return nonce

    def _error(self, text: str, to_source: dict[int, int]) -> Diagnostic:
        """The solver's error `text` as a diagnostic, located through `to_source`."""
        raise NotImplementedError

    @classmethod
    def exit_words(cls, output: str) -> str:
        """What an ERROR's message quotes of the `output` of a solver that exited."""
        return output[-300:]

    def _exit_errors(self, output: str, to_source: dict[int, int]) -> list[Diagnostic]:
        """The item's errors in the `output` of a solver that exited while reading it, or
        [] when its exit was not about the item (then ERROR, as a crash)."""
        return []

    async def _ask(self, text: str, before: str = "") -> list[str]:
        """Send `text`, then a fresh sentinel; the output lines before the sentinel.

        With `before`, that text goes first in the same write, framed by a sentinel of its
        own, and its reply must show a clean solver (see `_clean`). `Exited` when the
        solver exits before the sentinel of `text`."""
        head = ""
        if before:
            first = f"scillm-done-{secrets.token_hex(8)}"
            head = before + f'(echo "{first}")\n'
        nonce = f"scillm-done-{secrets.token_hex(8)}"
        text = head + text + f'(echo "{nonce}")\n'
        self._lines += text.count("\n")
        await self._proc.send(text)
        if before:
            mark = self._echoed(first)
            data = await self._proc.read_until(f"{mark}\n".encode())
            self._clean(data[:-len(mark) - 1].splitlines())
        mark = self._echoed(nonce)
        try:
            data = await self._proc.read_until(f"{mark}\n".encode())
        except EOFError as exc:
            raise Exited(str(exc)) from None
        return data[:-len(mark) - 1].splitlines()

    def _clean(self, lines: list[str]) -> None:
        """Raise `Poisoned` unless, with the last item's scopes popped, the solver holds no
        assertion at any level: what one item asserts never reaches the next one."""
        if tuple(lines) != self.CLEAN:
            self._proc.kill_now()
            raise Poisoned(" ".join(lines)[:300])

    def _reply(self, lines: list[str], to_source: dict[int, int]) -> Reply:
        return Reply(lines, to_source, self._error)

    def _warning(self, line: str, to_source: dict[int, int]) -> Diagnostic:
        """A line the solver printed that is no answer and no error, as a warning."""
        return Diagnostic("warning", line)

    def _model(self, lines: list[str]) -> tuple[str, tuple[Diagnostic, ...]]:
        """The model in the reply to `(get-model)`, and the solver's other lines there as
        warnings. The model is `(`, a line per symbol, `)` (both solvers); what came before
        its `(` is not the model: cvc5 prints its warnings (on its standard error, read
        with its output) while it builds the model, before it prints it (`_cvc5`). A reply
        without a `(` line is kept whole, as the solver said it."""
        start = next((i for i, line in enumerate(lines) if line == "("), None)
        if start is None:
            return "\n".join(lines), ()
        closes = [i for i in range(start + 1, len(lines)) if lines[i] == ")"]
        end = closes[-1] if closes else len(lines) - 1
        said = [*lines[:start], *lines[end + 1:]]
        return ("\n".join(lines[start:end + 1]),
                tuple(self._warning(line, {}) for line in said if line.strip()))

    async def run(self, script: SmtScript, limits: Limits) -> CheckOutcome:
        """Check a posed script within `limits`; TimeoutError past the limit on the goal,
        EOFError when the solver dies (but for an exit on the item's own error: FAILED)."""
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
        try:
            async with asyncio.timeout_at(deadline):
                reply = self._reply(await self._ask(
                    head + script.preamble + "(push 1)\n" + script.query, before), to_source)
        except Exited as exc:
            errors = self._exit_errors(exc.output, to_source)
            if not errors:
                raise
            await self.kill()  # reaped now, so that the pool never hands it out again
            return CheckOutcome(Verdict.FAILED, source, tuple(errors), message=errors[0].message)
        # z3 out of memory says `(error "out of memory")` and exits (EOFError): an error
        # that reaches the sentinel is about the item, whatever its text says.
        if reply.errors:
            if self.STOPS_AT_ERROR:
                await self.kill()  # it is on its way out; the pool starts another
            return CheckOutcome(Verdict.FAILED, source, tuple(reply.errors),
                                message=reply.errors[0].message)
        answer = reply.answer()
        warnings = tuple(self._warning(ln, to_source) for ln in reply.other)
        if answer is None:
            return CheckOutcome(Verdict.ERROR, source, warnings, message=(
                f"{self.solver} did not give one answer: "
                f"{' | '.join(reply.answers + reply.other)[:300]}"))
        if answer == "sat":
            async with asyncio.timeout_at(deadline):
                model, said = self._model(await self._ask("(get-model)\n"))
            return CheckOutcome(Verdict.REFUTED, source, (*warnings, *said),
                                counterexample=model,
                                message="negated goal is sat: counterexample found")
        if answer == "unknown":
            async with asyncio.timeout_at(deadline):
                reason = " ".join(await self._ask("(get-info :reason-unknown)\n"))
            return CheckOutcome(Verdict.UNKNOWN, source, warnings,
                                message=f"{self.solver} answered unknown {reason}")
        if not script.preamble.strip():
            return CheckOutcome(Verdict.PROVED, source, warnings, message="negated goal is unsat")
        return await self._consistency(script, warnings, deadline)

    async def _consistency(self, script: SmtScript, warnings: tuple[Diagnostic, ...],
                           deadline: float) -> CheckOutcome:
        """PROVED, told apart from a proof that only holds because the preamble is
        inconsistent (the preamble alone checked in the same solver)."""
        source = script.source
        end = end_of(script.preamble)
        try:
            async with asyncio.timeout_at(deadline):
                self._depth = 1
                answer = self._reply(await self._ask("(pop 1)\n(check-sat)\n"), {}).answer()
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
            "info", f"whether the preamble's assumptions are consistent is not known: "
            f"{self.solver} {said} on them alone", 1, 0, *end)), message="negated goal is unsat")


def end_of(text: str) -> tuple[int, int]:
    """1-based line and 0-based column just past the last character of `text`."""
    body = text.rstrip("\n")
    return body.count("\n") + 1, len(body) - (body.rfind("\n") + 1)


def join_errors(lines: list[str]) -> list[str]:
    """Error messages, which a solver may spread over several lines."""
    out: list[str] = []
    buf: list[str] = []
    for line in lines:
        if line.startswith("(error ") or buf:
            buf.append(line)
            if line.endswith('")'):
                out.append("\n".join(buf))
                buf = []
    if buf:  # a solver that exited inside its error (cvc5 ends the block with `")`)
        out.append("\n".join(buf))
    return out
