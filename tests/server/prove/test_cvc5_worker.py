"""How cvc5's replies become an outcome: `Cvc5Worker` on the real cvc5 (Debian 12's 1.0.3,
which scripts/install brings), in the jail, one item after another on a warm worker.

As for z3 (test_smt_worker.py), each item after the first also shows that the last item's
scopes were popped and the solver found clean, and that cvc5's stream lines (counted from
0) are mapped back to the item's own lines. cvc5 stops at the first error it reads: the
item is FAILED with it, and the worker is dead (reaped) so that the pool starts another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from scillm.server.jail import Jail, JailSettings
from scillm.server.prove import CheckOutcome, Diagnostic, Limits, Verdict
from scillm.server.prove._cvc5 import Cvc5Worker, cvc5_error
from scillm.server.prove._smtlib import pose
from scillm.server.prove._solver import Exited, Poisoned

#: A goal cvc5 1.0.3 cannot read within 64 MiB (it runs out of memory in about a second).
HUNGRY = "(= (str.len (str.++ " + " ".join(['"abcdefghij"'] * 20000) + ")) 3)"
VACUOUS = ("vacuous: the preamble's assumptions are inconsistent (unsat without the goal), "
           "so every goal follows from them")


@pytest.fixture
async def jail() -> AsyncIterator[Jail]:
    jail = await Jail.probe(JailSettings())
    yield jail
    jail.release()


@pytest.fixture
async def worker(jail: Jail) -> AsyncIterator[Cvc5Worker]:
    cvc5 = await Cvc5Worker.start("cvc5", 512, jail)
    yield cvc5
    await cvc5.kill()


def _item(verdict: Verdict, preamble: str, statement: str, *diagnostics: Diagnostic,
          message: str, counterexample: str | None = None,
          vacuous: bool = False) -> tuple[str, str, CheckOutcome]:
    return preamble, statement, CheckOutcome(verdict, pose(preamble, statement).source,
                                             diagnostics, counterexample, message, vacuous)


#: Each item with exactly the outcome cvc5 1.0.3's replies give it.
ITEMS = [
    _item(Verdict.PROVED, "", "(= 1 1)", message="negated goal is unsat"),
    _item(Verdict.PROVED, "(declare-const x Int)\n(assert (> x 0))", "(> (+ x 1) x)",
          message="negated goal is unsat; the assumptions are consistent"),
    _item(Verdict.REFUTED, "(declare-const x Int)\n(assert (> x 0))", "(> x 1)",
          message="negated goal is sat: counterexample found",
          counterexample="(\n(define-fun x () Int 1)\n)"),
    _item(Verdict.PROVED, "(declare-const x Int)\n(assert false) ; X", "(> x 5)",
          Diagnostic("warning", VACUOUS, 1, 0, 2, 18),
          message="negated goal is unsat, but vacuously: the assumptions are inconsistent",
          vacuous=True),
    _item(Verdict.FAILED, "(declare-const x Int)\n(assert (> q 0))", "(> x 0)",
          Diagnostic("error", "Symbol q is not declared.", 2, 11, 2, 12),
          message="Symbol q is not declared."),
    _item(Verdict.UNKNOWN, "(declare-fun f (Int) Int)\n(assert (forall ((x Int)) (> (f x) x)))",
          "(> (f 1) 5)", message="cvc5 answered unknown (:reason-unknown incomplete)"),
    _item(Verdict.FAILED, "(declare-const x Int)", "(>\n x\n y)",
          Diagnostic("error", "Symbol y is not declared.", 4, 1, 4, 2),
          message="Symbol y is not declared."),
    _item(Verdict.REFUTED, "(declare-const s String)", "(= (str.len s) 3)",
          message="negated goal is sat: counterexample found",
          counterexample='(\n(define-fun s () String "")\n)'),
    # cvc5 refuses to redefine a theory symbol itself (z3 lets it shadow the built-in; the
    # checker refuses such an item before any solver runs, `_smtlib`).
    _item(Verdict.FAILED, "(define-fun not ((b Bool)) Bool b)", "false",
          Diagnostic("error", "Symbol `not' is shadowing a theory function symbol",
                     1, 14, 1, 15),
          message="Symbol `not' is shadowing a theory function symbol"),
    # An operator cvc5 does not support in its default mode: an error, then its exit.
    _item(Verdict.FAILED, "(declare-const s (Set Int))", "(= s (set.complement s))",
          Diagnostic("error", "Extended set operators are not supported in default mode, "
                     "try --sets-ext."),
          message="Extended set operators are not supported in default mode, try --sets-ext."),
    _item(Verdict.PROVED, "(declare-datatypes ((D 0)) (((a) (b))))", "(distinct a b)",
          message="negated goal is unsat; the assumptions are consistent"),
]


async def test_each_reply_of_cvc5_becomes_its_outcome(jail: Jail) -> None:
    worker = await Cvc5Worker.start("cvc5", 512, jail)
    try:
        for rounds in range(2):
            for preamble, statement, expected in ITEMS[rounds:] + ITEMS[:rounds]:
                if not worker.alive:
                    worker = await Cvc5Worker.start("cvc5", 512, jail)
                got = await worker.run(pose(preamble, statement), Limits(timeout_s=30))
                assert got == expected, (preamble, statement)
                # cvc5 exits after an error it read; a worker that answered lives on.
                assert worker.alive is (got.verdict is not Verdict.FAILED), statement
    finally:
        await worker.kill()


async def test_a_declaration_does_not_outlive_its_item(worker: Cvc5Worker) -> None:
    first = await worker.run(pose("(declare-const z Int)\n(assert (> z 3))", "(> z 0)"),
                             Limits(timeout_s=30))
    assert first.verdict is Verdict.PROVED
    later = await worker.run(pose("", "(> z 0)"), Limits(timeout_s=30))
    assert (later.verdict, later.message) == (Verdict.FAILED, "Symbol z is not declared.")


async def test_a_worker_that_held_an_earlier_items_assertion_is_poisoned(
        worker: Cvc5Worker) -> None:
    first = await worker.run(pose("", "(= 1 2)"), Limits(timeout_s=30))
    assert first.verdict is Verdict.REFUTED
    await worker._ask("(pop 2)\n(assert false)\n(push 1)\n(push 1)\n")
    with pytest.raises(Poisoned) as raised:
        await worker.run(pose("", "(= 1 1)"), Limits(timeout_s=30))
    assert str(raised.value) == "( false ) (:assertion-stack-levels 0)"


async def test_cvc5_out_of_memory_is_an_exit_not_the_items_failure(
        worker: Cvc5Worker, jail: Jail) -> None:
    """cvc5 out of memory says `(error "std::bad_alloc")` and exits: not FAILED (the
    backend makes it ERROR). An item whose own text puts those words in cvc5's error is
    FAILED like any other."""
    with pytest.raises(Exited) as raised:
        await worker.run(pose("", HUNGRY), Limits(timeout_s=60, memory_mb=64))
    assert raised.value.output.strip() == '(error "std::bad_alloc")'
    assert isinstance(raised.value, EOFError)  # what the backend turns into ERROR
    named = await Cvc5Worker.start("cvc5", 512, jail)
    try:
        got = await named.run(pose("", "(> |std::bad_alloc| 0)"), Limits(timeout_s=30))
    finally:
        await named.kill()
    assert (got.verdict, got.message) == (Verdict.FAILED, "Symbol std::bad_alloc is not declared.")


def test_cvc5s_errors_are_located_in_the_items_source() -> None:
    """Recorded from cvc5 1.0.3: lines of its standard input counted from 0, columns from
    1; the message is the error's first line (the rest quotes the line read)."""
    located = cvc5_error('(error "Parse Error: <stdin>:4.19: Symbol y is not declared.\n\n'
                         '  (assert (not (> x y)))\n                    ^\n")', {5: 2})
    assert located == Diagnostic("error", "Symbol y is not declared.", 2, 18, 2, 19)
    # A stream line that is not the item's (ours), and an error without a place.
    assert cvc5_error('(error "Parse Error: <stdin>:1.3: bad")', {5: 2}) == \
        Diagnostic("error", "bad")
    assert cvc5_error('(error "std::bad_alloc")', {}) == Diagnostic("error", "std::bad_alloc")
    assert cvc5_error('(error "a ""quoted"" word")', {}) == \
        Diagnostic("error", 'a "quoted" word')
    assert cvc5_error("(error no form)", {}) == Diagnostic("error", "(error no form)")


async def test_cvc5s_dump_of_its_own_heap_is_never_passed_on(worker: Cvc5Worker) -> None:
    """cvc5 1.0.3, quoting the line it read after an unknown `|quoted symbol|` that holds a
    line break, prints tens of kilobytes of its own heap: NUL bytes, and the text of the
    items the warm worker checked before (another caller's, say). The outcome carries the
    first line of cvc5's error and nothing else."""
    secret = "tenant_a_secret_4711"
    first = await worker.run(pose(f"(declare-const {secret} Int)\n(assert (= {secret} 42))",
                                  f"(> {secret} 0)"), Limits(timeout_s=30))
    assert first.verdict is Verdict.PROVED
    got = await worker.run(pose("(declare-const x Int)", "(> |x\n(assert false)| 0)"),
                           Limits(timeout_s=30))
    assert (got.verdict, got.message) == (Verdict.FAILED, "Symbol x")
    (d,) = got.diagnostics
    assert d.message == "Symbol x"
    assert secret not in repr(got).replace(got.source, "") and "\x00" not in repr(got)
