"""SMT-LIB2 text: S-expressions, and how an `smt` obligation is posed (the rule).

An `smt` obligation is a *preamble* and a *statement*:

* the preamble holds only declarations, definitions and assertions
  (`declare-const`, `declare-fun`, `declare-sort`, `declare-datatype(s)`, `define-const`,
  `define-fun`, `define-sort`, `assert`);
* the statement is one term: the goal.

Anything else (`check-sat`, `push`/`pop`, `reset`, `exit`, `set-option`, `echo`, `get-*`,
a stray atom, unbalanced parentheses, an unterminated string or quoted symbol) makes the
item FAILED with a located diagnostic; nothing of it reaches the solver. So does a
declaration or definition of a name the solver already defines (`not`, `=`, `false`,
`Int`, `bvadd`, `str.len`, ...): z3 lets a user's `(define-fun not ((b Bool)) Bool b)`
shadow the built-in, and then the checker's own `(assert (not <goal>))` asserted the goal
itself: `false` was PROVED. So does a recursive definition (`define-fun-rec`,
`define-funs-rec`): it asserts its equation for every argument, nothing checks that it is
well founded, and z3 unfolds it on ground terms only, so an ill-founded one
(`(define-fun-rec k () Int (+ k 1))`) proved `(= k 7)` and `(= k 8)` while the preamble
alone looked consistent, and in incremental use z3 does not reliably find the
contradiction even with the goal's terms present. So does a `(! term :named name)` whose
name the solver defines, in the preamble or the goal: z3 binds the name to the term over
the built-in, and `(assert (! (= 1 1) :named false))` made the goal `false` PROVED (cvc5
refuses such a name itself). The checked
script is the preamble, then `(assert (not <goal>))` and `(check-sat)`: `unsat` proves
the goal, `sat` refutes it (the model is the counterexample), `unknown` is UNKNOWN.
The backend then checks the preamble alone (`_smt`), to tell a vacuous proof apart.

The parser is a real S-expression reader that reads text the way z3 does: `;` comments
run to the end of the line, strings (`""` escapes a quote; a backslash escapes nothing)
and `|quoted symbols|` may hold any character, parentheses and newlines included, so a goal
cannot close the `assert` around it early. A backslash inside a quoted symbol is refused:
SMT-LIB forbids it and z3 reads it as an escape of the closing bar. So is a carriage
return inside a comment with more than blanks after it on its line: cvc5 (1.0.3, its
lexer's `';' (~('\\n' | '\\r'))*`) ends a comment at a carriage return, z3 at the line feed
only, so the rest of that line was a comment to z3 and to this reader, and commands to
cvc5: `(and false ;\\r)))(push 1)(assert (not (and\\n true)` reads as the false goal
`(and false true)`, and cvc5 proved it. A `\\r\\n` line break reads alike everywhere.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from dataclasses import dataclass

from ._types import Diagnostic

__all__ = ["MAX_DIAGNOSTICS", "PREAMBLE_COMMANDS", "SmtScript", "TopLevel", "declarations",
           "in_brief", "is_builtin", "is_command", "line_col", "pose", "top_level"]

#: Recursive definitions: read as commands, refused in a preamble (see the module).
_RECURSIVE = frozenset({"define-fun-rec", "define-funs-rec"})
#: What a preamble may hold (`_RECURSIVE` is read, then refused).
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
#: Why a comment with text after a carriage return on its line is refused (see the module).
_CR_IN_COMMENT = (
    "a carriage return inside a ';' comment, with text after it on the same line: cvc5 "
    "ends the comment at the carriage return, z3 (and this checker) at the line feed, so "
    "that text would be commands to one solver and a comment to the other; end lines "
    "with \\n or \\r\\n")
#: Names z3 4.8 defines itself (functions, constants, sorts and binders of the core,
#: arithmetic (with z3's own transcendentals: `pi` is pi unless something renames it),
#: array, bit-vector, string, sequence, floating-point, set, pseudo-Boolean and special
#: relation theories): a preamble may not declare or define them again. Checked against
#: z3 4.8.12 by asking it for each candidate (tests/server/prove/test_smt_readings.py).
_BUILTIN_NAMES = frozenset("""
    true false not => and or xor = distinct ite implies iff if let forall exists lambda
    match as ! _ par NUMERAL DECIMAL STRING
    + - * / div mod rem abs <= < >= > to_real to_int is_int ^ divisible to-real to-int
    pi euler sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh root-obj ^0 /0
    div0 rem0 mod0 setminus bit2bool bvsdiv0 bvudiv0 bvsrem0 bvurem0 bvsmod0
    linear-order partial-order piecewise-linear-order tree-order transitive-closure
    select store const map default as-array array-ext subset union intersection
    difference complement insert singleton emptyset ext is
    bvnot bvand bvor bvxor bvnand bvnor bvxnor bvneg bvadd bvsub bvmul bvudiv bvurem
    bvsdiv bvsrem bvsmod bvshl bvlshr bvashr bvult bvule bvugt bvuge bvslt bvsle bvsgt
    bvsge bvcomp bvredor bvredand bvumul_noovfl bvsmul_noovfl bvsmul_noudfl
    bvudiv_i bvsdiv_i bvurem_i bvsrem_i bvsmod_i concat extract repeat zero_extend
    sign_extend rotate_left rotate_right ext_rotate_left ext_rotate_right bv2nat bv2int
    int2bv nat2bv
    fp to_fp to_fp_unsigned to_ubv to_sbv to_real fp.to_real
    RNE RNA RTP RTN RTZ roundNearestTiesToEven roundNearestTiesToAway roundTowardPositive
    roundTowardNegative roundTowardZero
    pble pbge pbeq at-most at-least
    Bool Int Real Array BitVec String RegLan RegEx Seq Set FloatingPoint Float16 Float32
    Float64 Float128 RoundingMode FP Unicode Char
