"""Prove: check formal obligations with Z3 (and cvc5), Coq and Lean 4, in warm worker pools.

Domain code only: nothing here knows gRPC or HTTP. The servicer builds one engine::

    engine = ProveEngine(ProveSettings(coq_pool_size=2))
    await engine.start()                      # probes backends, optional prewarm
    engine.backends()                         # [BackendInfo(name, available, version, reason)]
    engine.readiness()                        # {"smt": True, ..., "cvc5": True}: health parts
    run = engine.run_batch(items, defaults=Limits(timeout_s=10, memory_mb=2048),
                           formalize=FormalizeOptions(model="m"), complete=complete)
    async with run:                           # leaving the block kills unfinished provers
        async for result in run:              # ItemResult, in completion order
            ...
    run.summary                               # BatchSummary
    await engine.close()                      # kills every prover process

`run_batch` validates eagerly and raises the typed errors of `errors` (each naming its
item); prover outcomes are verdicts (`Verdict`), never exceptions. Backends:

* `smt` – Z3 (`z3 -in`, warm): a preamble of declarations, definitions and assertions and
  one goal term (see `_smtlib`); unsat of the negated goal proves it, sat gives a
  counterexample model; a proof that holds only because the preamble is inconsistent is
  marked `vacuous`. An item's `smt_solver` may pick cvc5 instead (`_cvc5`, warm too, same
  protocol, see `_solver`), or both: a cross-check, PROVED only when both prove it
  (`_crosscheck`); each solver's own verdict is in `ItemResult.solvers`.
* `coq` – Coq (`coqtop`, warm; `coqc` to locate errors): PROVED only when the file loads
  whole, every declaration is closed under the global context, and the stated theorem has
  the stated type (see `_coq`, `_coqworker`).
* `lean4` – `lean --json` per item: no error or `sorry`, only Lean's foundational axioms
  in every declaration's `#print axioms`, the stated type checked (see `_lean`).

Every prover runs in the jail (`scillm.server.jail`: bubblewrap, an unprivileged uid,
rlimits), killed at its wall-clock limit (TIMEOUT), on cancellation, or with the engine;
a killed warm worker is replaced.
"""

from __future__ import annotations

from ._backend import Backend
from ._batch import BatchRun
from ._cache import MemoryCache, VerdictCache, cache_key
from ._engine import ProveEngine
from ._formalize import Complete, extract_code
from ._lean import parse_lean_messages
from ._settings import ProveSettings
from ._types import (
    Attempt,
    BackendInfo,
    BatchSummary,
    CheckOutcome,
    Diagnostic,
    FormalizeOptions,
    ItemResult,
    Limits,
    Obligation,
    SolverVerdict,
    Verdict,
)
from .errors import (
    BackendUnavailable,
    BatchTooLarge,
    EngineClosed,
    FormalizeUnavailable,
    InvalidBatch,
    InvalidObligation,
    ProveError,
    SolverUnavailable,
    SourceTooLarge,
)

__all__ = [
    "Attempt",
    "Backend",
    "BackendInfo",
    "BackendUnavailable",
    "BatchRun",
    "BatchSummary",
    "BatchTooLarge",
    "CheckOutcome",
    "Complete",
    "Diagnostic",
    "EngineClosed",
    "FormalizeOptions",
    "FormalizeUnavailable",
    "InvalidBatch",
    "InvalidObligation",
    "ItemResult",
    "Limits",
    "MemoryCache",
    "Obligation",
    "ProveEngine",
    "ProveError",
    "ProveSettings",
    "SolverUnavailable",
    "SolverVerdict",
    "SourceTooLarge",
    "Verdict",
    "VerdictCache",
    "cache_key",
    "extract_code",
    "parse_lean_messages",
]
