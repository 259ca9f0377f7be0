"""Lean 4 text: comments and strings, declarations, the refused commands, the audit.

Nothing here decides a verdict: Lean does (see `_lean`). This module finds where the
declarations are, so that the checker can ask Lean about each of them, and refuses the
commands that would let an item change how Lean answers the checker.

The audit the checker appends to an item (after its last line)::

    #print axioms <each declared name, fully qualified>

and, right before the command that follows the stated theorem (so in the same
namespace and section, with the same notations), a type check of the stated theorem::

    example : ∀ <its binders>, <its stated type> := @<its name>

Lean answers `#print axioms X` with an information message at that line:
"'X' depends on axioms: [propext, sorryAx]" or "'X' does not depend on any axioms".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ALLOWED_AXIOMS", "Audit", "LeanDeclaration", "audit", "blank", "declarations",
           "parse_axioms_reply", "refused", "theorems"]

#: The axioms of Lean's own foundations; any other axiom makes an item FAILED.
ALLOWED_AXIOMS = frozenset({"propext", "Classical.choice", "Quot.sound"})

#: Commands that run code or extend the syntax: they could redefine `#print axioms` or
#: print a forged answer, so an item holding one is refused.
_REFUSED = re.compile(
    r"(?<![\w.'])(#eval|#exit|#reduce|run_cmd|run_elab|run_meta|run_tac|by_elab|elab_rules|"
    r"elab|macro_rules|macro|syntax|declare_syntax_cat|notation|infixl|infixr|infix|prefix|"
    r"postfix|initialize|builtin_initialize|implemented_by|extern|unsafe|dbg_trace|"
    r"dbgTrace|debug\.\w+|command_elab|term_elab|tactic_elab|addDecl|IO\.Process)(?![\w'])")
_IDENT_CHAR = re.compile(r"[\w'!?.]")
_CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'\n])'")
_RAW = re.compile(r'r(#*)"')
_MODIFIERS = r"(?:(?:private|protected|noncomputable|partial|nonrec|scoped|local)\s+)*"
_DECL = re.compile(
    r"^[ \t]*(?:@\[[^\]]*\]\s*)*" + _MODIFIERS +
    r"(theorem|lemma|def|abbrev|instance|axiom|opaque|example|structure|inductive|class)"
    r"\b[ \t]*(«[^»]*»|[^\W\d][\w'.!?]*)?", re.MULTILINE)
_SCOPE = re.compile(r"^[ \t]*(namespace|section|end)\b[ \t]*([\w'.«»]*)", re.MULTILINE)
_COMMAND = re.compile(r"^(?=\S)", re.MULTILINE)
_THEOREMS = frozenset({"theorem", "lemma"})
_REPLY = re.compile(r"^'(.*)' (?:depends on axioms: \[(.*)\]|does not depend on any axioms)$",
                    re.DOTALL)


def blank(text: str) -> str:
    """`text` with comments (`--`, nested `/- -/`) and string literals replaced by spaces,
    newlines kept, so offsets stay valid."""
    out = list(text)
    i, n = 0, len(text)

    def wipe(start: int, end: int) -> None:
        for k in range(start, min(end, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        if text.startswith("--", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            wipe(i, end)
            i = end
        elif text.startswith("/-", i):
            depth, start = 1, i
            i += 2
            while i < n and depth:
                if text.startswith("/-", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("-/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            wipe(start, i)
        elif text[i] == "'" and (i == 0 or not _IDENT_CHAR.match(text[i - 1])) and \
                (m := _CHAR.match(text, i)) is not None:
            wipe(i, m.end())  # a Char literal such as '"' or '\''
            i = m.end()
        elif text[i] == "r" and (m := _RAW.match(text, i)) is not None and \
                (i == 0 or not _IDENT_CHAR.match(text[i - 1])):
            close = text.find('"' + m.group(1), m.end())
            end = n if close < 0 else close + 1 + len(m.group(1))
            wipe(i, end)  # a raw string: no escapes, ends at a quote and as many hashes
            i = end
        elif text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            wipe(i, j + 1)
            i = j + 1
        else:
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class LeanDeclaration:
    """A declaration: its keyword, its fully qualified name ("" when anonymous), where its
    name is, and where the next command starts."""

    kind: str
    name: str
    short: str
    at: int
    next_command: int


def declarations(text: str) -> list[LeanDeclaration]:
    """Every declaration of `text`, names qualified by the enclosing namespaces."""
    plain = blank(text)
    scopes: list[tuple[str, str]] = []  # (kind, name) of open namespaces and sections
    events = sorted([(m.start(), "scope", m) for m in _SCOPE.finditer(plain)] +
                    [(m.start(), "decl", m) for m in _DECL.finditer(plain)],
                    key=lambda e: e[0])
    starts = [m.start() for m in _COMMAND.finditer(plain)] + [len(plain)]
    found: list[LeanDeclaration] = []
    for at, what, m in events:
        if what == "scope":
            kind, name = m.group(1), m.group(2)
            if kind == "end":
                if scopes:
                    scopes.pop()
            else:
                scopes.append((kind, name))
            continue
        kind, short = m.group(1), (m.group(2) or "")
        prefix = ".".join(n for k, n in scopes if k == "namespace" and n)
        name = f"{prefix}.{short}" if prefix and short else short
        following = next(s for s in starts if s > at)
        found.append(LeanDeclaration(kind, name, short, m.start(2) if short else m.start(1),
                                     following))
    return found


def refused(text: str) -> tuple[str, int] | None:
    """The first refused command of `text` and its offset, or None. Matched in the text
    with comments and strings blanked and in the raw text too, so that neither a comment nor
    a lexer that disagrees with Lean's (interpolated strings hold code) can hide one."""
    m = _REFUSED.search(blank(text)) or _REFUSED.search(text)
    return None if m is None else (m.group(1), m.start(1))


