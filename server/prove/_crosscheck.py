"""Which SMT solvers check an `smt` item, and one verdict from two solvers' (the cross-check).

An item's `smt_solver` is "z3" (the default, also for ""), "cvc5", or "both": z3 and cvc5
each check the same posed script on their own, and `cross_check` decides the item:

* the same verdict from both is the verdict: PROVED only when both prove the goal (vacuous
  when either finds the preamble inconsistent, with a warning when only one does), REFUTED
  only when both refute it with a model (the counterexample is z3's; each solver's model is
  in its `SolverVerdict`);
* PROVED from one and REFUTED from the other is ERROR: one of the two solvers is wrong, and
  the item carries an error diagnostic starting with "solvers disagree:" that names each
  solver's answer. Nothing is cached for it;
* any other pair takes the less decided verdict, in this order: FAILED (a solver could not
  read the item, or refused it), ERROR, TIMEOUT, UNKNOWN; a warning diagnostic starting
  with "solvers disagree:" names each solver's answer.

So no pair but (PROVED, PROVED) is ever PROVED: an item cannot be made PROVED by leading
one solver astray, only by convincing both.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._types import CheckOutcome, Diagnostic, SolverVerdict, Verdict

__all__ = ["DEFAULT_SOLVER", "SOLVER_CHOICES", "cross_check", "single", "solvers_of"]

DEFAULT_SOLVER = "z3"
#: Each choice of `Obligation.smt_solver`, and the solvers it runs.
SOLVER_CHOICES: dict[str, tuple[str, ...]] = {"z3": ("z3",), "cvc5": ("cvc5",),
                                              "both": ("z3", "cvc5")}
#: When the two verdicts differ (and are not PROVED against REFUTED), the first of these.
_LESS_DECIDED = (Verdict.FAILED, Verdict.ERROR, Verdict.TIMEOUT, Verdict.UNKNOWN)
#: What each verdict means that the solver answered, for the "solvers disagree:" diagnostic.
_ANSWERED = {Verdict.PROVED: "unsat (PROVED)", Verdict.REFUTED: "sat (REFUTED)",
             Verdict.UNKNOWN: "unknown (UNKNOWN)", Verdict.TIMEOUT: "no answer in time (TIMEOUT)",
             Verdict.FAILED: "an error about the item (FAILED)",
             Verdict.ERROR: "no usable answer (ERROR)"}


def solvers_of(choice: str) -> tuple[str, ...]:
    """The solvers `choice` (an `Obligation.smt_solver`, "" for the default) runs;
    KeyError for an unknown choice."""
    return SOLVER_CHOICES[choice or DEFAULT_SOLVER]


def _verdict_of(solver: str, outcome: CheckOutcome, version: str) -> SolverVerdict:
    return SolverVerdict(solver, outcome.verdict, version, outcome.message,
                         outcome.counterexample)


def _said(v: SolverVerdict) -> str:
    return f"{v.solver} answered {_ANSWERED[v.verdict]}" + (f": {v.message}" if v.message
                                                            else "")


def _union(*groups: Sequence[Diagnostic]) -> tuple[Diagnostic, ...]:
    return tuple(dict.fromkeys(d for group in groups for d in group))


def single(solver: str, outcome: CheckOutcome, version: str) -> CheckOutcome:
    """One solver's outcome, with its `SolverVerdict`."""
    return CheckOutcome(outcome.verdict, outcome.source, outcome.diagnostics,
                        outcome.counterexample, outcome.message, outcome.vacuous,
                        outcome.prover_ran, (_verdict_of(solver, outcome, version),))


def cross_check(first: tuple[str, CheckOutcome, str],
                second: tuple[str, CheckOutcome, str]) -> CheckOutcome:
    """One outcome from two solvers' outcomes on the same script (see the module); each
    argument is (solver, its outcome, its version)."""
    a, b = first[1], second[1]
    verdicts = (_verdict_of(*first), _verdict_of(*second))
    source = a.source
    both = f"{first[0]} and {second[0]}"
    if a.verdict is b.verdict:
        diagnostics = _union(a.diagnostics, b.diagnostics)
        vacuous = a.vacuous or b.vacuous
        if a.vacuous != b.vacuous:
            found, other = (first[0], second[0]) if a.vacuous else (second[0], first[0])
            diagnostics += (Diagnostic(
                "warning", f"solvers disagree: {found} found the preamble's assumptions "
                f"inconsistent, {other} did not; the proof is taken as vacuous"),)
        message = (a.message if a.message == b.message
                   else f"{first[0]}: {a.message}; {second[0]}: {b.message}")
        return CheckOutcome(a.verdict, source, diagnostics, a.counterexample,
                            f"{both} agree: {message}", vacuous, True, verdicts)
    said = f"{_said(verdicts[0])}; {_said(verdicts[1])}"
    if {a.verdict, b.verdict} == {Verdict.PROVED, Verdict.REFUTED}:
        return CheckOutcome(Verdict.ERROR, source, (Diagnostic(
            "error", f"solvers disagree: {said}"),), message=(
            f"{both} disagree, so neither is trusted: {said}"), solvers=verdicts)
    verdict = next(v for v in _LESS_DECIDED if v in (a.verdict, b.verdict))
    name, stands = (first[0], a) if a.verdict is verdict else (second[0], b)
    return CheckOutcome(verdict, source, (*stands.diagnostics, Diagnostic(
        "warning", f"solvers disagree: {said}")), message=f"{name}: {stands.message}",
        solvers=verdicts)
