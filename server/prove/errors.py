"""Errors raised by the Prove domain.

One hierarchy; servicers map each class to a canonical status code::

    ProveError                           base of everything raised on purpose
    ├── InvalidObligation(item_id, param)
    │   │                                one item of a batch is malformed (unknown
    │   │                                backend, empty or invalid text, ...)
    │   └── SourceTooLarge(item_id, size, limit)
    │                                    the item's formal text exceeds max_source_bytes
    ├── InvalidBatch(param)              the batch as a whole is malformed (empty)
    │   └── BatchTooLarge(size, limit)   more items than max_batch_items
    ├── BackendUnavailable(backend, reason)
    │   │                                the backend cannot run here (no `lean` on PATH)
    │   └── SolverUnavailable(solver, reason)
    │                                    the SMT solver an smt item asks for (`cvc5`)
    │                                    cannot run here
    ├── FormalizeUnavailable(item_id)    an item needs formalisation but no model
    │                                    (`complete`) or options were given
    └── EngineClosed                     the engine was used before start() or after close()

Prover outcomes (a false theorem, a timeout, a crashed prover) are not errors: they are
verdicts in an `ItemResult`. Any other exception escaping the domain is a bug.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "BatchTooLarge",
    "EngineClosed",
    "FormalizeUnavailable",
    "InvalidBatch",
    "InvalidObligation",
    "ProveError",
    "SolverUnavailable",
    "SourceTooLarge",
]


class ProveError(Exception):
    """Base of every error the Prove domain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidObligation(ProveError):
    """Item `item_id` is malformed; `param` names the offending field when known."""

    def __init__(self, item_id: str, message: str, *, param: str | None = None) -> None:
        super().__init__(f"item {item_id!r}: {message}")
        self.item_id = item_id
        self.param = param


class SourceTooLarge(InvalidObligation):
    """The formal text of item `item_id` is `size` bytes, more than `limit`."""

    def __init__(self, item_id: str, size: int, limit: int) -> None:
        super().__init__(item_id, f"source is {size} bytes, more than the limit of {limit}",
                         param="statement")
        self.size = size
        self.limit = limit


class InvalidBatch(ProveError):
    """The batch as a whole is malformed; `param` names the offending field when known."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class BatchTooLarge(InvalidBatch):
    """The batch holds `size` items, more than `limit`."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"batch holds {size} items, more than the limit of {limit}",
                         param="items")
        self.size = size
        self.limit = limit


class BackendUnavailable(ProveError):
    """Backend `backend` cannot run here, for `reason`."""

    def __init__(self, backend: str, reason: str, *, item_id: str | None = None) -> None:
        where = f"item {item_id!r}: " if item_id is not None else ""
        super().__init__(f"{where}backend {backend!r} is unavailable: {reason}")
        self.backend = backend
        self.reason = reason
        self.item_id = item_id


class SolverUnavailable(BackendUnavailable):
    """SMT solver `solver`, which an smt item's `smt_solver` asks for, cannot run here, for
    `reason`; the smt backend itself (z3) may well run. `param` is "smt_solver"."""

    def __init__(self, solver: str, reason: str, *, item_id: str | None = None) -> None:
        where = f"item {item_id!r}: " if item_id is not None else ""
        ProveError.__init__(self, f"{where}SMT solver {solver!r} is unavailable: {reason} "
                            f"(install it on the server, e.g. apt-get install {solver}, or "
                            "ask for smt_solver z3)")
        self.backend = "smt"
        self.reason = reason
        self.item_id = item_id
        self.solver = solver
        self.param = "smt_solver"


class FormalizeUnavailable(ProveError):
    """Item `item_id` has only requirement text but no model was configured to formalise it."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"item {item_id!r} is a natural-language requirement with no formal "
                         "statement, and no model is configured to formalize it: set "
                         "SCILLM_PROVE_MODEL on the server, or formalize.model in the request "
                         "(options.model through the HTTP door)")
        self.item_id = item_id
        self.param = "statement"


class EngineClosed(ProveError):
    """The engine was used before `start()` or after `close()`."""
