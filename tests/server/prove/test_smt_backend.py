"""The smt backend on the real z3."""

from __future__ import annotations

import time

from scillm.server.prove import Limits, Obligation, ProveEngine, Verdict

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


async def test_script_mode_uses_last_check_sat(engine: ProveEngine) -> None:
    proved = await engine.check(smt("a", "(assert (< x 0))"))
    assert proved.verdict is Verdict.PROVED
    refuted = await engine.check(smt("b", "(assert (> x 5))\n(check-sat)"))
    assert refuted.verdict is Verdict.REFUTED


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


async def test_stateful_script_is_isolated(engine: ProveEngine) -> None:
    result = await engine.check(smt("a", "(set-option :smt.arith.solver 2)\n(assert (< x 0))"))
    assert result.verdict is Verdict.PROVED
    after = await engine.check(smt("b", "(> (+ x 2) x)"))
    assert after.verdict is Verdict.PROVED


async def test_timeout_kills_and_replaces_worker(engine: ProveEngine) -> None:
    started = time.monotonic()
    result = await engine.check(smt("hard", HARD, ""), limits=Limits(timeout_s=0.5))
    assert result.verdict is Verdict.TIMEOUT
    assert time.monotonic() - started < 3
    again = await engine.check(smt("a", "(> (+ x 1) x)"))
    assert again.verdict is Verdict.PROVED


async def test_exit_is_refused(engine: ProveEngine) -> None:
    result = await engine.check(smt("a", "(assert (< x 0))\n(exit)"))
    assert result.verdict is Verdict.FAILED
    assert "(exit)" in result.message
