"""Text z3, cvc5 and the checker's reader (`_smtlib`) must read alike, on the real solvers
in the jail, for each solver choice (z3, cvc5, both).

Two holes found by trying, each a PROVED for a false statement before the fix:

* cvc5 1.0.3 ends a `;` comment at a carriage return as well as at a line feed (its lexer:
  `COMMENT : ';' (~('\\n' | '\\r'))*`); z3 and the checker end it at the line feed only.
  So what followed a lone carriage return in a comment was a comment to the checker (and
  z3), and commands to cvc5: `(and false ;\\r)))(push 1)(assert (not (and\\n true)` reads as
  the false goal `(and false true)`, and cvc5 read `(assert (not (and false)))` closed,
  then a scope of its own holding `(assert (not (and true)))`: unsat, PROVED;
* z3 lets `(! term :named false)` bind `false` to the term, over the built-in: with
  `(assert (! (= 1 1) :named false))` the goal `false` was PROVED, its assumptions
  consistent (cvc5 refuses it: "Symbol 'false' previously declared as a variable").

Both are now refused before any solver runs, with a located diagnostic; line breaks of
\\r\\n and ordinary `:named` terms read as before.
"""

from __future__ import annotations

import pytest

from scillm.server.prove import ItemResult, Limits, Obligation, ProveEngine, Verdict

SOLVERS = ("z3", "cvc5", "both")
#: The checker (and z3) read `(and false true)`; cvc5 read two assertions, one in a scope
#: the item opened itself.
CR_GOAL = "(and false ;\r)))(push 1)(assert (not (and\n true)"


async def _check(engine: ProveEngine, statement: str, preamble: str = "", solver: str = "z3",
                 item_id: str = "i") -> ItemResult:
    return await engine.check(Obligation(item_id, "smt", statement=statement,
                                         preamble=preamble, smt_solver=solver),
                              limits=Limits(timeout_s=30))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("preamble", ["", "(declare-const x Int)"])
async def test_a_carriage_return_cannot_end_a_comment_for_one_solver_only(
        engine: ProveEngine, solver: str, preamble: str) -> None:
    result = await _check(engine, CR_GOAL, preamble, solver)
    assert result.verdict is Verdict.FAILED and result.solvers == (), result
    (d,) = result.diagnostics
    assert d.message.startswith("a carriage return inside a ';' comment, with text after it")
    assert (d.severity, d.line, d.column) == ("error", 1 + preamble.count("\n") + bool(preamble),
                                              25)
    # Lines end at line feeds only, as the solvers count them (`splitlines` would split
    # at the carriage return too).
    assert result.source.split("\n")[d.line - 1][d.column] == "\r"
    # The next item on the same warm solver is read as ever.
    after = await _check(engine, "(> (+ x 1) x)", "(declare-const x Int)", solver, "next")
    assert after.verdict is Verdict.PROVED


@pytest.mark.parametrize("solver", SOLVERS)
async def test_a_carriage_return_in_the_preamble_is_refused_too(
        engine: ProveEngine, solver: str) -> None:
    result = await _check(engine, "(> x 0)",
                          "(declare-const x Int) ; note\r(assert (> x 0))", solver)
    assert result.verdict is Verdict.FAILED and result.solvers == ()
    (d,) = result.diagnostics
    assert (d.line, d.column) == (1, 28)


@pytest.mark.parametrize("solver", SOLVERS)
async def test_crlf_line_breaks_still_read(engine: ProveEngine, solver: str) -> None:
    preamble = "; assumptions\r\n(declare-const x Int) ; x\r\n(assert (> x 0)) ;\r \r\n"
    proved = await _check(engine, "(> (+ x 1) x) ; the claim\r\n", preamble, solver)
    assert proved.verdict is Verdict.PROVED and not proved.vacuous, proved
    refuted = await _check(engine, "(> x 1)", preamble, solver, "r")
    assert refuted.verdict is Verdict.REFUTED


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize(("preamble", "statement", "at"), [
    ("(assert (! (= 1 1) :named false))", "false", (1, 26)),
    ("(assert (! true :named |false|))", "false", (1, 23)),
    ("(declare-const x Int)\n(assert (! (> x 0) :named true))", "(and (< x 0) true)", (2, 26)),
    ("", "(=> (! (= 1 1) :named false) false)", (1, 35)),
])
async def test_a_named_term_may_not_take_a_name_the_solver_defines(
        engine: ProveEngine, solver: str, preamble: str, statement: str,
        at: tuple[int, int]) -> None:
    result = await _check(engine, statement, preamble, solver)
    assert result.verdict is Verdict.FAILED and result.solvers == (), result
    (d,) = result.diagnostics
    assert "is defined by the solver" in d.message and ":named" in d.message
    assert (d.line, d.column) == at
    line = result.source.split("\n")[at[0] - 1]
    assert line[at[1]:].lstrip("|").startswith(("false", "true"))


@pytest.mark.parametrize("solver", SOLVERS)
async def test_a_named_term_of_its_own_name_still_proves(engine: ProveEngine,
                                                         solver: str) -> None:
    result = await _check(engine, "(=> (! (> x 1) :named big) (> x 0))",
                          "(declare-const x Int)\n(assert (! (>= x 0) :named nonneg))", solver)
    assert result.verdict is Verdict.PROVED and not result.vacuous, result
