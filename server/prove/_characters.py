"""Characters a prover cannot read, found before any prover runs.

Every C0 control character but tab, line feed and carriage return, and DEL (U+007F):
outside a comment or a string, Coq 8.16's lexer says "Syntax Error: Lexer: Undefined
token" and z3 "unexpected character" about each one of them (checked one by one with the
real coqc and z3), about a character most displays do not show. A caller's item holding
one is FAILED with a diagnostic per character, naming it and where it is, in place of
that. They are refused inside comments and strings too, where the provers take them: a
formal text has no use for them there, and one rule wherever they are is one rule the
caller can read (a model's formalisation is held to a wider one, `_formalize`).

NUL is refused earlier still, with the rest of a batch (`_validate`): it cannot be
written for a prover at all.
"""

from __future__ import annotations

import re
import unicodedata

from ._smtlib import in_brief, line_col
from ._types import CheckOutcome, Diagnostic, Verdict

__all__ = ["CONTROL", "named", "unreadable_controls"]

#: The characters refused in a caller's item.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def named(c: str) -> str:
    """`c` as a diagnostic names it: "a NUL byte (U+0000)", "U+00A0 NO-BREAK SPACE"."""
    point = f"U+{ord(c):04X}"
    what = {"Cc": "the control character", "Cs": "a lone surrogate",
            "Co": "the private-use character", "Cn": "the unassigned code point"}
    if c == "\x00":
        return f"a NUL byte ({point})"
    category = unicodedata.category(c)
    if category in what:
        return f"{what[category]} {point}"
    return f"{point} {unicodedata.name(c, 'an unnamed character')}"


def unreadable_controls(source: str) -> CheckOutcome | None:
    """FAILED, with a diagnostic per `CONTROL` character of `source` (the text the prover
    would read, which the outcome quotes), or None when it holds none."""
    found = [m.start() for m in CONTROL.finditer(source)]
    if not found:
        return None
    diagnostics = []
    for at in found:
        line, column = line_col(source, at)
        diagnostics.append(Diagnostic(
            "error", f"{named(source[at])}, which the provers cannot read and most displays "
            "do not show: remove it", line, column, line, column + 1))
    first = diagnostics[0]
    assert first.line is not None and first.column is not None
    return CheckOutcome(Verdict.FAILED, source, tuple(in_brief(diagnostics)), message=(
        f"the item holds {named(source[found[0]])} on line {first.line}, column "
        f"{first.column + 1}, which the provers cannot read"), prover_ran=False)