@dataclass(frozen=True)
class Audit:
    """The file Lean checks for an item, and the lines of the checker's own commands."""

    text: str
    #: 1-based line of each `#print axioms <name>`.
    axiom_lines: dict[int, str]
    #: 1-based line of the stated theorem's type check (None without one).
    type_line: int | None


def _binders_and_type(text: str, after_name: int) -> tuple[str, str] | None:
    """The binders and the type of a theorem whose name ends at `after_name`: the text up
    to the `:` at depth 0, and from there to the `:=` at depth 0."""
    plain = blank(text)
    depth, colon, i = 0, -1, after_name
    while i < len(plain):
        c = plain[i]
        if c in "([{⦃⟨":
            depth += 1
        elif c in ")]}⦄⟩":
            depth -= 1
        elif depth == 0 and plain.startswith(":=", i):
            break
        elif depth == 0 and c == ":" and colon < 0:
            colon = i
        i += 1
    if colon < 0 or i >= len(plain):
        return None
    return text[after_name:colon].strip(), text[colon + 1:i].strip()


def audit(text: str, stated: LeanDeclaration | None) -> Audit:
    """`text` with the checker's commands: the stated theorem's type check before the
    command after it, and `#print axioms` for every named declaration at the end."""
    check = ""
    if stated is not None:
        found = _binders_and_type(text, stated.at + len(stated.short))
        if found is not None:
            binders, typ = found
            stated_type = f"∀ {binders}, {typ}" if binders else typ
            check = f"\nexample : {stated_type} := @_root_.{stated.name}\n"
    insert = stated.next_command if stated is not None and check else len(text)
    body = text[:insert] + check + text[insert:]
    type_line = body[:insert].count("\n") + 2 if check else None
    if not body.endswith("\n"):
        body += "\n"
    lines: dict[int, str] = {}
    for decl in declarations(text):
        if decl.name:
            lines[body.count("\n") + 1] = decl.name
            body += f"#print axioms _root_.{decl.name}\n"
    return Audit(body, lines, type_line)


def parse_axioms_reply(data: str) -> tuple[str, list[str]] | None:
    """(name, axioms) from Lean's answer to `#print axioms`, or None for anything else."""
    m = _REPLY.match(data.strip())
    if m is None:
        return None
    axioms = [a.strip() for a in (m.group(2) or "").split(",") if a.strip()]
    return m.group(1), axioms


def theorems(decls: list[LeanDeclaration]) -> list[LeanDeclaration]:
    """The theorem-kind declarations of `decls`."""
    return [d for d in decls if d.kind in _THEOREMS and d.name]
