"""Checks a batch must pass before any prover runs; each failure names its item."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ._crosscheck import DEFAULT_SOLVER, SOLVER_CHOICES, solvers_of
from ._settings import ProveSettings
from ._types import BackendInfo, FormalizeOptions, Limits, Obligation
from .errors import (
    BackendUnavailable,
    BatchTooLarge,
    FormalizeUnavailable,
    InvalidBatch,
    InvalidObligation,
    SolverUnavailable,
    SourceTooLarge,
)

__all__ = ["validate_batch"]

#: Smallest memory limit accepted, MiB (provers do not start below it).
MIN_MEMORY_MB = 64


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    return None


#: The limits' fields as a ProveRequest names them, and as an `Obligation` (Python) does.
_REQUEST_FIELDS = ("limits.timeout", "limits.memory_bytes")
#: An import: a module's dotted name (Coq's `Coq.Arith.Arith`, Lean's `Mathlib.Data.Nat`).
_MODULE = re.compile(r"[^\W\d][\w']*(?:\.[^\W\d][\w']*)*")
_ITEM_FIELDS = ("limits.timeout_s", "limits.memory_mb")


def _limits_problem(limits: Limits, most: Limits,
                    fields: tuple[str, str]) -> tuple[str, str] | None:
    """What is wrong with `limits`, and the field (`fields`: its time, its memory)."""
    timeout, memory = fields
    if not limits.timeout_s > 0:
        return "timeout must be positive", timeout
    if limits.timeout_s > most.timeout_s:
        return (f"timeout of {limits.timeout_s:g} s is over this server's most, "
                f"{most.timeout_s:g} s", timeout)
    if limits.memory_mb < MIN_MEMORY_MB:
        return f"memory limit must be at least {MIN_MEMORY_MB} MiB", memory
    if limits.memory_mb > most.memory_mb:
        return (f"memory limit of {limits.memory_mb} MiB is over this server's most, "
                f"{most.memory_mb} MiB", memory)
    return None


def _check_ready(ob: Obligation, item_id: str, info: BackendInfo) -> None:
    """Raise unless every prover `ob` needs can run: its backend, or for an smt item the
    solvers its `smt_solver` picks (z3 missing is the backend missing, as ever)."""
    if ob.smt_solver and ob.backend != "smt":
        raise InvalidObligation(item_id, f"smt_solver {ob.smt_solver!r} is for smt items; "
                                f"this item's backend is {ob.backend!r}", param="smt_solver")
    if ob.smt_solver and ob.smt_solver not in SOLVER_CHOICES:
        raise InvalidObligation(item_id, f"unknown smt_solver {ob.smt_solver!r}; choose from "
                                f"{', '.join(SOLVER_CHOICES)}", param="smt_solver")
    if not info.solvers:
        if not info.available:
            raise BackendUnavailable(ob.backend, info.reason, item_id=item_id)
        return
    solvers = {s.name: s for s in info.solvers}
    for name in solvers_of(ob.smt_solver):
        solver = solvers.get(name)
        if solver is not None and solver.available:
            continue
        reason = solver.reason if solver is not None else f"{name} is not one of its solvers"
        if name == DEFAULT_SOLVER:
            raise BackendUnavailable(ob.backend, reason, item_id=item_id)
        raise SolverUnavailable(name, reason, item_id=item_id)


def validate_batch(items: Sequence[Obligation], *, settings: ProveSettings,
                   backends: Mapping[str, BackendInfo], defaults: Limits,
                   formalize: FormalizeOptions | None, can_complete: bool) -> None:
    """Raise the first problem found, as a typed error naming the item."""
    if not items:
        raise InvalidBatch("the batch is empty", param="items")
    if len(items) > settings.max_batch_items:
        raise BatchTooLarge(len(items), settings.max_batch_items)
    wrong = _limits_problem(defaults, settings.max_limits, _REQUEST_FIELDS)
    if wrong is not None:
        raise InvalidBatch(wrong[0], param=wrong[1])
    if formalize is not None and not 1 <= formalize.max_attempts <= \
            settings.max_formalize_attempts:
        raise InvalidBatch(f"formalize.max_attempts must be 1..{settings.max_formalize_attempts}"
                           f", not {formalize.max_attempts}", param="formalize.max_attempts")
    if formalize is not None and formalize.temperature is not None and \
            not 0.0 <= formalize.temperature <= 2.0:  # `not <=`: NaN too
        raise InvalidBatch(f"formalize.temperature must be between 0 and 2, not "
                           f"{formalize.temperature}", param="formalize.temperature")
    seen: set[str] = set()
    for index, ob in enumerate(items):
        item_id = ob.item_id or f"#{index}"
        if not ob.item_id:
            raise InvalidObligation(item_id, "item_id is empty", param="item_id")
        if ob.item_id in seen:
            raise InvalidObligation(item_id, "item_id appears twice in the batch",
                                    param="item_id")
        seen.add(ob.item_id)
        info = backends.get(ob.backend)
        if info is None:
            raise InvalidObligation(item_id, f"unknown backend {ob.backend!r}; known: "
                                    f"{', '.join(sorted(backends))}", param="backend")
        _check_ready(ob, item_id, info)
        fields = {"requirement_text": ob.requirement_text, "statement": ob.statement,
                  "proof": ob.proof, "preamble": ob.preamble, **{
                      f"imports[{i}]": name for i, name in enumerate(ob.imports)}}
        for param, text in fields.items():
            text_problem = _text_problem(text)
            if text_problem is not None:
                raise InvalidObligation(item_id, f"{param} {text_problem}", param=param)
        for i, name in enumerate(ob.imports):
            # A module's dotted name and nothing else: the import is written into the
            # checked file, and "Arith. Notation False := True" made False mean True.
            if not _MODULE.fullmatch(name):
                raise InvalidObligation(item_id, f"imports[{i}] {name[:80]!r} is not a module "
                                        "name (dotted identifiers, such as Coq.Arith.Arith)",
                                        param=f"imports[{i}]")
        if ob.backend == "smt" and ob.imports:
            raise InvalidObligation(item_id, "the smt backend takes no imports",
                                    param="imports")
        size = sum(len(t.encode()) for t in fields.values())
        if size > settings.max_source_bytes:
            raise SourceTooLarge(item_id, size, settings.max_source_bytes)
        wrong = (_limits_problem(ob.limits, settings.max_limits, _ITEM_FIELDS)
                 if ob.limits else None)
        if wrong is not None:
            raise InvalidObligation(item_id, wrong[0], param=wrong[1])
        if ob.needs_formalization:
            if not ob.requirement_text.strip():
                raise InvalidObligation(item_id, "nothing to check: statement, proof and "
                                        "requirement_text are all empty", param="statement")
            if formalize is None or not can_complete:
                raise FormalizeUnavailable(item_id)