""".split())
#: Prefixes of the theories' names (`str.len`, `seq.unit`, `re.*`, `fp.add`, `char.<=`).
_BUILTIN_PREFIXES = ("str.", "seq.", "re.", "fp.", "char.", "int.", "real.", "bv.", "_")
#: The commands that name what they declare, and how: right after the head (most), or in
#: a list of (name ...) after it (`define-funs-rec`, `declare-datatypes`).
_NAMING = frozenset({"declare-const", "declare-fun", "declare-sort", "define-const",
                     "define-fun", "define-fun-rec", "define-sort", "declare-datatype"})



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
    """1-based line and 0-based column of `offset` in `text`. The lines' starts are found
    once per text: counting them again for each diagnostic made 60,000 of them (a model's
    reply of stray atoms) cost 6.6 s."""
    starts = _line_starts(text)
    line = bisect.bisect_right(starts, offset)
    return line, offset - starts[line - 1]


@functools.lru_cache(maxsize=8)
def _line_starts(text: str) -> tuple[int, ...]:
    return (0, *(m.end() for m in re.finditer("\n", text)))


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
            end = n if nl < 0 else nl
            cr = text.find("\r", i, end)
            if cr >= 0 and text[cr:end].strip(" \t\r"):
                return items, _diag(text, cr, _CR_IN_COMMENT)
            i = end
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


Atom = tuple[str, int]  # a symbol as read, and where it starts
Tree = Atom | list["Tree"]


def _read(text: str, start: int, end: int) -> list[Tree]:
    """The items of the (already well-read, see `top_level`) text in [start, end) as
    trees: an atom is (symbol, offset), with a `|quoted|` symbol's bars taken off (SMT-LIB
    reads `|not|` as `not`); strings and comments are left out."""
    stack: list[list[Tree]] = [[]]
    i = start
    while i < end:
        c = text[i]
        if c == ";":
            nl = text.find("\n", i, end)
            i = end if nl < 0 else nl
        elif c == "(":
            stack.append([])
            i += 1
        elif c == ")":
            done = stack.pop()
            stack[-1].append(done)
            i += 1
        elif c in "\"|":
            close = _quoted_end(text, i)
            if c == "|":
                stack[-1].append((text[i + 1:close - 1], i))
            i = close
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < end and not text[j].isspace() and text[j] not in _SYMBOL_END:
                j += 1
            stack[-1].append((text[i:j], i))
            i = j
    return stack[0]


def _declared(item: list[Tree]) -> list[Atom]:
    """The names a declaration or definition (read by `_read`) introduces: the function,
    constant or sort, and a datatype's constructors and selectors."""
    head = item[0][0] if item and isinstance(item[0], tuple) else ""
    rest = item[1:]
    first = rest[0] if rest else []
    if head in _NAMING and isinstance(first, tuple):
        names = [first]
        if head == "declare-datatype" and len(rest) > 1:
            names += _constructors(_unpar(rest[1]))
        return names
    if not isinstance(first, list):
        return []
    if head == "define-funs-rec":
        return [d[0] for d in first if isinstance(d, list) and d and isinstance(d[0], tuple)]
    if head != "declare-datatypes" or len(rest) < 2 or not isinstance(rest[1], list):
        return []
    if any(isinstance(d, list) for d in first):  # SMT-LIB 2.6: ((T 0) ...) ((ctors) ...)
        names = [d[0] for d in first if isinstance(d, list) and d and isinstance(d[0], tuple)]
        for ctors in rest[1]:
            names += _constructors(_unpar(ctors))
        return names
    names = []  # z3's older form: (params) ((T ctor ...) ...)
    for datatype in rest[1]:
        if isinstance(datatype, list) and datatype and isinstance(datatype[0], tuple):
            names += [datatype[0], *_constructors(datatype[1:])]
    return names


