"""SMT-LIB2 text: balance checking, top-level commands, and how an obligation is posed.

How an `smt` obligation becomes a script (the rule the backend documents):

* **Goal mode** – the statement is one term (no top-level command). The preamble's
  declarations and assertions are kept, the *negated* goal is asserted and
  `(check-sat)` asked: `unsat` -> PROVED, `sat` -> REFUTED (model as counterexample),
  `unknown` -> UNKNOWN.
* **Script mode** – the statement holds SMT-LIB commands (`assert`, `check-sat`, ...).
  It is taken as a *refutation script*: its assertions must already encode the
  negation of the claim. `(check-sat)` is appended when absent, and the answer of the
  last `check-sat` decides, as above.

`(exit)` is refused (it would end the warm solver) and unbalanced parentheses are
reported before anything reaches z3. A script that changes solver state beyond its
assertions (`set-option`, `set-logic`, `push`, `pop`, `reset`, ...) is *stateful*: the
warm solver is reset before and after it instead of isolating it in `(push)`/`(pop)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._types import Diagnostic

__all__ = ["SmtScript", "TopLevel", "line_col", "pose", "top_level"]

_COMMANDS = frozenset({
    "assert", "check-sat", "check-sat-assuming", "declare-const", "declare-datatype",
    "declare-datatypes", "declare-fun", "declare-sort", "define-const", "define-fun",
    "define-fun-rec", "define-funs-rec", "define-sort", "echo", "get-assertions",
    "get-assignment", "get-info", "get-model", "get-option", "get-proof",
    "get-unsat-assumptions", "get-unsat-core", "get-value", "pop", "push", "set-info",
    "set-logic", "set-option", "exit", "reset", "reset-assertions", "simplify", "eval",
})
_FORBIDDEN = frozenset({"exit"})
_STATEFUL = frozenset({"set-option", "set-logic", "set-info", "push", "pop", "reset",
                       "reset-assertions"})
_HEAD = re.compile(r"\(\s*([^\s()|\";]+)")


@dataclass(frozen=True)
class TopLevel:
    """A top-level s-expression or atom: its text span and head symbol."""

    start: int
    end: int
    head: str


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and 0-based column of `offset` in `text`."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1)


def top_level(text: str) -> tuple[list[TopLevel], Diagnostic | None]:
    """Split `text` into top-level items, or a diagnostic for unbalanced text."""
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
            close = text.find(c, i + 1)
            while c == '"' and close >= 0 and text.startswith('""', close):
                close = text.find(c, close + 2)
            if close < 0:
                what = "string" if c == '"' else "quoted symbol"
                return items, _diag(text, i, f"unterminated {what}")
            if depth == 0:
                items.append(TopLevel(i, close + 1, ""))
            i = close + 1
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
                m = _HEAD.match(text, start)
                items.append(TopLevel(start, i + 1, m.group(1) if m else ""))
        elif not c.isspace() and depth == 0:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "();":
                j += 1
            items.append(TopLevel(i, j, ""))
            i = j
            continue
        i += 1
    if depth:
        return items, _diag(text, open_at[-1], "unbalanced '(': missing ')'")
    return items, None


def _diag(text: str, offset: int, message: str) -> Diagnostic:
    line, col = line_col(text, offset)
    return Diagnostic("error", message, line, col, line, col + 1)


@dataclass(frozen=True)
class SmtScript:
    """The script sent to z3, or the diagnostics that stop it from being sent."""

    source: str
    diagnostics: tuple[Diagnostic, ...] = ()
    #: Needs a fresh solver rather than a (push)/(pop) scope.
    stateful: bool = False


def pose(preamble: str, statement: str) -> SmtScript:
    """The script for `preamble` and `statement` by the module's rule."""
    statement = statement.strip()
    pre = preamble.rstrip() + "\n" if preamble.strip() else ""
    shift = pre.count("\n")
    items, problem = top_level(statement)
    script = any(t.head in _COMMANDS for t in items)
    if script:
        body = statement + "\n"
        if not any(t.head == "check-sat" for t in items):
            body += "(check-sat)\n"
    else:
        body = f"(assert (not {statement}))\n(check-sat)\n"
    source = pre + body
    if problem is None and not script and len(items) != 1:
        problem = Diagnostic("error", "the statement must be one goal term or SMT-LIB commands",
                             1, 0, None, None)
    if problem is not None:
        prefix = 0 if script else len("(assert (not ")
        return SmtScript(source, (_shift(problem, shift, prefix),))
    all_items, problem = top_level(source)
    if problem is not None:
        return SmtScript(source, (problem,))
    bad = [t for t in all_items if t.head in _FORBIDDEN]
    if bad:
        return SmtScript(source, tuple(
            Diagnostic("error", f"({t.head}) is not allowed in an obligation",
                       *line_col(source, t.start), *line_col(source, t.end)) for t in bad))
    return SmtScript(source, stateful=any(t.head in _STATEFUL for t in all_items))


def _shift(d: Diagnostic, lines: int, first_line_columns: int) -> Diagnostic:
    """`d` moved down `lines` lines, and right on the statement's first line."""
    def col(line: int | None, column: int | None) -> int | None:
        return column + first_line_columns if line == 1 and column is not None else column
    return Diagnostic(d.severity, d.message, None if d.line is None else d.line + lines,
                      col(d.line, d.column), None if d.end_line is None else d.end_line + lines,
                      col(d.end_line, d.end_column))
