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


#: Names z3 defines past SMT-LIB's core that the checker once let a preamble take (a
#: review's `pi`, `euler`, `sin`...), and one it does not define.
_Z3_OWN = ("pi euler sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh root-obj "
           "^0 /0 div0 rem0 mod0 setminus bit2bool bvsdiv0 bvudiv0 bvsrem0 bvurem0 bvsmod0 "
           "linear-order partial-order piecewise-linear-order tree-order "
           "transitive-closure as-array const map default complement").split()


def _z3_defines(name: str) -> bool:
    """Whether the real z3 knows `name` as a constant or a function of one or two
    arguments (anything but `unknown constant` is its own)."""
    import shutil
    import subprocess
    z3 = shutil.which("z3")
    assert z3 is not None
    for use in (name, f"({name} 0.0)", f"({name} 1 1)"):
        said = subprocess.run([z3, "-in"], input=f"(assert (= {use} {use}))\n",
                              capture_output=True, text=True, timeout=30).stdout
        if "unknown constant" not in said:
            return True
    return False


def test_every_name_z3_defines_is_refused_as_the_solvers() -> None:
    from scillm.server.prove._smtlib import is_builtin

    assert [n for n in _Z3_OWN if not _z3_defines(n)] == []  # the list is z3's own
    assert [n for n in _Z3_OWN if not is_builtin(n)] == []
    assert not _z3_defines("not_a_z3_name") and not is_builtin("not_a_z3_name")
