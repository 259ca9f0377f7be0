"""The cross-check's rule (`_crosscheck`): one verdict from z3's and cvc5's, on outcomes
as the workers give them. No pair but (PROVED, PROVED) is PROVED."""

from __future__ import annotations

import itertools

import pytest

from scillm.server.prove import CheckOutcome, Diagnostic, SolverVerdict, Verdict
from scillm.server.prove._crosscheck import SOLVER_CHOICES, cross_check, single, solvers_of

SOURCE = "(declare-const x Int)\n(assert (not (> x 1)))\n(check-sat)\n"
VACUOUS = Diagnostic("warning", "vacuous: the preamble's assumptions are inconsistent (unsat "
                     "without the goal), so every goal follows from them", 1, 0, 1, 21)


def _outcome(verdict: Verdict, message: str = "", *diagnostics: Diagnostic,
             model: str | None = None, vacuous: bool = False) -> CheckOutcome:
    return CheckOutcome(verdict, SOURCE, diagnostics, model, message, vacuous)


PROVED = _outcome(Verdict.PROVED, "negated goal is unsat")
REFUTED_Z3 = _outcome(Verdict.REFUTED, "negated goal is sat: counterexample found",
                      model="(\n  (define-fun x () Int\n    0)\n)")
REFUTED_CVC5 = _outcome(Verdict.REFUTED, "negated goal is sat: counterexample found",
                        model="(\n(define-fun x () Int 0)\n)")
EACH = {
    Verdict.PROVED: PROVED,
    Verdict.REFUTED: REFUTED_Z3,
    Verdict.FAILED: _outcome(Verdict.FAILED, "Symbol y is not declared.",
                             Diagnostic("error", "Symbol y is not declared.", 2, 16, 2, 17)),
    Verdict.UNKNOWN: _outcome(Verdict.UNKNOWN, "cvc5 answered unknown (:reason-unknown "
                              "incomplete)"),
    Verdict.TIMEOUT: _outcome(Verdict.TIMEOUT, "cvc5 killed after 1 s"),
    Verdict.ERROR: _outcome(Verdict.ERROR, "cvc5 exited (memory limit 80 MiB?): "),
}


def _both(z3: CheckOutcome, cvc5: CheckOutcome) -> CheckOutcome:
    return cross_check(("z3", z3, "Z3 version 4.8.12 - 64 bit"),
                       ("cvc5", cvc5, "This is cvc5 version 1.0.3"))


def test_the_choices_and_the_solvers_they_run() -> None:
    assert {c: solvers_of(c) for c in SOLVER_CHOICES} == {
        "z3": ("z3",), "cvc5": ("cvc5",), "both": ("z3", "cvc5")}
    assert solvers_of("") == ("z3",)  # no choice is z3, as before cvc5 came
    with pytest.raises(KeyError):
        solvers_of("yices")


def test_one_solver_keeps_its_outcome_and_names_itself() -> None:
    got = single("cvc5", REFUTED_CVC5, "This is cvc5 version 1.0.3")
    assert got.verdict is Verdict.REFUTED and got.counterexample == REFUTED_CVC5.counterexample
    assert got.solvers == (SolverVerdict("cvc5", Verdict.REFUTED, "This is cvc5 version 1.0.3",
                                         REFUTED_CVC5.message, REFUTED_CVC5.counterexample),)


def test_both_proving_is_proved_and_both_refuting_is_refuted_with_z3s_model() -> None:
    proved = _both(PROVED, PROVED)
    assert (proved.verdict, proved.vacuous, proved.diagnostics) == (Verdict.PROVED, False, ())
    assert proved.message == "z3 and cvc5 agree: negated goal is unsat"
    assert [(s.solver, s.verdict) for s in proved.solvers] == [
        ("z3", Verdict.PROVED), ("cvc5", Verdict.PROVED)]
    refuted = _both(REFUTED_Z3, REFUTED_CVC5)
    assert refuted.verdict is Verdict.REFUTED
    assert refuted.counterexample == REFUTED_Z3.counterexample
    assert [s.counterexample for s in refuted.solvers] == [REFUTED_Z3.counterexample,
                                                           REFUTED_CVC5.counterexample]


