"""Value types of the Prove domain: obligations in, verdicts and diagnostics out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Attempt",
    "BackendInfo",
    "BatchSummary",
    "CheckOutcome",
    "Diagnostic",
    "FormalizeOptions",
    "ItemResult",
    "Limits",
    "Obligation",
    "SolverVerdict",
    "Verdict",
]


class Verdict(StrEnum):
    """What a backend concluded about one obligation."""

    #: The statement holds: the prover accepted a proof of exactly the stated theorem,
    #: resting on no axiom, admit or sorry (see the README for what each backend checks).
    PROVED = "proved"
    #: The statement is false: the prover found a counterexample (SMT model).
    REFUTED = "refuted"
    #: The source did not check (syntax/type/tactic error, axiom used, sorry, ...).
    FAILED = "failed"
    #: The prover gave up without an answer (SMT `unknown`).
    UNKNOWN = "unknown"
    #: The wall-clock limit elapsed; the prover was killed.
    TIMEOUT = "timeout"
    #: The prover crashed or ran out of memory; the prover was killed.
    ERROR = "error"


@dataclass(frozen=True)
class Diagnostic:
    """One message from a prover, located in the checked source (`ItemResult.source`).

    Lines are 1-based and columns 0-based character offsets (the Lean and LSP
    convention); any position is None when the prover gave none.
    """

    severity: str  # "error" | "warning" | "info"
    message: str
    line: int | None = None
    column: int | None = None
    end_line: int | None = None
    end_column: int | None = None


@dataclass(frozen=True)
class Limits:
    """Per-item resource limits, enforced by killing the prover."""

    #: Wall-clock seconds the prover may spend on the item; past it -> TIMEOUT.
    timeout_s: float = 10.0
    #: Address-space limit of the prover process, MiB (RLIMIT_AS); past it -> ERROR.
    memory_mb: int = 2048


@dataclass(frozen=True)
class Obligation:
    """One item of a batch.

    `statement` is backend text: an SMT-LIB2 goal term (or script), a Coq
    `Theorem name : ... .`, a Lean `theorem name : ... :=`. `proof` completes it (Coq,
    Lean; ignored by `smt`). With `statement` and `proof` empty the item is formalised
    from `requirement_text` by a model first (see `FormalizeOptions`). A full Coq or
    Lean source may also be given as `proof` alone.
    """

    item_id: str
    backend: str
    requirement_text: str = ""
    statement: str = ""
    proof: str = ""
    #: Backend text placed before the statement (declarations, assertions, definitions).
    preamble: str = ""
    #: Modules to import: `Require Import X.` (Coq), `import X` (Lean); not for smt.
    imports: tuple[str, ...] = ()
    #: Per-item limits; None takes the batch defaults.
    limits: Limits | None = None
    #: The SMT solver of an `smt` item: "z3", "cvc5" or "both" (a cross-check, see
    #: `_crosscheck`); "" is z3. Only `smt` items may set it.
    smt_solver: str = ""

    @property
    def needs_formalization(self) -> bool:
        """True when there is no formal text, only a requirement."""
        return not self.statement.strip() and not self.proof.strip()


@dataclass(frozen=True)
class SolverVerdict:
    """What one SMT solver concluded about an item (`CheckOutcome.solvers`)."""

    #: "z3" or "cvc5".
    solver: str
    verdict: Verdict
    #: The solver's version, as its `--version` says it.
    version: str = ""
    message: str = ""
    #: Its model, when REFUTED.
    counterexample: str | None = None


@dataclass(frozen=True)
class CheckOutcome:
    """What one backend check produced (before batch bookkeeping)."""

    verdict: Verdict
    source: str
    diagnostics: tuple[Diagnostic, ...] = ()
    counterexample: str | None = None
    message: str = ""
    #: PROVED only because the assumptions are inconsistent (see `ItemResult.vacuous`).
    vacuous: bool = False
    #: Whether a prover read `source`; False when the checker refused it first (a
    #: character no prover reads, a command the backend refuses, a malformed SMT item).
    prover_ran: bool = True
    #: An `smt` item a solver read: each solver's own verdict, from which `verdict` was
    #: decided (two with the "both" cross-check).
    solvers: tuple[SolverVerdict, ...] = ()


@dataclass(frozen=True)
class Attempt:
    """One generate -> check round of formalisation."""

    index: int
    source: str
    verdict: Verdict
    diagnostics: tuple[Diagnostic, ...]
    prompt_tokens: int
    completion_tokens: int
    duration_s: float
    message: str = ""


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one item of a batch."""

    item_id: str
    backend: str
    verdict: Verdict
    #: The exact text checked; diagnostics are located in it.
    source: str
    diagnostics: tuple[Diagnostic, ...] = ()
    #: SMT model (as z3 printed it) when REFUTED.
    counterexample: str | None = None
    #: One line for humans ("memory limit of 512 MiB exceeded", "uses axiom cheat").
    message: str = ""
    duration_s: float = 0.0
    cached: bool = False
    #: Formalisation rounds, empty when the item came with formal text.
    attempts: tuple[Attempt, ...] = ()
    #: PROVED only because the assumptions (an SMT preamble) are inconsistent: the goal
    #: follows from anything. Such a result also carries a "vacuous:" warning diagnostic.
    vacuous: bool = False
    #: An `smt` item: the solver choice that checked it ("z3", "cvc5", "both").
    smt_solver: str = ""
    #: An `smt` item a solver read: each solver's own verdict (`CheckOutcome.solvers`).
    solvers: tuple[SolverVerdict, ...] = ()


@dataclass(frozen=True)
class BatchSummary:
    """Totals of a finished (or cancelled) batch."""

    total: int
    completed: int
    counts: Mapping[Verdict, int]
    cache_hits: int
    #: PROVED results that are vacuous.
    vacuous: int
    prompt_tokens: int
    completion_tokens: int
    duration_s: float


@dataclass(frozen=True)
class BackendInfo:
    """Whether a backend can run here, and which prover version it uses."""

    name: str
    available: bool
    version: str = ""
    reason: str = ""
    #: The `smt` backend: each solver it can run ("z3", "cvc5"), as a BackendInfo of its
    #: own; the backend is available when z3 is.
    solvers: tuple[BackendInfo, ...] = ()


@dataclass(frozen=True)
class FormalizeOptions:
    """How items with only `requirement_text` are formalised by a model."""

    model: str
    temperature: float | None = None
    #: Generate -> check rounds per item, the first one included.
    max_attempts: int = 3
    #: Extra instructions appended to the backend's system prompt.
    instructions: str = ""
