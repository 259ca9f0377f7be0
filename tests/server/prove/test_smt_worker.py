"""How z3's replies become an outcome: one warm `Z3Worker` on the real z3, in the jail.

Each item runs after another on the same worker, so each also shows that the last item's
scopes were popped and the solver found clean (`Z3Worker._clean`), and that z3's stream
lines are mapped back to the item's own lines. `_Reply` is pinned on replies recorded from
z3 4.8.12 (Debian 12's, which scripts/install brings). Fast enough for the mutation pass
(docs/mutation.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scillm.server.jail import Jail, JailSettings
from scillm.server.prove import (
    CheckOutcome,
    Diagnostic,
    Limits,
    Obligation,
    ProveEngine,
    ProveSettings,
    Verdict,
)
from scillm.server.prove._process import ProverProcess
from scillm.server.prove._smt import Poisoned, Z3Worker, _Reply
from scillm.server.prove._smtlib import SmtScript, pose

#: Nonlinear and hard for z3's incremental solver: runs far past any test timeout.
HARD = ("(forall ((a Int) (b Int) (c Int)) (=> (and (> a 0) (> b 0) (> c 0)) "
        "(not (= (+ (* a a a) (* b b b)) (* c c c)))))")
VACUOUS = ("vacuous: the preamble's assumptions are inconsistent (unsat without the goal), "
           "so every goal follows from them")
NOT_KNOWN = "whether the preamble's assumptions are consistent is not known: z3 "
#: A poison long enough to show that what a poisoned worker held is cut at 300 characters.
LONG = "x" * 400


@pytest.fixture
async def jail() -> AsyncIterator[Jail]:
    jail = await Jail.probe(JailSettings())
    yield jail
    jail.release()


@pytest.fixture
async def worker(jail: Jail) -> AsyncIterator[Z3Worker]:
    z3 = await Z3Worker.start("z3", 512, jail)
    yield z3
    await z3.kill()


def _outcome(verdict: Verdict, preamble: str, statement: str, *diagnostics: Diagnostic,
             message: str, counterexample: str | None = None,
             vacuous: bool = False) -> tuple[str, str, CheckOutcome]:
    source = pose(preamble, statement).source
    return preamble, statement, CheckOutcome(verdict, source, diagnostics, counterexample,
                                             message, vacuous)


#: Each item with exactly the outcome z3's replies give it, in an order where every kind
#: of outcome (and so every depth of open scopes) comes before every other kind.
ITEMS = [
    _outcome(Verdict.PROVED, "", "(= 1 1)", message="negated goal is unsat"),
    _outcome(Verdict.PROVED, "(declare-const x Int)\n(assert (> x 0))", "(> (+ x 1) x)",
             message="negated goal is unsat; the assumptions are consistent"),
    _outcome(Verdict.FAILED, "(declare-const x Int)\n(assert (> q 0))", "(> x 0)",
             Diagnostic("error", "unknown constant q", 2, 11, 2, 12),
             message="unknown constant q"),
    _outcome(Verdict.PROVED, "(declare-const x Int)\n(assert false) ; X", "(> x 5)",
             Diagnostic("warning", VACUOUS, 1, 0, 2, 18),
             message="negated goal is unsat, but vacuously: the assumptions are inconsistent",
             vacuous=True),
    _outcome(Verdict.REFUTED, "(declare-const x Int)\n(assert (> x 0))", "(> x 1)",
             message="negated goal is sat: counterexample found",
             counterexample="(\n  (define-fun x () Int\n    1)\n)"),
    _outcome(Verdict.FAILED, "(assert (> q 0))\n(declare-const x Int)", "(> x 0)",
             Diagnostic("error", "unknown constant q", 1, 11, 1, 12),
             message="unknown constant q"),
    _outcome(Verdict.UNKNOWN, "(declare-const x Real)", "(not (= (^ 2.0 x) 3.0))",
             message='z3 answered unknown (:reason-unknown "incomplete")'),
    _outcome(Verdict.FAILED, "(declare-const x Int)", "(> x |a\nb|)",
             # z3 gives the line where the symbol ends and the column where it starts.
             Diagnostic("error", "unknown constant a\nb", 3, 18, 3, 19),
             message="unknown constant a\nb"),
    _outcome(Verdict.PROVED, "(declare-const x Real)\n(assert (= (^ 2.0 x) 3.0))", "true",
             Diagnostic("info", NOT_KNOWN + "answered unknown on them alone", 1, 0, 2, 26),
             message="negated goal is unsat"),
    _outcome(Verdict.FAILED, "(declare-const x Int)", "(>\n x\n y)",
             Diagnostic("error", "unknown constant y", 4, 1, 4, 2),
             message="unknown constant y"),
    # z3's warnings come through as (unlocated) warnings, the verdict unchanged.
    _outcome(Verdict.PROVED, "(declare-fun f (Int Int) Int)\n(assert (forall ((x Int) "
             "(y Int)) (! (> (f x y) 0) :pattern ((f x 0)))))", "(> (f 1 1) 0)",
             Diagnostic("warning", "WARNING: (<line>,70): pattern does not contain all "
                        "quantified variables."),
             message="negated goal is unsat; the assumptions are consistent"),
    _outcome(Verdict.FAILED, "(declare-const x Int)", "(> |out of memory| 0)",
             Diagnostic("error", "unknown constant out of memory", 2, 16, 2, 17),
             message="unknown constant out of memory"),
]


def _without_stream_line(outcome: CheckOutcome) -> CheckOutcome:
    """z3 places its warnings by the line of its whole input stream: not the item's."""
    diagnostics = tuple(
        Diagnostic(d.severity, d.message.split("(", 1)[0] + "(<line>," +
                   d.message.split(",", 1)[1]) if d.message.startswith("WARNING: (") else d
        for d in outcome.diagnostics)
    return CheckOutcome(outcome.verdict, outcome.source, diagnostics, outcome.counterexample,
                        outcome.message, outcome.vacuous)