def _unpar(tree: Tree) -> list[Tree]:
    """A datatype's constructor list, out of its `(par (X ...) (...))` when it has one."""
    if not isinstance(tree, list):
        return []
    if tree and tree[0] == ("par", tree[0][1] if isinstance(tree[0], tuple) else 0):
        return tree[2] if len(tree) > 2 and isinstance(tree[2], list) else []
    return tree


def _constructors(ctors: list[Tree]) -> list[Atom]:
    """Constructor and selector names: `c` (a nullary constructor of the older form),
    `(c)` or `(c (selector Sort) ...)`."""
    names: list[Atom] = []
    for ctor in ctors:
        if isinstance(ctor, tuple):
            names.append(ctor)
        elif ctor and isinstance(ctor[0], tuple):
            names.append(ctor[0])
            names += [sel[0] for sel in ctor[1:] if isinstance(sel, list) and sel and
                      isinstance(sel[0], tuple)]
    return names


def is_builtin(name: str) -> bool:
    """Whether z3 already defines `name` (see `_BUILTIN_NAMES`)."""
    return name in _BUILTIN_NAMES or name.startswith(_BUILTIN_PREFIXES)


def _redefinitions(pre: str, items: list[TopLevel]) -> list[Diagnostic]:
    """A diagnostic per name the preamble declares or defines that the solver defines."""
    return [_diag(pre, at, (f"{name!r} is defined by the solver: the preamble may not "
                            "declare or define it again (it would change what the goal, or "
                            "the checker's own negation of it, means)"), at + len(name))
            for name, at in _declared_by(pre, items) if is_builtin(name)]


def _named(text: str, items: list[TopLevel]) -> list[Atom]:
    """The names `(! term :named name)` gives in `items` (top-level items of `text`), with
    their offsets: z3 binds each to its term, over a built-in of that name."""
    found: list[Atom] = []
    todo: list[Tree] = [tree for t in items for tree in _read(text, t.start, t.end)]
    while todo:  # no recursion: a term may be nested deeper than Python's stack
        tree = todo.pop()
        if isinstance(tree, list):
            found += [b for a, b in itertools.pairwise(tree)
                      if isinstance(a, tuple) and a[0] == ":named" and isinstance(b, tuple)]
            todo.extend(tree)
    return sorted(found, key=lambda atom: atom[1])


