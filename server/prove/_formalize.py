"""Generate -> check -> repair: a model writes the formal text, the prover judges it.

An item with only `requirement_text` is sent to the injected `complete` callable with
the backend's instructions. The first fenced code block of the reply is checked; on
failure the verdict and diagnostics go back to the model, up to `max_attempts`
rounds. The loop stops at the first decisive verdict (PROVED, or REFUTED: the claim as
formalised is false). Every round is recorded as an `Attempt`. The rounds together end by
a deadline (the call's, or the settings' `formalize_max_s`): the model call or the check
under way then is cut, and the item is TIMEOUT, saying how many rounds finished.

No `response_format` is asked for (unlike CodeWorld's variants): the reply's one structural
need is a fenced block, which OpenAI's JSON modes cannot express. Wrapping the code in JSON
(`{"code": "..."}`) would let a grammar hold a small local model to the wrapper, but not to
SMT-LIB or Coq syntax, which only the prover judges, and it would make every model escape
its code inside a string, which costs capable models accuracy. A reply without a block is
a recorded FAILED attempt, and the model is told so in the next round.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ..fences import fenced_blocks
from ._characters import named
from ._smtlib import declarations, in_brief, is_command, line_col, top_level
from ._types import (
    Attempt,
    CheckOutcome,
    Diagnostic,
    FormalizeOptions,
    Obligation,
    Verdict,
)

__all__ = ["Complete", "Deadline", "Formalized", "extract_code", "formalize", "split_reply"]

_SMT_GOAL = re.compile(r"^[ \t]*;+[ \t]*goal\b.*$", re.MULTILINE | re.IGNORECASE)
_DECISIVE = frozenset({Verdict.PROVED, Verdict.REFUTED})


class Complete(Protocol):
    """A chat completion: OpenAI-shaped messages in, (text, usage) out."""

    async def __call__(self, messages: list[dict[str, str]], *, model: str,
                       temperature: float | None) -> tuple[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class Formalized:
    """The last obligation tried, its outcome, and every round."""

    obligation: Obligation
    outcome: CheckOutcome
    attempts: tuple[Attempt, ...]


def extract_code(reply: str) -> str | None:
    """The body of the first fenced code block of `reply`, or None."""
    block = next(fenced_blocks(reply), None)
    return block[1].strip("\n") if block is not None else None


def split_reply(obligation: Obligation, code: str) -> Obligation:
    """`obligation` completed with the model's code.

    smt: declarations before a `; goal` line join the preamble and the term after it
    is the statement; without the marker, a block whose last top-level item is a term
    is split the same way before that term (otherwise the whole block is the statement,
    which the checker refuses with a located diagnostic the model sees). Coq and Lean:
    the block is a full source, given as the proof.
    """
    if obligation.backend == "smt":
        m = _SMT_GOAL.search(code)
        if m is None:
            items, problem = top_level(code)
            if problem is not None or not items or is_command(items[-1]):
                return replace(obligation, statement=code, proof="")
            cut = items[-1].start
            preamble = "\n".join(p for p in (obligation.preamble.strip(),
                                               code[:cut].strip()) if p)
            return replace(obligation, preamble=preamble, statement=code[cut:].strip(),
                           proof="")
        preamble = "\n".join(p for p in (obligation.preamble.strip(), code[:m.start()].strip())
                             if p)
        return replace(obligation, preamble=preamble, statement=code[m.end():].strip(),
                       proof="")
    return replace(obligation, statement="", proof=code)


def _assumes(obligation: Obligation, current: Obligation) -> CheckOutcome | None:
    """FAILED when the model's smt code asserts something, or declares again a name the
    caller's context declares. It declares and defines what the requirement speaks of,
    and states the goal: an assumption of its own could be the goal itself (`(assert (> x
    5))` then `; goal (> x 5)` was PROVED, and not vacuous); and z3 lets a name be declared
    again at another sort, so `(define-fun x () Real 7.0)` after the caller's `x`, an Int
    below 3, made `(> x 5.0)` PROVED about another x."""
    if obligation.backend != "smt":
        return None
    added = current.preamble[len(obligation.preamble.strip()):]
    at = len(current.preamble) - len(added)
    items, _ = top_level(added)
    asserted = [t for t in items if t.head == "assert"]
    if asserted:
        line, column = line_col(current.preamble, at + asserted[0].start)
        return CheckOutcome(Verdict.FAILED, current.preamble, diagnostics=(Diagnostic(
            "error", "the formalisation may declare and define, not assert: an assumption "
            "of its own could be the goal itself; state what the requirement assumes as "
            "part of the goal, (=> assumptions conclusion)", line, column),),
            message="the formalisation added an assumption", prover_ran=False)
    theirs = {name for name, _ in declarations(obligation.preamble)}
    again = [(name, offset) for name, offset in declarations(added) if name in theirs]
    if not again:
        return None
    found = []
    for name, offset in again:
        line, column = line_col(current.preamble, at + offset)
        found.append(Diagnostic(
            "error", f"{name!r} is declared by the requirement's context: the formalisation "
            "may not declare or define it again (at another sort too: the goal would speak "
            "of something else); use it as it is", line, column))
    return CheckOutcome(Verdict.FAILED, current.preamble, diagnostics=tuple(in_brief(found)),
                        message=f"the formalisation declared {again[0][0]!r} again, which "
                                "the requirement's context declares", prover_ran=False)


def _first_prompt(obligation: Obligation, instructions: str) -> list[dict[str, str]]:
    user = f"Requirement:\n{obligation.requirement_text.strip()}\n"
    if obligation.preamble.strip():
        user += f"\nThis context is already in place before your code:\n{obligation.preamble}\n"
    if obligation.imports:
        user += f"\nThese modules are already imported: {', '.join(obligation.imports)}\n"
    return [{"role": "system", "content": instructions}, {"role": "user", "content": user}]


#: Tab, newline and carriage return: the characters besides the printable ones that a
#: formalisation may hold (see `_unreadable`).
_BLANKS = str.maketrans("\t\n\r", "   ")
#: Every character that may be refused (all but those and printable ASCII), found at C
#: speed; each is then asked `_refused`.
_CANDIDATE = re.compile(r"[^\t\n\r\x20-\x7e]")


def _readable(text: str) -> bool:
    """Whether every character of `text` is printable, a tab or a line break; at C speed,
    so that a text is read character by character only when it is not."""
    return text.translate(_BLANKS).isprintable()


def _refused(c: str) -> bool:
    return c not in "\t\n\r" and not c.isprintable()


def _shown(text: str) -> str:
    """`text` with each refused character (`_refused`) in view, one character wide so that
    columns hold: its Control Pictures sign (U+2400...) for C0 controls and DEL, else
    U+FFFD. Unseen, or breaking a line where the provers do not, they misled the model."""
    def stand_in(m: re.Match[str]) -> str:
        c = m.group()
        if not _refused(c):
            return c
        return chr(0x2400 + ord(c)) if ord(c) < 0x20 else "\u2421" if c == "\x7f" else "\ufffd"
    return text if _readable(text) else _CANDIDATE.sub(stand_in, text)


def _unreadable(code: str) -> CheckOutcome | None:
    """FAILED, with a diagnostic per character that is neither printable nor a tab or a
    line break, when the model's code holds one; no prover sees it.

    Such are NUL (which a caller's item may not hold either) and the other control
    characters, lone surrogates, invisible format characters (zero-width ones, a byte
    order mark, bidirectional overrides), line and paragraph separators, spaces other
    than U+0020, and private-use and unassigned code points (`str.isprintable`). Outside
    a comment or a string, Coq's lexer says "Undefined token" and z3 "unexpected
    character" about any of them, of a character the model cannot see in the listing it
    is shown; Python's `splitlines` breaks lines where the provers do not (U+000C,
    U+2028), so the listing's line numbers were not the diagnostics'; a lone surrogate
    cannot be written for a prover at all. Inside a comment or a string the provers take
    most of them, but a formalisation has no use for them there either, and refusing them
    wherever they are keeps one rule for both provers' readers and ours.
    The diagnostics are located in the code as written, which the outcome quotes.
    """
    if _readable(code):
        return None
    found = [m.start() for m in _CANDIDATE.finditer(code) if _refused(m.group())]
    diagnostics = []
    for i in found:
        line, column = line_col(code, i)
        fix = "write a plain space" if unicodedata.category(code[i]) == "Zs" else "remove it"
        diagnostics.append(Diagnostic(
            "error", f"{named(code[i])}, which the provers cannot read and most displays do "
            f"not show: {fix}", line, column, line, column + 1))
    return CheckOutcome(Verdict.FAILED, code, diagnostics=tuple(in_brief(diagnostics)),
                        message=f"the formalisation holds {named(code[found[0]])} on line "
                                f"{diagnostics[0].line}, which the provers cannot read",
                        prover_ran=False)


#: The most lines of the checked source a repair prompt quotes back.
_FEEDBACK_LINES = 400
#: The most characters of the source a FAILED attempt keeps when it was too large.
_KEPT_CHARS = 4096


#: How the repair prompt heads the listing: only a source a prover read is "checked".
_CHECKED = "The checked source"
_REFUSED = "The source, refused before any prover read it"
_NO_CODE = "Your reply, which holds no code block (so nothing was checked)"


def _feedback(outcome: CheckOutcome, heading: str) -> str:
    """What the model is told after a failed round: at most MAX_DIAGNOSTICS problems and
    `_FEEDBACK_LINES` lines of the source (a reply of 60,000 stray atoms made a repair
    prompt of 8 MB, which the caller pays for as tokens), under `heading`."""
    lines = [f"The checker answered {outcome.verdict.value.upper()}: {outcome.message}"]
    for d in in_brief(list(outcome.diagnostics)):
        # 1-based, as the listing's lines and the API's columns: "column 7" was the
        # caller's column 8.
        where = "" if d.line is None else f"line {d.line}: " if d.column is None else \
            f"line {d.line}, column {d.column + 1}: "
        lines.append(f"- {d.severity}: {where}{d.message[:500]}")
    source = _shown(outcome.source).splitlines()
    numbered = "\n".join(f"{i:4d} | {text[:200]}"
                         for i, text in enumerate(source[:_FEEDBACK_LINES], 1))
    if len(source) > _FEEDBACK_LINES:
        numbered += f"\n     ... ({len(source) - _FEEDBACK_LINES} more lines)"
    lines += ["", f"{heading}, with line numbers:", numbered, "",
              "Fix the problem and reply with the whole corrected code block."]
    return "\n".join(lines)


def _too_large(current: Obligation, limit: int) -> CheckOutcome | None:
    """FAILED when the item the model completed is larger than a caller's may be: its
    code was checked however large (a direct item past the limit is refused)."""
    # surrogatepass: a lone surrogate is measured here, and refused by `_unreadable`.
    size = sum(len(t.encode(errors="surrogatepass"))
               for t in (current.preamble, current.statement, current.proof))
    if size <= limit:
        return None
    kept = (current.preamble + "\n" + current.statement + current.proof)[:_KEPT_CHARS]
    return CheckOutcome(Verdict.FAILED, kept + "\n... (cut)", message=(
        f"the formalisation is {size} bytes: at most {limit} are checked (as for an item "
        "a caller writes); write it shorter"), prover_ran=False)


@dataclass(frozen=True)
class Deadline:
    """When the loop must end (event-loop time, `asyncio.timeout_at`), and what set it:
    "the call's deadline" or the settings' bound, with its length in seconds."""

    at: float
    why: str
    seconds: float