async def test_each_reply_of_z3_becomes_its_outcome_on_one_warm_worker(
        worker: Z3Worker) -> None:
    for rounds in range(2):
        for preamble, statement, expected in ITEMS[rounds:] + ITEMS[:rounds]:
            got = await worker.run(pose(preamble, statement), Limits(timeout_s=30))
            assert _without_stream_line(got) == expected, (preamble, statement)


#: A true term z3 warns about as it reads it (an attribute it does not know), in words that
#: hold no stream line.
WARNED = "(forall ((w Int)) (! (= w w) :unknown-attribute 1))"
WARNING = Diagnostic("warning", "WARNING: unknown attribute :unknown-attribute")


async def test_z3s_warnings_stay_with_the_outcome_whatever_the_verdict(
        worker: Z3Worker) -> None:
    """A warning z3 gives while reading the item is part of every outcome it reaches:
    proved (with no preamble, with consistent, inconsistent or undecided assumptions),
    refuted, unknown, and an error for a reply without one answer."""
    reals = "(declare-const x Real)"
    cases = [
        (Verdict.PROVED, "", "(= 1 1)", ()),
        (Verdict.PROVED, "(declare-const x Int)", "(= x x)", ()),
        (Verdict.PROVED, "(declare-const x Int)\n(assert false)", "(= x 1)",
         (Diagnostic("warning", VACUOUS, 1, 0, 2, 14),)),
        (Verdict.PROVED, reals + "\n(assert (= (^ 2.0 x) 3.0))", "true",
         (Diagnostic("info", NOT_KNOWN + "answered unknown on them alone", 1, 0, 2, 26),)),
        (Verdict.REFUTED, "(declare-const x Int)", "(> x 0)", ()),
        (Verdict.UNKNOWN, reals, "(not (= (^ 2.0 x) 3.0))", ()),
    ]
    for verdict, preamble, goal, after in cases:
        got = await worker.run(pose(preamble, f"(and {WARNED} {goal})"), Limits(timeout_s=30))
        assert (got.verdict, got.diagnostics) == (verdict, (WARNING, *after)), (preamble, goal)
    twice = SmtScript("s", "", f"(assert {WARNED})\n(check-sat)\n(check-sat)\n")
    got = await worker.run(twice, Limits(timeout_s=30))
    assert got == CheckOutcome(Verdict.ERROR, "s", (WARNING,), message=(
        f"z3 did not give one answer: sat | sat | {WARNING.message}"))


async def test_an_error_line_not_in_z3s_form_is_kept_whole_as_an_error(
        worker: Z3Worker) -> None:
    """z3 4.8.12 writes a quote inside its error as `\\"`, so an unknown symbol holding `")`
    and a new line ends a line of z3's error as an error ends: the reply reads as two
    errors, and the second (`(error x\\")")`) is not in z3's `(error "...")` form. It is
    kept, whole, as an error: the item is FAILED and nothing z3 said is lost or demoted."""
    statement = '(> |a")\n(error x")| 0)'
    got = await worker.run(pose("", statement), Limits(timeout_s=30))
    assert got == CheckOutcome(Verdict.FAILED, pose("", statement).source, (
        # z3 gives the line where the symbol ends and the column where it starts.
        Diagnostic("error", "unknown constant a\\", 2, 16, 2, 17),
        Diagnostic("error", '(error x\\")")')), message="unknown constant a\\")


