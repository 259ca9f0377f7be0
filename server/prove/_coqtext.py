"""Coq text: composing the source, finding the theorem, reading coqc's messages."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._types import Diagnostic

__all__ = ["axioms_of", "compose", "locate", "parse_messages", "theorem_name"]

_COMMENT = re.compile(r"\(\*.*?\*\)", re.DOTALL)
_DECL = re.compile(
    r"(?<![\w'.])(?:Theorem|Lemma|Fact|Remark|Corollary|Proposition|Property|Example|"
    r"Definition|Fixpoint|Instance)\s+([A-Za-z_][\w']*)")
_HEADER = re.compile(r'^File "[^"]*", line (\d+), characters (\d+)-(\d+):\s*$')
_SEVERITY = re.compile(r"^(Error|Warning|Info):\s?(.*)$", re.DOTALL)


def compose(imports: Sequence[str], preamble: str, statement: str, proof: str) -> str:
    """The file checked for an obligation: imports, preamble, statement, proof."""
    parts = [f"Require Import {name}." for name in imports]
    parts += [p.strip("\n") for p in (preamble, statement, proof) if p.strip()]
    return "\n".join(parts) + "\n"


def theorem_name(statement: str, source: str) -> tuple[str, int] | None:
    """The theorem to check and its offset in `source`.

    The first declaration of `statement`; when the statement is empty (a full source
    given as proof), the last declaration of `source`.
    """
    blanked = _COMMENT.sub(lambda m: " " * len(m.group(0)), source)
    found = list(_DECL.finditer(blanked))
    if not found:
        return None
    if statement.strip():
        first = _DECL.search(_COMMENT.sub(" ", statement))
        if first is not None:
            for m in found:
                if m.group(1) == first.group(1):
                    return m.group(1), m.start(1)
    return found[-1].group(1), found[-1].start(1)


def locate(source: str, offset: int) -> tuple[int, int]:
    """1-based line and 0-based column of character `offset`."""
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1)


def _char_position(data: bytes, line_starts: list[int], line: int, byte_col: int
                   ) -> tuple[int, int]:
    """Coq's (line, byte offset from that line's start) as (line, character column)."""
    start = line_starts[min(max(line, 1), len(line_starts)) - 1]
    absolute = min(start + byte_col, len(data))
    text = data[:absolute].decode(errors="replace")
    return locate(text, len(text))


def parse_messages(output: str, source: str) -> list[Diagnostic]:
    """Diagnostics from coqc's `File "...", line L, characters C1-C2:` messages.

    Coq counts characters in bytes from the start of line L (the end may run past it);
    positions are turned into character columns of `source`.
    """
    data = source.encode()
    line_starts = [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A]
    diagnostics: list[Diagnostic] = []
    where: tuple[int, int, int] | None = None
    body: list[str] = []

    def flush() -> None:
        text = "\n".join(body).strip()
        if not text and where is None:
            return
        m = _SEVERITY.match(text)
        severity = m.group(1).lower() if m else "error"
        message = " ".join((m.group(2) if m else text).split())
        if where is None:
            diagnostics.append(Diagnostic(severity, message))
            return
        line, c1, c2 = where
        start = _char_position(data, line_starts, line, c1)
        end = _char_position(data, line_starts, line, c2)
        diagnostics.append(Diagnostic(severity, message, *start, *end))

    for raw in output.splitlines():
        header = _HEADER.match(raw)
        if header is not None:
            if where is not None or body:
                flush()
            where = (int(header.group(1)), int(header.group(2)), int(header.group(3)))
            body = []
        else:
            body.append(raw)
    if where is not None or "".join(body).strip():
        flush()
    return diagnostics


def axioms_of(printed: str) -> list[str]:
    """Names listed by `Print Assumptions` (axioms, parameters, admitted lemmas)."""
    names: list[str] = []
    for line in printed.splitlines():
        m = re.match(r"^([A-Za-z_][\w'.]*) :", line)
        if m is not None:
            names.append(m.group(1))
    return names
