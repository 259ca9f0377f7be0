"""SMT-LIB2 text: S-expressions, and how an `smt` obligation is posed (the rule).

An `smt` obligation is a *preamble* and a *statement*:

* the preamble holds only declarations, definitions and assertions
  (`declare-const`, `declare-fun`, `declare-sort`, `declare-datatype(s)`, `define-const`,
  `define-fun`, `define-fun-rec`, `define-funs-rec`, `define-sort`, `assert`);
* the statement is one term: the goal.

Anything else (`check-sat`, `push`/`pop`, `reset`, `exit`, `set-option`, `echo`, `get-*`,
a stray atom, unbalanced parentheses, an unterminated string or quoted symbol) makes the
item FAILED with a located diagnostic; nothing of it reaches the solver. The checked
script is the preamble, then `(assert (not <goal>))` and `(check-sat)`: `unsat` proves
the goal, `sat` refutes it (the model is the counterexample), `unknown` is UNKNOWN.
The backend then checks the preamble alone (`_smt`), to tell a vacuous proof apart.

The parser is a real S-expression reader that reads text the way z3 does: `;` comments
run to the end of the line, strings (`""` escapes a quote; a backslash escapes nothing)
and `|quoted symbols|` may hold any character, parentheses and newlines included, so a goal
cannot close the `assert` around it early. A backslash inside a quoted symbol is refused:
SMT-LIB forbids it and z3 reads it as an escape of the closing bar.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._types import Diagnostic

__all__ = ["PREAMBLE_COMMANDS", "SmtScript", "TopLevel", "is_command", "line_col", "pose",
           "top_level"]

#: What a preamble may hold.
PREAMBLE_COMMANDS = frozenset({
    "assert", "declare-const", "declare-datatype", "declare-datatypes", "declare-fun",
    "declare-sort", "define-const", "define-fun", "define-fun-rec", "define-funs-rec",
    "define-sort",
})
#: SMT-LIB (and z3) commands: a statement headed by one of these is not a term.
_COMMANDS = PREAMBLE_COMMANDS | frozenset({
    "check-sat", "check-sat-assuming", "echo", "exit", "get-assertions", "get-assignment",
    "get-info", "get-model", "get-option", "get-proof", "get-unsat-assumptions",
    "get-unsat-core", "get-value", "pop", "push", "reset", "reset-assertions", "set-info",
    "set-logic", "set-option", "simplify", "eval", "minimize", "maximize", "declare-rel",
    "declare-var", "rule", "query", "apply", "display", "include",
})
_SYMBOL_END = frozenset("();\"|")



@dataclass(frozen=True)
class TopLevel:
    """A top-level s-expression or atom: its text span and head symbol ("" for atoms)."""

    start: int
    end: int
    head: str


def is_command(item: TopLevel) -> bool:
    """Whether a top-level item is an SMT-LIB (or z3) command rather than a term."""
    return item.head in _COMMANDS


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and 0-based column of `offset` in `text`."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1)


def _quoted_end(text: str, i: int) -> int:
    """Offset just past the string or quoted symbol opening at `i`, or -1."""
    c = text[i]
    close = text.find(c, i + 1)
    while c == '"' and close >= 0 and text.startswith('""', close):
        close = text.find(c, close + 2)
    return -1 if close < 0 else close + 1


def _head(text: str, i: int, end: int) -> str:
    """The symbol right after the `(` at `i` (skipping blanks and comments), or ""."""
    i += 1
    while i < end:
        if text[i].isspace():
            i += 1
        elif text[i] == ";":
            nl = text.find("\n", i)
            i = end if nl < 0 else nl
        else:
            break
    j = i
    while j < end and not text[j].isspace() and text[j] not in _SYMBOL_END:
        j += 1
    return text[i:j]


def top_level(text: str) -> tuple[list[TopLevel], Diagnostic | None]:
    """Split `text` into top-level items, or a diagnostic for text that does not read."""
    items: list[TopLevel] = []
    depth, start, i, n = 0, -1, 0, len(text)
    open_at: list[int] = []
    while i < n:
        c = text[i]
        if c == ";":
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        if c in "\"|":
            close = _quoted_end(text, i)
            if close < 0:
                what = "string" if c == '"' else "quoted symbol"
                return items, _diag(text, i, f"unterminated {what}")
            if c == "|" and "\\" in text[i:close]:
                # SMT-LIB 2.6 forbids it, and z3 reads it as an escape of the closing bar:
                # z3 would see other commands than the ones checked here.
                at = text.index("\\", i)
                return items, _diag(text, at, "a backslash is not allowed in a |quoted symbol|")
            if depth == 0:
                items.append(TopLevel(i, close, ""))
            i = close
            continue
        if c == "(":
            if depth == 0:
                start = i
            depth += 1
            open_at.append(i)
        elif c == ")":
            if depth == 0:
                return items, _diag(text, i, "unexpected ')'")
            depth -= 1
            open_at.pop()
            if depth == 0:
                items.append(TopLevel(start, i + 1, _head(text, start, i)))
        elif not c.isspace() and depth == 0:
            # An atom ends where z3's symbol does: `a"b"` is two items, as z3 reads it.
            j = i
            while j < n and not text[j].isspace() and text[j] not in _SYMBOL_END:
                j += 1
            items.append(TopLevel(i, j, ""))
            i = j
            continue
        i += 1
    if depth:
        return items, _diag(text, open_at[-1], "unbalanced '(': missing ')'")
    return items, None


def _diag(text: str, offset: int, message: str, end: int | None = None) -> Diagnostic:
    line, col = line_col(text, offset)
    end_line, end_col = line_col(text, end) if end is not None else (line, col + 1)
    return Diagnostic("error", message, line, col, end_line, end_col)


@dataclass(frozen=True)
class SmtScript:
    """The posed script, or the diagnostics that stop it from reaching the solver.

    Diagnostics are located in `source`, which is what the result reports as checked.
    """

    source: str
    #: The preamble's text as sent (its own lines come first in `source`).
    preamble: str = ""
    #: The goal query: `(assert (not <goal>))` and `(check-sat)`.
    query: str = ""
    diagnostics: tuple[Diagnostic, ...] = ()


def pose(preamble: str, statement: str) -> SmtScript:
    """The script for `preamble` and `statement` by the module's rule."""
    pre = preamble.rstrip() + "\n" if preamble.strip() else ""
    stmt = statement.strip()
    problems: list[Diagnostic] = []
    items, problem = top_level(pre)
    if problem is not None:
        problems.append(problem)
    for t in items:
        if t.head not in PREAMBLE_COMMANDS:
            what = f"({t.head or pre[t.start + 1:t.end - 1].strip()[:20]} ...)" \
                if pre[t.start] == "(" else f"the atom {pre[t.start:t.end][:40]!r}"
            problems.append(_diag(pre, t.start, (
                f"{what} is not allowed in the preamble: it holds declarations, definitions "
                "and assertions only"), t.end))
    lead = "(assert (not "
    goal, problem = top_level(stmt)
    stated: list[Diagnostic] = []
    if problem is not None:
        stated.append(problem)
    elif not goal:
        stated.append(Diagnostic("error", "the statement is empty: give one goal term",
                                 1, 0, None, None))
    elif any(t.head in _COMMANDS for t in goal):
        t = next(t for t in goal if t.head in _COMMANDS)
        stated.append(_diag(stmt, t.start, (
            f"the statement must be one goal term, not the command ({t.head} ...); "
            "declarations and assertions belong in the preamble"), t.end))
    elif len(goal) > 1:
        t = goal[1]
        stated.append(_diag(stmt, t.start, "the statement must be one goal term; this is a "
                            "second one", t.end))
    # The goal's own span: comments around it stay out, so none can swallow the `))`.
    term = stmt if stated else stmt[goal[0].start:goal[0].end]
    query = f"{lead}{term}))\n(check-sat)\n"
    below = pre.count("\n")
    problems += [_moved(d, below, len(lead)) for d in stated]
    return SmtScript(pre + query, pre, query, tuple(problems))


def _moved(d: Diagnostic, lines: int, lead: int) -> Diagnostic:
    """A diagnostic of the statement's text moved to where that text sits in the source:
    `lines` lines down, and `lead` columns right on its first line."""
    def at(line: int | None, column: int | None) -> tuple[int | None, int | None]:
        if line is None:
            return None, column
        return line + lines, column + lead if column is not None and line == 1 else column
    return Diagnostic(d.severity, d.message, *at(d.line, d.column), *at(d.end_line, d.end_column))