async def test_an_undecided_consistency_check_stops_at_the_items_deadline(
        worker: Z3Worker) -> None:
    """The goal is unsat at once, the preamble alone is not decided in time: PROVED, with
    an info diagnostic, and the worker (still busy) killed."""
    preamble = f"(assert {HARD})"
    async with asyncio.timeout(60):  # a check without its deadline would hang here
        got = await worker.run(pose(preamble, "true"), Limits(timeout_s=1))
    assert got == CheckOutcome(Verdict.PROVED, pose(preamble, "true").source, (Diagnostic(
        "info", NOT_KNOWN + "did not answer in time on them alone", 1, 0, 1, len(preamble)),),
        message="negated goal is unsat")
    assert not worker.alive


class _Stuck:
    """A worker's z3 process that, asked `request`, never answers (as a z3 stuck on it
    would), or answers `reply` instead of what it said."""

    def __init__(self, proc: ProverProcess, request: str,
                 reply: list[str] | None = None) -> None:
        self._proc, self._request, self._reply = proc, request, reply
        self._asked = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proc, name)

    async def send(self, text: str) -> None:
        self._asked = self._request in text
        await self._proc.send(text)

    async def read_until(self, marker: bytes) -> str:
        if self._asked and self._reply is None:
            await asyncio.Event().wait()  # never set
        data = await self._proc.read_until(marker)
        if not self._asked or self._reply is None:
            return data
        return "".join(f"{line}\n" for line in self._reply) + marker.decode()


@pytest.mark.parametrize(("request_", "preamble", "goal"), [
    ("(get-model)", "(declare-const x Int)", "(> x 0)"),
    ("(get-info :reason-unknown)", "(declare-const x Real)", "(not (= (^ 2.0 x) 3.0))"),
], ids=["model", "reason"])
async def test_a_z3_stuck_after_its_answer_is_stopped_at_the_items_deadline(
        worker: Z3Worker, request_: str, preamble: str, goal: str) -> None:
    """After `sat` the model is asked, after `unknown` the reason: a z3 that then never
    answers is stopped by the item's own deadline (TimeoutError, which the backend makes
    TIMEOUT), not waited on for ever."""
    worker._proc = _Stuck(worker._proc, request_)  # type: ignore[assignment]
    async with asyncio.timeout(30):  # without the item's deadline it would hang here
        with pytest.raises(TimeoutError):
            await worker.run(pose(preamble, goal), Limits(timeout_s=1))


async def test_a_reason_z3_gives_over_several_lines_is_one_line_of_the_message(
        worker: Z3Worker) -> None:
    """z3 prints the reason it did not decide as it holds it, new lines included (its
    `escaped` keeps them): the message has it on one line, the lines joined by a space."""
    worker._proc = _Stuck(worker._proc, "(get-info :reason-unknown)", [  # type: ignore[assignment]
        '(:reason-unknown "(incomplete', '(theory arithmetic))")'])
    got = await worker.run(pose("(declare-const x Real)", "(not (= (^ 2.0 x) 3.0))"),
                           Limits(timeout_s=30))
    assert (got.verdict, got.message) == (
        Verdict.UNKNOWN, 'z3 answered unknown (:reason-unknown "(incomplete (theory '
        'arithmetic))")')


async def test_a_reply_without_exactly_one_answer_is_an_error(worker: Z3Worker) -> None:
    """`pose` lets no item ask z3 twice or not at all; should a script ever do, the result
    is ERROR, never a verdict."""
    for query, said in [("(check-sat)\n(check-sat)\n", "sat | sat"), ("(assert true)\n", "")]:
        got = await worker.run(SmtScript("s", "", query), Limits(timeout_s=30))
        assert got == CheckOutcome(Verdict.ERROR, "s",
                                   message=f"z3 did not give one answer: {said}")
    # What z3 said is quoted up to 300 characters.
    got = await worker.run(SmtScript("s", "", "(check-sat)\n" * 80), Limits(timeout_s=30))
    assert got.message == "z3 did not give one answer: " + " | ".join(["sat"] * 80)[:300]


