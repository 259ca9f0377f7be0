"""cvc5 as a warm SMT solver: how it is started, and how its replies differ from z3's.

The protocol is `SolverWorker`'s (`_solver`): the same posed script, scopes, sentinels,
clean-solver check, vacuity check and limits as z3, in the same jail. cvc5 (1.0.3, Debian
12's) runs as::

    cvc5 --lang smt2 --incremental --produce-models --produce-assertions
         --no-filesystem-access

reading commands from its standard input as they come: `--incremental` for push/pop and
more than one `check-sat`, `--produce-models` for `(get-model)` (a REFUTED item's
counterexample, returned as cvc5 prints it: `(` then one `define-fun` per symbol, then
`)`), `--produce-assertions` for `(get-assertions)` (the clean-solver check), and
`--no-filesystem-access` so that no option could name a file even if one got through
(`_smtlib` lets none through, and the jail gives it nothing of the host's to write). It
starts with `(set-logic ALL)`.

Where its replies differ from z3's:

* `(echo "x")` prints `"x"`, quotes included;
* `(get-assertions)` prints `(` and `)` on two lines when empty;
* an error reads `(error "Parse Error: <stdin>:L.C: message` followed by the line read and a
  caret, then `")`; cvc5 numbers the lines of its standard input from 0 (and leaves the
  location out on line 0, which is always our own `(set-logic ALL)`) and columns from 1;
* after an error in what it reads (an unknown symbol, a sort mismatch, a theory symbol
  declared again: cvc5 refuses `(define-fun not ...)` itself, or an operator it does not
  support in its default mode) cvc5 exits: the item is FAILED with that error, and the
  pool starts a new worker for the next one. An exit on `(error "std::bad_alloc")` (out of
  memory), or with no error printed, is ERROR, as for z3.

cvc5 prints its warnings on its standard error, read with its output: while it reads a
command, `<stdin>:L.C: warning: <message>` (L counted from 0, as in errors; C is where its
reader stands, just past what it warns of: `Attribute ':bar' not supported (ignoring this
and all following uses)`, once per process and attribute; `symbol `a' bound multiple times
by let; ...`), which becomes a warning diagnostic located as errors are; and while it
builds the model `(get-model)` prints, before the model, `The model was computed to have
strings of length 100000. Based on the current value of option --strings-model-max-len,
we only allow strings up to length 65536` (a string longer than 2^16 in the model), which
is a warning diagnostic too, never part of the counterexample (`SolverWorker._model`).

Only the first line of cvc5's first error is ever passed on (and only the first line of
what it printed before an exit that is ERROR): cvc5 1.0.3 quotes the line it read after
its message, and when an unknown `|quoted symbol|` holds a line break it quotes from past
the end of that line, dumping tens of kilobytes of its own heap (NUL bytes, and the text
of the items a warm cvc5 checked before, another caller's among them) into the error.
"""

from __future__ import annotations

import re

from ._solver import Reply, SolverWorker
from ._types import Diagnostic

__all__ = ["Cvc5Worker", "cvc5_error", "cvc5_warning"]

_ERROR = re.compile(r'^\(error "(?:Parse Error: )?(?:<stdin>:(\d+)\.(\d+): )?(.*)"\)$',
                    re.DOTALL)
#: A warning cvc5's reader prints: `<stdin>:L.C: warning: message`.
_WARNING = re.compile(r"^<stdin>:(\d+)\.(\d+): (?:warning: )?(.*)$")
#: The most characters of cvc5's own words a message quotes.
_MOST = 300
#: What cvc5 says when it runs out of memory inside a command (not the item's fault).
_OUT_OF_MEMORY = ("std::bad_alloc", "out of memory")


class Cvc5Worker(SolverWorker):
    """One long-lived cvc5 process in the jail."""

    solver = "cvc5"
    SETUP = "(set-logic ALL)\n"
    CLEAN = ("(", ")", "(:assertion-stack-levels 0)")
    STOPS_AT_ERROR = True

    @classmethod
    def argv(cls, path: str) -> list[str]:
        return [path, "--lang", "smt2", "--incremental", "--produce-models",
                "--produce-assertions", "--no-filesystem-access"]

    def _echoed(self, nonce: str) -> str:
        return f'"{nonce}"'

    def _error(self, text: str, to_source: dict[int, int]) -> Diagnostic:
        return cvc5_error(text, to_source)

    def _warning(self, line: str, to_source: dict[int, int]) -> Diagnostic:
        return cvc5_warning(line, to_source)

    def _exit_errors(self, output: str, to_source: dict[int, int]) -> list[Diagnostic]:
        # cvc5 stops at its first error: anything after it is not cvc5 speaking of the item.
        errors = Reply(output.splitlines(), to_source, cvc5_error).errors[:1]
        if any(d.message.lower() in _OUT_OF_MEMORY for d in errors):
            return []
        return errors

    @classmethod
    def exit_words(cls, output: str) -> str:
        return _first_line(output)


def cvc5_error(text: str, to_source: dict[int, int]) -> Diagnostic:
    """cvc5's `(error "Parse Error: <stdin>:L.C: message ...")` as a diagnostic: the
    message's first line only, located in the obligation's source when stream line L
    (counted from 0) is one of its lines. What follows the first line is cvc5 quoting
    the line it read, and may be much worse (see the module): never passed on."""
    m = _ERROR.match(text)
    if m is None:
        return Diagnostic("error", _first_line(text))
    message = _first_line(m.group(3).replace('""', '"'))
    if m.group(1) is None:
        return Diagnostic("error", message)
    line = to_source.get(int(m.group(1)) + 1)
    column = max(int(m.group(2)) - 1, 0)
    if line is None:
        return Diagnostic("error", message)
    return Diagnostic("error", message, line, column, line, column + 1)


def cvc5_warning(line: str, to_source: dict[int, int]) -> Diagnostic:
    """A line cvc5 printed that is no answer and no error, as a warning diagnostic: its
    reader's `<stdin>:L.C: warning: message` located in the obligation's source when
    stream line L (counted from 0) is one of its lines (C, counted from 0, is where the
    reader stood), without cvc5's stream position; any other line as it is."""
    m = _WARNING.match(line)
    if m is None:
        return Diagnostic("warning", line.strip()[:_MOST])
    message = m.group(3).strip()[:_MOST]
    where = to_source.get(int(m.group(1)) + 1)
    if where is None:
        return Diagnostic("warning", message)
    column = int(m.group(2))
    return Diagnostic("warning", message, where, column, where, column + 1)


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].strip()[:_MOST]