def _within(deadline: Deadline | None) -> asyncio.Timeout:
    return asyncio.timeout_at(None if deadline is None else deadline.at)


async def formalize(obligation: Obligation, *, instructions: str, options: FormalizeOptions,
                    complete: Complete,
                    check: Callable[[Obligation], Awaitable[CheckOutcome]],
                    max_source_bytes: int, deadline: Deadline | None = None) -> Formalized:
    """Run the generate -> check -> repair loop for one item; the model's completed item
    may be `max_source_bytes` long, as a caller's. No model call or check runs past
    `deadline`: the item then ends TIMEOUT (`_out_of_time`)."""
    messages = _first_prompt(obligation, instructions)
    attempts: list[Attempt] = []
    current = obligation
    outcome = CheckOutcome(Verdict.ERROR, "", message="no attempt was made")
    for index in range(max(1, options.max_attempts)):
        started = time.monotonic()
        try:
            async with _within(deadline) as bound:
                reply, usage = await complete(messages, model=options.model,
                                              temperature=options.temperature)
        except Exception as exc:  # the model call is another service's: record, never crash
            if bound.expired():
                return _out_of_time(current, attempts, deadline, index, started, "", "model")
            # An unknown model, a key refusing it, an upstream down: the item's ERROR says
            # which, where it was "internal error" with a traceback logged per item.
            outcome = CheckOutcome(Verdict.ERROR, "", message=f"the model call to "
                                   f"{options.model!r} failed: {exc}")
            attempts.append(Attempt(index=index, source="", verdict=Verdict.ERROR,
                                    diagnostics=(), prompt_tokens=0, completion_tokens=0,
                                    duration_s=time.monotonic() - started,
                                    message=outcome.message))
            break
        code = extract_code(reply)
        heading = _CHECKED
        if code is None:
            outcome = CheckOutcome(Verdict.FAILED, reply, prover_ran=False,
                                   message="the reply holds no fenced code block")
            heading = _NO_CODE
        else:
            current = split_reply(obligation, code)
            refused = (_too_large(current, max_source_bytes) or _unreadable(code)
                       or _assumes(obligation, current))
            if refused is None:
                try:
                    async with _within(deadline) as bound:
                        refused = await check(current)
                except TimeoutError:
                    if not bound.expired():
                        raise
                    return _out_of_time(current, attempts, deadline, index, started, code,
                                        "prover", usage)
            outcome = refused
            heading = _CHECKED if outcome.prover_ran else _REFUSED
        attempts.append(Attempt(
            index=index, source=outcome.source, verdict=outcome.verdict,
            diagnostics=outcome.diagnostics, message=outcome.message,
            prompt_tokens=int(usage.get("prompt_tokens", 0) or 0),
            completion_tokens=int(usage.get("completion_tokens", 0) or 0),
            duration_s=time.monotonic() - started))
        if outcome.verdict in _DECISIVE:
            break
        messages = [*messages, {"role": "assistant", "content": reply},
                    {"role": "user", "content": _feedback(outcome, heading)}]
    return Formalized(current, outcome, tuple(attempts))