async def test_a_worker_that_held_an_earlier_items_assertion_is_poisoned_and_killed(
        worker: Z3Worker) -> None:
    first = await worker.run(pose("", "(= 1 2)"), Limits(timeout_s=30))
    assert first.verdict is Verdict.REFUTED
    await worker._ask(f"(pop 2)\n(declare-const {LONG} Int)\n(assert (> {LONG} 0))\n"
                      "(push 1)\n(push 1)\n")
    with pytest.raises(Poisoned) as raised:
        await worker.run(pose("", "(= 1 1)"), Limits(timeout_s=30))
    assert str(raised.value) == f"((> {LONG} 0)) (:assertion-stack-levels 0)"[:300]
    async with asyncio.timeout(30):  # killed at once, not left running
        await worker._proc._proc.wait()  # type: ignore[attr-defined]


async def test_two_poisoned_workers_in_a_row_are_an_error_the_third_is_fresh(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = ProveSettings(smt_pool_size=2, scratch_dir=tmp_path, cache_size=0)
    item = Obligation("a", "smt", statement="(= 1 1)")
    async with ProveEngine(settings) as engine:
        backend = engine.backend("smt")
        pool = backend.pool  # type: ignore[attr-defined]
        async with pool.lease() as one, pool.lease() as two:
            for worker in (one, two):  # warm, then left holding an assertion
                await worker.run(pose("", "(= 1 1)"), Limits())
                await worker._ask("(pop 2)\n(assert false)\n(push 1)\n(push 1)\n")
        with caplog.at_level(logging.ERROR, logger="scillm.prove"), \
                pytest.raises(RuntimeError) as raised:
            await backend.check(item, Limits())
        assert str(raised.value) == ("two warm z3 workers in a row held an earlier item's "
                                     "assertions")
        assert [r.getMessage() for r in caplog.records] == [
            "a warm z3 held an earlier item's assertions ((false) "
            "(:assertion-stack-levels 0)); replaced"] * 2
        fresh = await backend.check(item, Limits())
        assert fresh.verdict is Verdict.PROVED


#: Replies recorded from z3 4.8.12 (`z3 -in`), as `_ask` returns them.
RECORDED = {
    "an error, then the answer": ['(error "line 7 column 16: unknown constant y")', "sat"],
    "an error spread over two lines": ['(error "line 4 column 5: unknown constant x', 'y (Int) ")',
                                       '(error "line 5 column 12: unknown constant x")'],
    "a quote in an error": ['(error "line 1 column 17: unknown constant a\\"b (Int) ")'],
    "out of memory": ['(error "out of memory")'],
    "a warning and the answer": ["WARNING: (2,70): pattern does not contain all quantified "
                                 "variables.", "unsat"],
    "two answers": ["sat", "unknown"],
    "no answer": [],
    "a blank line": ["", "unsat"],
    # SMT-LIB 2.6 doubles a quote inside a string (newer z3 prints errors so).
    "a doubled quote in an error": ['(error "line 3 column 4: unknown constant ""q"" here")'],
}


def test_a_reply_is_split_into_errors_answers_and_the_rest() -> None:
    reply = _Reply(RECORDED["an error, then the answer"], {7: 3})
    assert reply.errors == [Diagnostic("error", "unknown constant y", 3, 16, 3, 17)]
    assert (reply.answers, reply.answer()) == (["sat"], None)
    assert reply.other == RECORDED["an error, then the answer"][:1]
    spread = _Reply(RECORDED["an error spread over two lines"], {4: 2})
    assert spread.errors == [Diagnostic("error", "unknown constant x\ny (Int) ", 2, 5, 2, 6),
                             Diagnostic("error", "unknown constant x")]
    assert spread.answer() is None
    assert _Reply(RECORDED["a quote in an error"], {}).errors == [
        Diagnostic("error", 'unknown constant a\\"b (Int) ')]
    assert _Reply(RECORDED["out of memory"], {1: 1}).errors == [
        Diagnostic("error", "out of memory")]
    warned = _Reply(RECORDED["a warning and the answer"], {})
    assert (warned.errors, warned.answers, warned.answer()) == ([], ["unsat"], "unsat")
    assert warned.other == [RECORDED["a warning and the answer"][0]]
    assert _Reply(RECORDED["two answers"], {}).answer() is None
    assert _Reply(RECORDED["no answer"], {}).answer() is None
    blank = _Reply(RECORDED["a blank line"], {})
    assert (blank.other, blank.answer()) == ([], "unsat")
    assert _Reply(RECORDED["a doubled quote in an error"], {3: 1}).errors == [
        Diagnostic("error", 'unknown constant "q" here', 1, 4, 1, 5)]
