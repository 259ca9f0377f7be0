"""Generate -> check -> repair with a scripted model and the real provers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scillm.server.prove import (
    FormalizeOptions,
    FormalizeUnavailable,
    Limits,
    Obligation,
    ProveEngine,
    ProveSettings,
    Verdict,
    extract_code,
)

FIXTURES = Path(__file__).parent / "fixtures"


class ScriptedModel:
    """Replies from a JSON fixture, in order; records what it was asked."""

    def __init__(self, fixture: str) -> None:
        data = json.loads((FIXTURES / fixture).read_text())
        self.requirement: str = data["requirement"]
        self._replies: list[dict[str, Any]] = data["replies"]
        self.calls: list[tuple[list[dict[str, str]], str, float | None]] = []

    async def __call__(self, messages: list[dict[str, str]], *, model: str,
                       temperature: float | None) -> tuple[str, dict[str, Any]]:
        reply = self._replies[len(self.calls)]
        self.calls.append((messages, model, temperature))
        return reply["text"], reply["usage"]


async def test_coq_fails_then_repairs_then_proves(engine: ProveEngine) -> None:
    model = ScriptedModel("formalize_coq.json")
    items = [Obligation("req-1", "coq", requirement_text=model.requirement)]
    run = engine.run_batch(items, formalize=FormalizeOptions(model="scripted", max_attempts=3,
                                                             temperature=0.2), complete=model)
    results = [r async for r in run]
    (result,) = results
    assert result.verdict is Verdict.PROVED
    assert [a.verdict for a in result.attempts] == [Verdict.FAILED] * 2 + [Verdict.PROVED]
    first = result.attempts[0]
    assert first.diagnostics[0].line == 3 and "lia" in first.diagnostics[0].message
    assert "admitted" in result.attempts[1].message
    assert [a.prompt_tokens for a in result.attempts] == [120, 260, 400]
    assert result.source.startswith("Require Import Lia.\nTheorem add_zero")
    # the diagnostics went back to the model, with the backend's instructions first
    system = model.calls[0][0][0]
    assert system["role"] == "system" and "Coq" in system["content"]
    feedback = model.calls[1][0][-1]["content"]
    assert "line 3, column 13" in feedback and "lia" in feedback  # 1-based, as the API
    assert model.calls[0][1:] == ("scripted", 0.2)
    summary = run.summary
    assert summary.prompt_tokens == 780 and summary.completion_tokens == 119
    assert summary.counts[Verdict.PROVED] == 1


async def test_smt_reply_without_code_is_retried(engine: ProveEngine) -> None:
    model = ScriptedModel("formalize_smt.json")
    items = [Obligation("req-2", "smt", requirement_text=model.requirement)]
    run = engine.run_batch(items, formalize=FormalizeOptions(model="m"), complete=model)
    (result,) = [r async for r in run]
    assert [a.verdict for a in result.attempts] == [Verdict.FAILED, Verdict.PROVED]
    assert "no fenced code block" in result.attempts[0].message
    assert result.source == "(declare-const x Int)\n(assert (not (> (+ x 1) x)))\n(check-sat)\n"


async def test_attempts_are_bounded(engine: ProveEngine) -> None:
    model = ScriptedModel("formalize_coq.json")
    items = [Obligation("req-3", "coq", requirement_text=model.requirement)]
    run = engine.run_batch(items, formalize=FormalizeOptions(model="m", max_attempts=2),
                           complete=model)
    (result,) = [r async for r in run]
    assert result.verdict is Verdict.FAILED
    assert len(result.attempts) == len(model.calls) == 2


async def test_requirement_without_model_is_refused(engine: ProveEngine) -> None:
    items = [Obligation("req-4", "coq", requirement_text="anything")]
    with pytest.raises(FormalizeUnavailable) as info:
        engine.run_batch(items)
    assert info.value.item_id == "req-4"
    assert "SCILLM_PROVE_MODEL" in str(info.value) and "formalize.model" in str(info.value)


def test_extract_code_takes_first_fenced_block() -> None:
    assert extract_code("a\n```lean\ntheorem x : True := trivial\n```\n```\nb\n```") == \
        "theorem x : True := trivial"
    assert extract_code("no code") is None


def test_a_reply_shaped_against_the_fence_pattern_costs_no_more_than_its_length() -> None:
    """The fence was found by a regex whose header parts overlap (`[\\w+-]*[^\\n]*`): a
    reply of "```" and 120,000 letters held the event loop, and so the whole mesh, for
    8 s, a megabyte for about 15 minutes. Both readers of fences (the formalize loop's and
    the agent's auto-run) are given two megabytes of it in a child process, which has a
    minute: the regex took hours."""
    import subprocess
    import sys

    script = (
        "from scillm.server.prove import extract_code\n"
        "from scillm.server.agent._history import find_code_block\n"
        "for reply in ('```' + 'a' * 2_000_000, '```py' + ' ' * 2_000_000 + 'x'):\n"
        "    assert extract_code(reply) is None\n"
        "    assert find_code_block(reply, {'py': 'python'}) is None\n"
        "reply = '```\\n' + '`' * 2_000_000  # one empty block, then fences without lines\n"
        "assert extract_code(reply) == ''\n"
        "assert find_code_block(reply, {'': 'python'}) is None\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_fences_are_read_as_they_were() -> None:
    from scillm.server.agent._history import find_code_block

    assert extract_code("```smt2 extra words\n(> 1 0)\n```") == "(> 1 0)"
    assert extract_code("``` \t coq\nA.\n```tail```\nB.\n```") == "A."
    assert extract_code("```\n\nbody\n\n```") == "body"
    assert extract_code("```x") is None and extract_code("```x\nno end") is None
    text = "```text\nnot code\n```\n``` Python3 \nprint(1)\n```"
    assert find_code_block(text, {"python3": "python"}) == ("python", "print(1)\n")
    assert find_code_block("```\n```\n```py\nx = 1\n```", {"py": "python"}) == (
        "python", "x = 1\n")
    assert find_code_block("```PY\n  \n```\n```py\ny\n```", {"py": "python"}) == (
        "python", "y\n")


def test_an_smt_block_without_the_goal_marker_is_split_before_its_last_term() -> None:
    from scillm.server.prove._formalize import split_reply

    item = Obligation("r", "smt", requirement_text="x + 1 > x",
                      preamble="(declare-fun f (Int) Int)")
    split = split_reply(item, "(declare-const x Int)\n(assert (> x 0))\n(> (+ x 1) x)")
    assert split.preamble == "(declare-fun f (Int) Int)\n(declare-const x Int)\n(assert (> x 0))"
    assert split.statement == "(> (+ x 1) x)"
    script = split_reply(item, "(declare-const x Int)\n(assert (not (> x 0)))\n(check-sat)")
    assert script.statement.startswith("(declare-const")  # refused by the checker, with a reason


class _Replies:
    """A model answering with `texts` in turn (the last one again after them)."""

    def __init__(self, *texts: str) -> None:
        self.texts = texts
        self.calls: list[list[dict[str, str]]] = []

    async def __call__(self, messages: list[dict[str, str]], *, model: str,
                       temperature: float | None) -> tuple[str, dict[str, Any]]:
        self.calls.append(messages)
        return self.texts[min(len(self.calls), len(self.texts)) - 1], {}


async def _formalized(engine: ProveEngine, item: Obligation, model: _Replies,
                      attempts: int = 2) -> Any:
    run = engine.run_batch([item], formalize=FormalizeOptions(model="m",
                                                              max_attempts=attempts),
                           complete=model)
    (result,) = [r async for r in run]
    return result


async def test_a_models_code_is_held_to_the_size_of_a_callers(engine: ProveEngine) -> None:
    """A direct item past max_source_bytes (256 KiB) is refused; the same text written by
    the model was checked, and came back PROVED."""
    big = "```smt2\n(declare-const x Int)\n" + "; padding\n" * 30_000 + "; goal\n(= x x)\n```"
    model = _Replies(big)
    result = await _formalized(engine, Obligation("big", "smt", requirement_text="x = x"),
                               model, attempts=1)
    assert result.verdict is Verdict.FAILED, result
    assert "bytes" in result.message and "262144" in result.message, result.message
    assert len(result.attempts[0].source) < 10_000  # not the whole of it again


async def test_a_flood_of_problems_is_reported_in_brief(engine: ProveEngine) -> None:
    """60,000 stray atoms were 60,000 diagnostics (each located by rescanning the text,
    6.6 s on the event loop), a 6 MB result and a repair prompt of 8 MB, charged to the
    caller as tokens."""
    flood = "```smt2\n" + "a " * 60_000 + "\n; goal\ntrue\n```"
    model = _Replies(flood, "```smt2\n; goal\ntrue\n```")
    result = await _formalized(engine, Obligation("flood", "smt", requirement_text="true"),
                               model)
    first = result.attempts[0]
    assert first.verdict is Verdict.FAILED and len(first.diagnostics) <= 21, \
        len(first.diagnostics)
    assert "more" in first.diagnostics[-1].message
    feedback = model.calls[1][-1]["content"]
    assert len(feedback) < 40_000, len(feedback)
    assert result.verdict is Verdict.PROVED


async def test_the_model_may_not_declare_again_what_the_callers_context_declares(
        engine: ProveEngine) -> None:
    """z3 lets a name be declared again at another sort: the caller's `x` (an Int below 3)
    was shadowed by the model's `(define-fun x () Real 7.0)`, and `(> x 5.0)` came back
    PROVED, not vacuous, about a different x."""
    model = _Replies("```smt2\n(define-fun x () Real 7.0)\n; goal\n(> x 5.0)\n```")
    result = await _formalized(engine, Obligation(
        "ovl", "smt", requirement_text="x is more than 5",
        preamble="(declare-const x Int)\n(assert (< x 3))"), model, attempts=1)
    assert result.verdict is Verdict.FAILED, result
    assert "'x'" in result.message or any("'x'" in d.message for d in result.diagnostics)


_DOUBLE = "Definition double (n : nat) := n + n + 1."


@pytest.mark.parametrize(("shadow", "said"), [
    ("Module M. Definition double (n : nat) := 2 * n. End M. Import M.", "context"),
    ("Definition double (n : nat) := 2 * n.", "already exists"),  # Coq's own refusal
])
async def test_a_coq_formalisation_may_not_change_what_the_context_means(
        engine: ProveEngine, shadow: str, said: str) -> None:
    """The caller's preamble defines `double`; a model that defined its own `double` and
    proved `double n = 2 * n` of it was PROVED (with only an info note), a theorem that
    reads word for word as the requirement and means something else. The statement is
    read a third time, with the imports and the caller's preamble, and the theorem must
    have that type too."""
    model = _Replies(f"```coq\n{shadow}\nTheorem double_spec : forall n : nat, "
                     "double n = 2 * n.\nProof. intro n. unfold double. reflexivity. Qed.\n```")
    result = await _formalized(engine, Obligation(
        "shadow", "coq", requirement_text="double n = 2 * n", preamble=_DOUBLE), model,
        attempts=1)
    assert result.verdict is Verdict.FAILED, result
    assert said in result.message, result.message


async def test_a_coq_formalisation_that_uses_the_context_as_it_is_is_proved(
        engine: ProveEngine) -> None:
    model = _Replies("```coq\nTheorem double_spec : forall n : nat, double n = n + n + 1.\n"
                     "Proof. reflexivity. Qed.\n```")
    result = await _formalized(engine, Obligation(
        "honest", "coq", requirement_text="double n = n + n + 1", preamble=_DOUBLE), model,
        attempts=1)
    assert result.verdict is Verdict.PROVED, result


_PRINTS = ('Pwd.\nCheck nat.\nPrint bool.\nCompute 1 + 1.\n'
           'Goal True. idtac "Error: printed, not failed". exact I. Qed.\n')


async def test_what_a_coq_formalisation_prints_is_not_fed_back_as_an_error(
        engine: ProveEngine) -> None:
    """The repair prompt began "The checker answered FAILED: /tmp nat : Set Inductive bool
    : Set := ..." (what Pwd, Check, Print, Compute and idtac printed), an error diagnostic
    before the one real error; the caller got it as the attempt's first error too. The
    model is told what failed, and a proof that prints is judged on the proof alone."""
    model = _Replies(f"```coq\n{_PRINTS}Theorem t : 1 + 1 = 3.\nProof. reflexivity. Qed.\n```",
                     f"```coq\n{_PRINTS}Theorem t : 1 + 1 = 2.\nProof. reflexivity. Qed.\n```")
    result = await _formalized(engine, Obligation("prints", "coq",
                                                  requirement_text="1 + 1 = 2"), model)
    first = result.attempts[0]
    assert first.verdict is Verdict.FAILED
    assert first.message == 'Unable to unify "3" with "1 + 1".', first.message
    assert [(d.message, d.line) for d in first.diagnostics] == [(first.message, 7)]
    told = model.calls[1][-1]["content"].split("The checked source")[0]
    assert 'FAILED: Unable to unify "3" with "1 + 1".' in told, told
    assert not any(p in told for p in ("/tmp", "nat", "bool", "printed")), told
    assert result.verdict is Verdict.PROVED and result.attempts[1].diagnostics == ()


#: A true formalisation per backend, with {} where a character goes.
_HOLDS = {"coq": "```coq\nTheorem t : 1 + 1 = 2.\nProof. refl{}exivity. Qed.\n```",
          "smt": "```smt2\n(declare-const x Int)\n; goal\n(> (+ x 1){} x)\n```"}
#: Where the character sits in the code block: line, 0-based column.
_AT = {"coq": (2, 11), "smt": (3, 10)}


@pytest.mark.parametrize("backend", list(_HOLDS))
@pytest.mark.parametrize(("char", "named"), [
    ("\x00", "a NUL byte (U+0000)"),
    ("\x1b", "the control character U+001B"),
    ("\x0c", "the control character U+000C"),  # Python's splitlines breaks a line there
    ("\x85", "the control character U+0085"),
    ("\u00a0", "U+00A0 NO-BREAK SPACE"),
    ("\u200b", "U+200B ZERO WIDTH SPACE"),
    ("\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("\u2028", "U+2028 LINE SEPARATOR"),
    ("\ud800", "a lone surrogate U+D800"),
])
async def test_a_character_the_provers_cannot_read_is_named_to_the_model(
        engine: ProveEngine, backend: str, char: str, named: str) -> None:
    """A reply holding a NUL byte (or another control or invisible character) came back
    FAILED with Coq's "Syntax Error: Lexer: Undefined token" or z3's "unexpected
    character", about a character the model cannot see in the source it was shown; a
    lone surrogate raised UnicodeEncodeError out of the loop. The model is told which
    character, where, in the code it wrote, and can repair it."""
    model = _Replies(_HOLDS[backend].format(char), _HOLDS[backend].format(""))
    result = await _formalized(engine, Obligation("c", backend, requirement_text="1 + 1 = 2"),
                               model)
    first = result.attempts[0]
    assert first.verdict is Verdict.FAILED, first
    assert first.source == model.texts[0].split("\n", 1)[1].rsplit("\n```", 1)[0]
    (d,) = first.diagnostics
    assert named in d.message and (d.line, d.column) == _AT[backend], d
    assert named in first.message and f"line {_AT[backend][0]}" in first.message
    told = model.calls[1][-1]["content"]
    line, column = _AT[backend]
    assert named in told and f"line {line}, column {column + 1}" in told, told
    listing = told.split("refused before any prover read it, with line numbers:\n")[1]
    listing = listing.split("\n\n")[0]
    # Shown (so it cannot pass unseen, nor break a line the provers do not break).
    assert char not in listing, listing
    assert len(listing.splitlines()) == first.source.count("\n") + 1, listing
    assert result.verdict is Verdict.PROVED, result


@pytest.mark.parametrize("backend", list(_HOLDS))
async def test_a_nul_byte_left_in_the_last_attempt_is_the_callers_diagnostic(
        engine: ProveEngine, backend: str) -> None:
    """With the repair budget spent, the caller gets FAILED and the located diagnostic
    naming the NUL byte, never a stack trace or a prover's lexer error."""
    model = _Replies(_HOLDS[backend].format("\x00"))
    result = await _formalized(engine, Obligation("n", backend, requirement_text="1 + 1 = 2"),
                               model, attempts=2)
    assert result.verdict is Verdict.FAILED and len(result.attempts) == 2, result
    (d,) = result.diagnostics
    assert d.severity == "error" and "NUL byte" in d.message, d
    assert (d.line, d.column) == _AT[backend]
    assert "NUL byte" in result.message


@pytest.mark.parametrize(("reply", "heading"), [
    ("I would write (> x 0).", "Your reply, which holds no code block (so nothing was "
                               "checked), with line numbers:"),
    ("```smt2\n(declare-const x Int)\n; goal\n(> x\x01 0)\n```",
     "The source, refused before any prover read it, with line numbers:"),
    ("```smt2\n(declare-const x Int)\n(assert (> x 0))\n; goal\n(> x 0)\n```",
     "The source, refused before any prover read it, with line numbers:"),
    ("```smt2\n(declare-const x Int)\n(check-sat)\n; goal\n(> x 0)\n```",
     "The source, refused before any prover read it, with line numbers:"),
    ("```smt2\n(declare-const x Int)\n; goal\n(> x undeclared)\n```",
     "The checked source, with line numbers:"),
], ids=["no-code", "control-character", "assertion", "smt-rule", "checked"])
async def test_the_repair_prompt_calls_checked_only_what_a_prover_read(
        engine: ProveEngine, reply: str, heading: str) -> None:
    """The repair prompt headed every listing "The checked source": a reply without code,
    code holding a control character, an assertion of the model's own and a command the
    SMT rule refuses were never read by a prover. Only what z3 read is "checked"."""
    model = _Replies(reply, "```smt2\n; goal\ntrue\n```")
    result = await _formalized(engine, Obligation("h", "smt", requirement_text="x > 0"),
                               model)
    assert result.attempts[0].verdict is Verdict.FAILED, result
    told = model.calls[1][-1]["content"]
    assert heading in told, told
    assert told.count("with line numbers:") == 1, told


class _Stalls:
    """A model whose first reply is `first` and whose later calls never end (a model
    slower than any bound); `stalled` is set once one is waiting."""

    def __init__(self, first: str) -> None:
        self.first = first
        self.calls = 0
        self.stalled = asyncio.Event()

    async def __call__(self, messages: list[dict[str, str]], *, model: str,
                       temperature: float | None) -> tuple[str, dict[str, Any]]:
        self.calls += 1
        if self.calls == 1:
            return self.first, {"prompt_tokens": 10, "completion_tokens": 5}
        self.stalled.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_the_formalize_loop_ends_by_its_bound_with_the_last_rounds_diagnostics(
        tmp_path: Path) -> None:
    """max_seconds bounds each prover run, not the rounds: a model that never answered a
    repair held the item, and the whole batch, for ever. The rounds end by the settings'
    `formalize_max_s`: the item is TIMEOUT, says how many rounds finished, and keeps the
    last one's source and diagnostics; the cut round is recorded."""
    model = _Stalls("```smt2\n(declare-const x Int)\n; goal\n(> x undeclared)\n```")
    settings = ProveSettings(scratch_dir=tmp_path, formalize_max_s=8.0)
    async with ProveEngine(settings) as engine, asyncio.timeout(90):
        run = engine.run_batch([Obligation("slow", "smt", requirement_text="x > 0")],
                               formalize=FormalizeOptions(model="m", max_attempts=3),
                               complete=model)
        (result,) = [r async for r in run]
    assert model.stalled.is_set()
    assert result.verdict is Verdict.TIMEOUT, result
    assert "ran out of time after 1 round(s)" in result.message, result.message
    assert "formalize_max_s, 8 s" in result.message and "model's reply" in result.message
    first, cut = result.attempts
    assert first.verdict is Verdict.FAILED and "undeclared" in first.diagnostics[0].message
    assert (cut.verdict, cut.message) == (Verdict.TIMEOUT, result.message)
    assert result.source == first.source
    *kept, said = result.diagnostics
    assert tuple(kept) == first.diagnostics, result.diagnostics
    assert said.severity == "error" and "ran out of time" in said.message


#: 10^12 steps of negb in constant memory: no check ends in a test's time.
_SPINS = ("```coq\nFixpoint spin (n : nat) (b : bool) : bool :=\n"
          "  match n with 0 => b | S m => spin m (negb b) end.\n"
          + "".join(f"Fixpoint spin{i} (n : nat) (b : bool) : bool :=\n  match n with 0 => b "
                    f"| S m => spin{i} m (spin{i - 1 if i > 2 else ''} 1000 b) end.\n"
                    for i in (2, 3, 4))
          + "Theorem t : spin4 1000 true = true.\nProof. vm_compute. reflexivity. Qed.\n```")


async def test_a_check_under_way_is_cut_at_the_bound_and_its_prover_killed(
        tmp_path: Path, child_pids: Callable[[], set[int]]) -> None:
    """The bound holds while a prover runs too (each run may take the item's whole time
    limit): the check is cut, the round recorded as TIMEOUT with the code it checked, and
    the prover killed."""
    model = _Replies(_SPINS)
    settings = ProveSettings(scratch_dir=tmp_path, formalize_max_s=8.0, cache_size=0)
    async with ProveEngine(settings) as engine, asyncio.timeout(90):
        run = engine.run_batch([Obligation("spin", "coq", requirement_text="spin4 is true",
                                           limits=Limits(timeout_s=120))],
                               formalize=FormalizeOptions(model="m", max_attempts=2),
                               complete=model)
        (result,) = [r async for r in run]
        assert not child_pids()  # the one coqtop started was killed, and not replaced
    assert result.verdict is Verdict.TIMEOUT, result
    assert "after 0 round(s)" in result.message and "prover's verdict" in result.message
    (cut,) = result.attempts
    assert cut.verdict is Verdict.TIMEOUT and "vm_compute" in cut.source
    assert len(model.calls) == 1