def _named_builtins(text: str, items: list[TopLevel]) -> list[Diagnostic]:
    """A diagnostic per `:named` name in `items` that the solver defines (`false`, ...)."""
    return [_diag(text, at, (
        f"(! ... :named {name}) gives the term a name the solver defines: z3 would take "
        f"{name!r} to mean the named term wherever it is written (`(assert (! (= 1 1) "
        f":named false))` made the goal `false` PROVED); {name!r} is defined by the solver, "
        "choose another name"), at + len(name) + (2 if text[at] == "|" else 0))
        for name, at in _named(text, items) if is_builtin(name)]


def _declared_by(text: str, items: list[TopLevel]) -> list[Atom]:
    """The names `items` (top-level items of `text`) declare or define, with their offsets."""
    found: list[Atom] = []
    for t in items:
        if t.head in PREAMBLE_COMMANDS and t.head != "assert":
            for tree in _read(text, t.start, t.end):
                if isinstance(tree, list):
                    found += _declared(tree)
    return found


def declarations(text: str) -> list[tuple[str, int]]:
    """The names the top-level declarations and definitions of `text` introduce, each
    with its offset (as `_declared` reads them)."""
    return _declared_by(text, top_level(text)[0])


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
        if t.head in _RECURSIVE:
            problems.append(_diag(pre, t.start, (
                f"({t.head} ...) is not accepted: nothing checks that a recursive "
                "definition is well founded, and an ill-founded one ((define-fun-rec k () "
                "Int (+ k 1))) makes every goal provable; define the cases you need with "
                "define-fun and ite, or prove it with the coq backend, whose Fixpoint is "
                "checked to terminate"), t.end))
        elif t.head not in PREAMBLE_COMMANDS:
            what = f"({t.head or pre[t.start + 1:t.end - 1].strip()[:20]} ...)" \
                if pre[t.start] == "(" else f"the atom {pre[t.start:t.end][:40]!r}"
            problems.append(_diag(pre, t.start, (
                f"{what} is not allowed in the preamble: it holds declarations, definitions "
                "and assertions only"), t.end))
    if problem is None:
        problems += _redefinitions(pre, items) + _named_builtins(pre, items)
    problems = in_brief(problems)
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
    else:
        stated += in_brief(_named_builtins(stmt, goal))
    # The goal's own span: comments around it stay out, so none can swallow the `))`.
    term = stmt if stated else stmt[goal[0].start:goal[0].end]
    query = f"{lead}{term}))\n(check-sat)\n"
    below = pre.count("\n")
    problems += [_moved(d, below, len(lead)) for d in stated]
    return SmtScript(pre + query, pre, query, tuple(problems))


#: The most diagnostics of one kind a check reports; the rest are counted in one more.
MAX_DIAGNOSTICS = 20


def in_brief(found: list[Diagnostic]) -> list[Diagnostic]:
    """The first MAX_DIAGNOSTICS of `found`, and one counting the rest: a text of 60,000
    stray atoms made a 6 MB result, and a repair prompt of 8 MB charged to the caller."""
    if len(found) <= MAX_DIAGNOSTICS:
        return found
    more = len(found) - MAX_DIAGNOSTICS
    return [*found[:MAX_DIAGNOSTICS], Diagnostic(
        "error", f"... and {more} more problem(s) like these, not listed", None, None)]


def _moved(d: Diagnostic, lines: int, lead: int) -> Diagnostic:
    """A diagnostic of the statement's text moved to where that text sits in the source:
    `lines` lines down, and `lead` columns right on its first line."""
    def at(line: int | None, column: int | None) -> tuple[int | None, int | None]:
        if line is None:
            return None, column
        return line + lines, column + lead if column is not None and line == 1 else column
    return Diagnostic(d.severity, d.message, *at(d.line, d.column), *at(d.end_line, d.end_column))
