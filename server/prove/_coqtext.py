"""Coq text: composing the source, finding sentences and declarations, reading messages.

Nothing here decides a verdict: Coq does (see `_coq`). This module only finds where
things are, so that the checker can copy the stated theorem's sentence and place
diagnostics on the right declaration. Its lexer knows Coq's nested comments and its
strings (``""`` escapes a quote, and strings are lexed inside comments too); a sentence
ends at a ``.`` followed by a blank or the end of the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ._types import Diagnostic

__all__ = [
    "THEOREM_KINDS",
    "Composed",
    "Declaration",
    "blank",
    "compose",
    "declarations",
    "locate",
    "parse_messages",
    "required",
    "sentences",
    "stated_theorem",
    "statement_problem",
]

#: Declarations that state a theorem (the kinds an item's statement may use).
THEOREM_KINDS = frozenset({"Theorem", "Lemma", "Fact", "Remark", "Corollary", "Proposition",
                           "Property", "Example"})
_OTHER_KINDS = frozenset({
    "Definition", "Fixpoint", "CoFixpoint", "Instance", "Axiom", "Axioms", "Parameter",
    "Parameters", "Conjecture", "Conjectures", "Hypothesis", "Hypotheses", "Variable",
    "Variables", "Inductive", "CoInductive", "Variant", "Record", "Structure", "Class", "Let",
    "Function", "Coercion", "Canonical", "Declare"})
_MODIFIERS = frozenset({"Local", "Global", "Polymorphic", "Monomorphic", "Cumulative",
                        "NonCumulative", "Private", "Program", "Export", "Equations"})
_WORD = re.compile(r"[^\W\d][\w']*")
_HEADER = re.compile(r'^File "[^"]*", line (\d+), characters (\d+)-(\d+):\s*$')
_SEVERITY = re.compile(r"^(Error|Warning|Info):\s?(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Composed:
    """The checked file and where each part of the obligation sits in it."""

    text: str
    #: [start, end) of the statement and of the proof in `text` (empty when absent).
    statement: tuple[int, int]
    proof: tuple[int, int]
    #: Where the imports' `Require Import` lines end (the preamble starts).
    imports_end: int = 0


def compose(imports: Sequence[str], preamble: str, statement: str, proof: str) -> Composed:
    """The file checked for an obligation: imports, preamble, statement, proof."""
    text = "".join(f"Require Import {name}.\n" for name in imports)
    imports_end = len(text)
    spans: dict[str, tuple[int, int]] = {}
    for key, part in (("preamble", preamble), ("statement", statement), ("proof", proof)):
        part = part.strip("\n")
        if part.strip():
            spans[key] = (len(text), len(text) + len(part))
            text += part + "\n"
        else:
            spans[key] = (len(text), len(text))
    return Composed(text, spans["statement"], spans["proof"], imports_end)


def blank(text: str) -> str:
    """`text` with comments and string literals replaced by spaces (newlines kept), so
    that offsets stay valid. An unterminated comment or string blanks to the end."""
    return _lex(text)[0]


def ends_open(text: str) -> bool:
    """Whether `text` ends inside a comment or a string literal."""
    return _lex(text)[1]


def _lex(text: str) -> tuple[str, bool]:
    """`blank(text)`, and whether the text ends inside a comment or string."""
    out = list(text)
    unterminated = False
    i, n, depth = 0, len(text), 0

    def wipe(start: int, end: int) -> None:
        for k in range(start, end):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        if text.startswith("(*", i):
            depth, start = 1, i
            i += 2
            while i < n and depth:
                if text.startswith("(*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*)", i):
                    depth, i = depth - 1, i + 2
                elif text[i] == '"':
                    i = _string_end(text, i)
                else:
                    i += 1
            unterminated = unterminated or depth > 0  # (a string in it runs to the end too)
            wipe(start, i)
        elif text[i] == '"':
            end = _string_end(text, i)
            unterminated = unterminated or _string_end(text, i, closed=True) < 0
            wipe(i, end)
            i = end
        else:
            i += 1
    return "".join(out), unterminated


def _string_end(text: str, start: int, *, closed: bool = False) -> int:
    """Offset just past the string literal opening at `start`: the end of the text when
    it is not closed (-1 then, with `closed`)."""
    i = start + 1
    while True:
        close = text.find('"', i)
        if close < 0:
            return -1 if closed else len(text)
        if text.startswith('""', close):
            i = close + 2
            continue
        return close + 1


def sentences(text: str) -> list[tuple[int, int]]:
    """[start, end) of each sentence of `text` (end is just past its dot), from the first
    non-blank character. Text after the last dot is not a sentence."""
    plain = blank(text)
    found: list[tuple[int, int]] = []
    start = 0
    for i, c in enumerate(plain):
        if c != ".":
            continue
        if i + 1 < len(plain) and not plain[i + 1].isspace():
            continue
        if i > 0 and plain[i - 1] == ".":
            continue
        begin = start
        while begin < i and plain[begin].isspace():
            begin += 1
        found.append((begin, i + 1))
        start = i + 1
    return found


@dataclass(frozen=True)
class Declaration:
    """A sentence that declares a name."""

    kind: str
    name: str
    #: Offset of the name, and the sentence's [start, end).
    name_at: int
    sentence: tuple[int, int]


def declarations(text: str) -> list[Declaration]:
    """Every declaration of `text` whose name the lexer can see, in order."""
    plain = blank(text)
    found: list[Declaration] = []
    for start, end in sentences(text):
        i = start
        while i < end and (plain[i].isspace() or plain[i] in "-+*{}"):
            i += 1
        kind = ""
        while i < end:
            if plain.startswith("#[", i):
                close = plain.find("]", i)
                i = end if close < 0 else close + 1
            else:
                m = _WORD.match(plain, i)
                if m is None:
                    break
                i = m.end()
                if m.group(0) in _MODIFIERS:
                    pass
                elif m.group(0) in THEOREM_KINDS or m.group(0) in _OTHER_KINDS:
                    kind = m.group(0)
                    if kind not in ("Declare", "Canonical"):
                        break
                else:
                    break
            while i < end and plain[i].isspace():
                i += 1
        if not kind:
            continue
        while i < end and (plain[i].isspace() or plain[i] == "("):
            i += 1
        m = _WORD.match(plain, i)
        if m is not None and m.group(0) not in ("Structure", "Instance", "Module"):
            found.append(Declaration(kind, m.group(0), m.start(), (start, end)))
    return found


_REQUIRE = re.compile(r"(?:From\s+([^\W\d][\w'.]*)\s+)?Require(?:\s+(Import|Export))?"
                      r"((?:\s+[^\W\d][\w'.]*)+)\s*\.")


def required(text: str, start: int, end: int) -> list[str]:
    """The `Require` sentences (`Require Import X.`, `From Y Require Z.`) of text[start:end],
    written anew from the module names they hold, a line each: they load libraries and do
    nothing else, so the statement's reading with the imports alone has them too
    (`Require Import Coq.Lists.List.` in the preamble, then `In` defined again)."""
    plain = blank(text[:end])
    found = []
    for a, b in sentences(text[:end]):
        m = _REQUIRE.fullmatch(plain, a, b)
        if a >= start and m is not None:
            source = f"From {m.group(1)} " if m.group(1) else ""
            mode = f" {m.group(2)}" if m.group(2) else ""
            found.append(f"{source}Require{mode} {' '.join(m.group(3).split())}.\n")
    return found


def stated_theorem(composed: Composed) -> Declaration | None:
    """The theorem an obligation states: the first theorem-kind declaration of its
    statement, or of its proof when the statement is empty (a whole file as proof)."""
    start, end = composed.statement
    if not composed.text[start:end].strip():
        start, end = composed.proof
    for decl in declarations(composed.text):
        if decl.kind in THEOREM_KINDS and start <= decl.sentence[0] < end:
            return decl
    return None


def statement_problem(composed: Composed, decl: Declaration) -> str | None:
    """Why the statement does not stand on its own, or None. The stated theorem's text is
    what the proof is checked against; a statement that ends inside a comment or string,
    or whose theorem sentence ends only in the proof (`Theorem bad : 1 = 2` then a proof
    of `-> False. Proof. ...`), let the proof rewrite what was stated."""
    start, end = composed.statement
    if start == end:
        return None  # no statement: the whole file is the proof, and states its theorem
    if ends_open(composed.text[start:end]):
        return "the statement ends inside a comment or a string"
    if decl.sentence[1] > end:
        return (f"the sentence stating {decl.name} does not end in the statement: end it "
                "with its '.' there")
    return None


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
