"""A Prove run as its page shows it: each item's verdict, the diagnostics on the source
lines they point at, the counterexample, and the formalize loop's attempts as diffs from
one attempt to the next."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from scillm.prove.v1 import prove_pb2 as pv

from ._charts import Span
from ._text import DiffLine, Note, SourceLine, diff_lines, place_diagnostics
from ._views import duration_ms, enum_name

__all__ = ["ProveView", "prove_view"]


@dataclass(frozen=True)
class AttemptView:
    """One formalization attempt: what changed since the previous one."""

    number: int
    verdict: str
    ms: float
    tokens: int
    notes: list[Note]
    diff: list[DiffLine]
    #: The whole source, for the first attempt (it has nothing to differ from).
    source: str = ""


@dataclass
class ItemView:
    """One obligation's outcome."""

    item_id: str
    backend: str
    verdict: str
    ms: float
    cached: bool
    vacuous: bool
    requirement: str
    lines: list[SourceLine]
    loose: list[Note]
    counterexample: str
    error: str
    backend_version: str
    attempts: list[AttemptView] = field(default_factory=list)


@dataclass
class ProveView:
    """Everything the Prove page shows."""

    summary: pv.ProveSummary
    items: list[ItemView]
    spans: list[Span]


def _source(result: pv.ItemResult, obligation: pv.Obligation | None) -> str:
    if result.source:
        return result.source
    if obligation is None:
        return ""
    parts = [*(f"import {i}" for i in obligation.imports), obligation.preamble,
             obligation.statement, obligation.proof]
    return "\n".join(p for p in parts if p)


def _attempts(result: pv.ItemResult) -> list[AttemptView]:
    out: list[AttemptView] = []
    previous, previous_number = "", 0
    for a in result.attempts:
        notes = place_diagnostics("", a.diagnostics)[1]
        diff = diff_lines(previous, a.source, before_name=f"attempt {previous_number}",
                          after_name=f"attempt {a.number}") if out else []
        out.append(AttemptView(a.number, enum_name(pv.Verdict, a.verdict),
                               duration_ms(a.duration), a.usage.total_tokens, notes, diff,
                               "" if out else a.source))
        previous, previous_number = a.source, a.number
    return out


def prove_view(request: pv.ProveRequest, summary: pv.ProveSummary,
               stored_events: Iterable[dict[str, Any]]) -> ProveView:
    """The page's content from the stored request, summary and per-item results."""
    obligations = {o.item_id: o for o in request.items}
    items: list[ItemView] = []
    spans: list[Span] = []
    for event in stored_events:
        r = json_format.ParseDict(event.get("result", event), pv.ItemResult(),
                                  ignore_unknown_fields=True)
        ob = obligations.get(r.item_id)
        lines, loose = place_diagnostics(_source(r, ob), r.diagnostics)
        items.append(ItemView(
            r.item_id, enum_name(pv.Backend, r.backend), enum_name(pv.Verdict, r.verdict),
            duration_ms(r.duration), r.cached, r.vacuous,
            ob.requirement_text if ob is not None else "", lines, loose, r.counterexample,
            r.error, r.backend_version, _attempts(r)))
        spans.append(Span(r.item_id, duration_ms(r.duration), None, "item"))
        spans += [Span(f"{r.item_id} · attempt {a.number}", duration_ms(a.duration), None,
                       "attempt") for a in r.attempts]
    return ProveView(summary, items, spans)
