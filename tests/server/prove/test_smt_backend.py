"""The smt backend on the real z3."""

from __future__ import annotations

import time
from pathlib import Path

from scillm.server.prove import Limits, Obligation, ProveEngine, ProveSettings, Verdict

PRE = "(declare-const x Int)\n(assert (> x 0))"
#: Nonlinear and hard for z3's incremental solver: runs far past any test timeout.
HARD = ("(forall ((a Int) (b Int) (c Int)) (=> (and (> a 0) (> b 0) (> c 0)) "
        "(not (= (+ (* a a a) (* b b b)) (* c c c)))))")


def smt(item_id: str, statement: str, preamble: str = PRE, **kw: object) -> Obligation:
    return Obligation(item_id, "smt", statement=statement, preamble=preamble, **kw)  # type: ignore[arg-type]


async def test_true_goal_is_proved(engine: ProveEngine) -> None:
    result = await engine.check(smt("a", "(> (+ x 1) x)"))
    assert result.verdict is Verdict.PROVED
    assert result.source.endswith("(assert (not (> (+ x 1) x)))\n(check-sat)\n")


async def test_false_goal_is_refuted_with_model(engine: ProveEngine) -> None:
    result = await engine.check(smt("a", "(> x 1)"))
    assert result.verdict is Verdict.REFUTED
    assert result.counterexample is not None
    assert "define-fun x () Int" in result.counterexample


async def test_a_script_as_statement_is_failed_not_run(engine: ProveEngine) -> None:
    """A refutation script (the old "script mode") is not a goal term: FAILED, located,
    and nothing of it reaches z3 (an `(assert false)` would otherwise prove anything)."""
    for statement in ("(assert (< x 0))", "(assert false)\n(check-sat)"):
        result = await engine.check(smt("a", statement))
        assert result.verdict is Verdict.FAILED
        (d,) = result.diagnostics
        assert "one goal term" in d.message and (d.line, d.column) == (3, 13)
        # The source reported is the one the diagnostic is located in: there, the command.
        assert result.source.splitlines()[2][13:].startswith("(assert ")
        assert result.source == PRE + f"\n(assert (not {statement}))\n(check-sat)\n"


async def test_a_vacuous_proof_is_flagged(engine: ProveEngine) -> None:
    result = await engine.check(smt("v", "(> x 5)", "(declare-const x Int)\n(assert false)"))
    assert result.verdict is Verdict.PROVED and result.vacuous
    (d,) = result.diagnostics
    assert d.severity == "warning" and d.message.startswith("vacuous:")
    assert (d.line, d.column, d.end_line) == (1, 0, 2)
    honest = await engine.check(smt("h", "(> (+ x 1) x)"))
    assert honest.verdict is Verdict.PROVED and not honest.vacuous and not honest.diagnostics


async def test_unknown_constant_is_located(engine: ProveEngine) -> None:
    result = await engine.check(smt("a", "(> y 1)"))
    assert result.verdict is Verdict.FAILED
    (d,) = result.diagnostics
    assert "unknown constant y" in d.message
    assert (d.line, d.column) == (3, 16)
    assert result.source.splitlines()[2][16] == "y"


async def test_unbalanced_text_never_reaches_z3(engine: ProveEngine) -> None:
    result = await engine.check(smt("a", "(> (+ x 1) x"))
    assert result.verdict is Verdict.FAILED
    assert result.diagnostics[0].message.startswith("unbalanced")
    assert result.diagnostics[0].line == 3


async def test_declarations_do_not_leak_between_items(engine: ProveEngine) -> None:
    first = await engine.check(smt("a", "(> z 0)", "(declare-const z Int)\n(assert (> z 3))"))
    assert first.verdict is Verdict.PROVED
    for i in range(4):  # whichever worker takes it, z is gone
        later = await engine.check(smt(f"b{i}", f"(> z {i})", ""))
        assert later.verdict is Verdict.FAILED


async def test_every_outcome_leaves_a_clean_solver(engine: ProveEngine) -> None:
    """Refuted (a model asked), proved with and without a preamble, unknown, failed:
    whatever the last item left open, the next one starts from nothing."""
    kinds = [("(> x 1)", PRE), ("(> (+ x 1) x)", PRE), ("(= 1 1)", ""),
             ("(> y 0)", PRE), ("(exists ((n Int)) (= (* n n) 2))", "")]
    for round_ in range(3):
        for i, (statement, preamble) in enumerate(kinds):
            ob = smt(f"k{round_}-{i}", statement, preamble)
            await engine.check(ob)
        fresh = await engine.check(smt(f"z{round_}", "(> z 0)", "(declare-const z Int)"))
        assert fresh.verdict is Verdict.REFUTED, fresh.message
        gone = await engine.check(smt(f"g{round_}", "(> x 0)", ""))
        assert gone.verdict is Verdict.FAILED and "unknown constant x" in gone.message