def test_a_proof_either_solver_finds_vacuous_is_vacuous() -> None:
    vacuous = _outcome(Verdict.PROVED, "negated goal is unsat, but vacuously", VACUOUS,
                       vacuous=True)
    both = _both(vacuous, vacuous)
    assert both.vacuous and both.diagnostics == (VACUOUS,)  # said once
    for z3, cvc5 in ((vacuous, PROVED), (PROVED, vacuous)):
        one = _both(z3, cvc5)
        assert one.verdict is Verdict.PROVED and one.vacuous
        assert one.diagnostics[0] == VACUOUS
        assert one.diagnostics[1].severity == "warning"
        assert one.diagnostics[1].message.startswith("solvers disagree: ")


@pytest.mark.parametrize(("z3", "cvc5"), [(Verdict.PROVED, Verdict.REFUTED),
                                          (Verdict.REFUTED, Verdict.PROVED)])
def test_one_proving_what_the_other_refutes_is_an_error_naming_both_answers(
        z3: Verdict, cvc5: Verdict) -> None:
    got = _both(EACH[z3], EACH[cvc5])
    assert got.verdict is Verdict.ERROR and not got.vacuous and got.counterexample is None
    (d,) = got.diagnostics
    assert d.severity == "error" and d.message.startswith("solvers disagree: z3 answered ")
    said = {Verdict.PROVED: "unsat (PROVED)", Verdict.REFUTED: "sat (REFUTED)"}
    assert f"z3 answered {said[z3]}" in d.message and f"cvc5 answered {said[cvc5]}" in d.message
    assert got.message.startswith("z3 and cvc5 disagree, so neither is trusted: ")
    assert [(s.solver, s.verdict) for s in got.solvers] == [("z3", z3), ("cvc5", cvc5)]


def test_every_pair_is_proved_only_when_both_prove() -> None:
    for z3, cvc5 in itertools.product(EACH, repeat=2):
        got = _both(EACH[z3], EACH[cvc5])
        assert (got.verdict is Verdict.PROVED) == (z3 is cvc5 is Verdict.PROVED), (z3, cvc5)
        assert (got.verdict is Verdict.REFUTED) == (z3 is cvc5 is Verdict.REFUTED), (z3, cvc5)


@pytest.mark.parametrize(("z3", "cvc5", "verdict"), [
    (Verdict.PROVED, Verdict.FAILED, Verdict.FAILED),
    (Verdict.REFUTED, Verdict.FAILED, Verdict.FAILED),
    (Verdict.FAILED, Verdict.ERROR, Verdict.FAILED),
    (Verdict.PROVED, Verdict.ERROR, Verdict.ERROR),
    (Verdict.TIMEOUT, Verdict.ERROR, Verdict.ERROR),
    (Verdict.PROVED, Verdict.TIMEOUT, Verdict.TIMEOUT),
    (Verdict.UNKNOWN, Verdict.TIMEOUT, Verdict.TIMEOUT),
    (Verdict.UNKNOWN, Verdict.PROVED, Verdict.UNKNOWN),
    (Verdict.REFUTED, Verdict.UNKNOWN, Verdict.UNKNOWN),
])
def test_any_other_difference_takes_the_less_decided_verdict(
        z3: Verdict, cvc5: Verdict, verdict: Verdict) -> None:
    got = _both(EACH[z3], EACH[cvc5])
    assert got.verdict is verdict
    stands, solver = (EACH[z3], "z3") if z3 is verdict else (EACH[cvc5], "cvc5")
    assert got.message == f"{solver}: {stands.message}"
    *kept, last = got.diagnostics
    assert tuple(kept) == stands.diagnostics  # the located errors of the solver that failed
    assert last.severity == "warning" and last.message.startswith("solvers disagree: z3 ")
    assert got.counterexample is None
