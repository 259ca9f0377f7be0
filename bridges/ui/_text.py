"""Text as a person reads it: output cut to a length, diffs between attempts, and source
lines with the diagnostics that point at them."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

from scillm.prove.v1 import prove_pb2

__all__ = ["OUTPUT_CAP", "Capped", "DiffLine", "Note", "SourceLine", "cap", "diff_lines",
           "place_diagnostics"]

#: Characters of a run's output shown before it is cut.
OUTPUT_CAP = 4000


@dataclass(frozen=True)
class Capped:
    """A text cut to a length; `more` characters were left out."""

    text: str
    more: int = 0


def cap(text: str, limit: int = OUTPUT_CAP) -> Capped:
    """`text` cut to `limit` characters."""
    if len(text) <= limit:
        return Capped(text)
    return Capped(text[:limit], len(text) - limit)


@dataclass(frozen=True)
class DiffLine:
    """One line of a unified diff: `kind` is "add", "del", "hunk" or "same"."""

    kind: str
    text: str


def diff_lines(before: str, after: str, *, before_name: str, after_name: str,
               ) -> list[DiffLine]:
    """The unified diff from `before` to `after`, line by line; empty when equal."""
    out: list[DiffLine] = []
    for line in difflib.unified_diff(before.splitlines(), after.splitlines(), before_name,
                                     after_name, lineterm="", n=3):
        if line.startswith(("---", "+++")):
            continue
        kind = {"@": "hunk", "+": "add", "-": "del"}.get(line[:1], "same")
        out.append(DiffLine(kind, line))
    return out


_SEVERITY = {prove_pb2.SEVERITY_ERROR: "error", prove_pb2.SEVERITY_WARNING: "warning",
             prove_pb2.SEVERITY_INFO: "info"}


@dataclass(frozen=True)
class Note:
    """A diagnostic as shown: its severity's name, where it points and what it says."""

    severity: str
    message: str
    line: int = 0
    column: int = 0


_RANK = {"error": 3, "warning": 2, "info": 1, "": 0}


@dataclass
class SourceLine:
    """A numbered source line: the gravest severity of the diagnostics that span it, and
    the diagnostics that start on it (shown beneath it)."""

    number: int
    text: str
    severity: str = ""
    notes: list[Note] = field(default_factory=list)


def place_diagnostics(source: str, diagnostics: Sequence[prove_pb2.Diagnostic],
                      ) -> tuple[list[SourceLine], list[Note]]:
    """The source's lines with the diagnostics placed on them (1-based lines, a span
    marks every line it covers), and the diagnostics that point at no line of it."""
    lines = [SourceLine(i + 1, text) for i, text in enumerate(source.splitlines())]
    loose: list[Note] = []
    for d in diagnostics:
        note = Note(_SEVERITY.get(d.severity, "error"), d.message, d.line, d.column)
        if not 1 <= d.line <= len(lines):
            loose.append(note)
            continue
        lines[d.line - 1].notes.append(note)
        for line in lines[d.line - 1:min(max(d.end_line, d.line), len(lines))]:
            if _RANK[note.severity] > _RANK[line.severity]:
                line.severity = note.severity
    return lines, loose