async def test_timeout_kills_and_replaces_worker(engine: ProveEngine) -> None:
    started = time.monotonic()
    result = await engine.check(smt("hard", HARD, ""), limits=Limits(timeout_s=0.5))
    assert result.verdict is Verdict.TIMEOUT
    assert time.monotonic() - started < 3
    again = await engine.check(smt("a", "(> (+ x 1) x)"))
    assert again.verdict is Verdict.PROVED


async def test_exit_is_refused(engine: ProveEngine) -> None:
    result = await engine.check(smt("a", "(> x 0)", PRE + "\n(exit)"))
    assert result.verdict is Verdict.FAILED
    assert "(exit ...) is not allowed in the preamble" in result.message
    after = await engine.check(smt("b", "(> (+ x 2) x)"))
    assert after.verdict is Verdict.PROVED


async def test_a_solver_that_kept_an_earlier_items_assertion_is_replaced(
        tmp_path: Path) -> None:
    """Should any text ever slip an assertion past its scope, the next item does not run on
    that solver: it finds the solver unclean, drops it, and runs on a fresh one."""
    settings = ProveSettings(smt_pool_size=1, scratch_dir=tmp_path, cache_size=0)
    async with ProveEngine(settings) as engine:
        assert (await engine.check(smt("a", "(> (+ x 1) x)"))).verdict is Verdict.PROVED
        backend = engine.backend("smt")
        async with backend.pool.lease() as worker:  # type: ignore[attr-defined]
            await worker._ask("(pop 2)\n(assert false)\n(push 1)\n(push 1)\n")
        started = backend.pool.started  # type: ignore[attr-defined]
        result = await engine.check(smt("b", "(= 1 2)", ""))
        assert result.verdict is Verdict.REFUTED, result
        assert backend.pool.started == started + 1  # type: ignore[attr-defined]


async def test_z3_out_of_memory_is_an_error_and_an_item_naming_it_is_not(
        engine: ProveEngine) -> None:
    """z3 out of memory prints `(error "out of memory")` and exits: ERROR. An item whose own
    text puts those words in an error message is FAILED like any other."""
    hungry = smt("m", '(= s "a")', "(declare-const s String)\n(assert (= (str.len s) 100000000))")
    result = await engine.check(hungry, limits=Limits(timeout_s=60, memory_mb=80))
    assert (result.verdict, result.message) == (
        Verdict.ERROR, 'z3 exited (memory limit 80 MiB?): (error "out of memory")\n')
    named = await engine.check(smt("n", "(> |out of memory| 0)", ""))
    assert (named.verdict, named.message) == (Verdict.FAILED, "unknown constant out of memory")


async def test_a_control_character_in_a_callers_item_is_named_where_it_is(
        engine: ProveEngine) -> None:
    """z3 answered "unexpected character" about each C0 control character but tab, LF
    and CR, and DEL (each checked with the real z3), of a character most displays do not
    show, and read on: what it answered about the rest is no verdict. The item is FAILED
    naming each one and where it is in the checked source, before z3 runs; in a comment
    (where z3 reads it, and the item was PROVED) too."""
    result = await engine.check(smt("c", "(> (+ x 1)\x1b x)",
                                    preamble="(declare-const x Int)\n; page\x0c two\x7f"))
    assert result.verdict is Verdict.FAILED, result
    assert [d.message.split(",")[0] for d in result.diagnostics] == [
        "the control character U+000C", "the control character U+007F",
        "the control character U+001B"]
    lines = result.source.split("\n")  # (splitlines breaks at U+000C)
    for d, char in zip(result.diagnostics, "\x0c\x7f\x1b", strict=True):
        assert d.line is not None and d.column is not None
        assert lines[d.line - 1][d.column] == char, (d, lines)
        assert (d.end_line, d.end_column) == (d.line, d.column + 1)
    assert result.message == ("the item holds the control character U+000C on line 2, "
                              "column 7, which the provers cannot read"), result.message