def _out_of_time(current: Obligation, attempts: list[Attempt], deadline: Deadline | None,
                 index: int, started: float, code: str, waiting: str,
                 usage: dict[str, Any] | None = None) -> Formalized:
    """TIMEOUT: `deadline` came while round `index` waited for the `waiting` ("model" or
    "prover"). The cut round is recorded; the item keeps the last finished round's source
    and diagnostics, and a diagnostic saying how many rounds finished."""
    assert deadline is not None
    what = "the model's reply" if waiting == "model" else "the prover's verdict"
    message = (f"the formalisation ran out of time after {index} round(s) of "
               f"generate -> check -> repair ({deadline.why}, {deadline.seconds:g} s, came "
               f"while round {index + 1} waited for {what})")
    usage = usage or {}
    cut = Attempt(index=index, source=code, verdict=Verdict.TIMEOUT, diagnostics=(),
                  prompt_tokens=int(usage.get("prompt_tokens", 0) or 0),
                  completion_tokens=int(usage.get("completion_tokens", 0) or 0),
                  duration_s=time.monotonic() - started, message=message)
    last = attempts[-1] if attempts else None
    said = Diagnostic("error", message + (
        f"; the diagnostics before this one are round {index}'s" if last and
        last.diagnostics else ""))
    outcome = CheckOutcome(Verdict.TIMEOUT, last.source if last else code,
                           (*(last.diagnostics if last else ()), said), message=message,
                           prover_ran=False)
    return Formalized(current, outcome, (*attempts, cut))
