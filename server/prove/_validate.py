"""Checks a batch must pass before any prover runs; each failure names its item."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._settings import ProveSettings
from ._types import BackendInfo, FormalizeOptions, Limits, Obligation
from .errors import (
    BackendUnavailable,
    BatchTooLarge,
    FormalizeUnavailable,
    InvalidBatch,
    InvalidObligation,
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


def _check_limits(item_id: str, limits: Limits | None) -> None:
    if limits is None:
        return
    if not limits.timeout_s > 0:
        raise InvalidObligation(item_id, "timeout must be positive", param="limits.timeout_s")
    if limits.memory_mb < MIN_MEMORY_MB:
        raise InvalidObligation(item_id, f"memory limit must be at least {MIN_MEMORY_MB} MiB",
                                param="limits.memory_mb")


def validate_batch(items: Sequence[Obligation], *, settings: ProveSettings,
                   backends: Mapping[str, BackendInfo], defaults: Limits,
                   formalize: FormalizeOptions | None, can_complete: bool) -> None:
    """Raise the first problem found, as a typed error naming the item."""
    if not items:
        raise InvalidBatch("the batch is empty", param="items")
    if len(items) > settings.max_batch_items:
        raise BatchTooLarge(len(items), settings.max_batch_items)
    _check_limits("(defaults)", defaults)
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
        if not info.available:
            raise BackendUnavailable(ob.backend, info.reason, item_id=item_id)
        fields = {"requirement_text": ob.requirement_text, "statement": ob.statement,
                  "proof": ob.proof, "preamble": ob.preamble, **{
                      f"imports[{i}]": name for i, name in enumerate(ob.imports)}}
        for param, text in fields.items():
            problem = _text_problem(text)
            if problem is not None:
                raise InvalidObligation(item_id, f"{param} {problem}", param=param)
        if any(not name.strip() or "\n" in name for name in ob.imports):
            raise InvalidObligation(item_id, "an import is empty or spans lines",
                                    param="imports")
        if ob.backend == "smt" and ob.imports:
            raise InvalidObligation(item_id, "the smt backend takes no imports",
                                    param="imports")
        size = sum(len(t.encode()) for t in fields.values())
        if size > settings.max_source_bytes:
            raise SourceTooLarge(item_id, size, settings.max_source_bytes)
        _check_limits(item_id, ob.limits)
        if ob.needs_formalization:
            if not ob.requirement_text.strip():
                raise InvalidObligation(item_id, "nothing to check: statement, proof and "
                                        "requirement_text are all empty", param="statement")
            if formalize is None or not can_complete:
                raise FormalizeUnavailable(item_id)
