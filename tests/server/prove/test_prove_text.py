"""Pure text helpers: SMT-LIB posing, Coq and Lean lexing, Coq messages, the cache."""

from __future__ import annotations

import pytest

from scillm.server.prove import CheckOutcome, MemoryCache, Obligation, Verdict, cache_key
from scillm.server.prove._coq import assumptions
from scillm.server.prove._coqtext import (
    blank,
    compose,
    declarations,
    parse_messages,
    sentences,
    stated_theorem,
)
from scillm.server.prove._coqworker import is_closed
from scillm.server.prove._leantext import audit, parse_axioms_reply, refused
from scillm.server.prove._leantext import declarations as lean_declarations
from scillm.server.prove._smtlib import pose, top_level


def test_goal_is_posed_after_the_preamble() -> None:
    script = pose("(declare-const x Int)", "(> x 0)")
    assert script.source == "(declare-const x Int)\n(assert (not (> x 0)))\n(check-sat)\n"
    assert not script.diagnostics


def test_a_comment_after_the_goal_cannot_swallow_the_assert() -> None:
    script = pose("(declare-const x Int)", "(> x 0) ; the goal")
    assert script.source.endswith("(assert (not (> x 0)))\n(check-sat)\n")
    assert not script.diagnostics


@pytest.mark.parametrize(("preamble", "statement", "where"), [
    ("(declare-const x Int)", "(assert (< x 0))", (2, 13)),
    ("(declare-const x Int)", "(check-sat)", (2, 13)),
    ("(declare-const x Int)\n(push 1)", "(> x 0)", (2, 0)),
    ("(declare-const x Int)\n(set-option :timeout 1)", "(> x 0)", (2, 0)),
    ("(declare-const x Int)\n(exit)", "(> x 0)", (2, 0)),
    ("(declare-const x Int)\n(check-sat)", "(> x 0)", (2, 0)),
    ("(declare-const x Int)\nx", "(> x 0)", (2, 0)),
    ("(declare-const x Int)", "(> x 0)) (pop 1) (assert true", (2, 20)),
    ("(declare-const x Int)", "(> x 0) (> x 1)", (2, 21)),
    ("(declare-const x Int)", "", (2, 13)),
    ("(declare-const x Int", "(> x 0)", (1, 0)),
    ("(declare-const x Int)", '(= x "unterminated)', (2, 18)),
])
def test_anything_but_declarations_and_one_goal_is_refused(
        preamble: str, statement: str, where: tuple[int, int]) -> None:
    script = pose(preamble, statement)
    assert script.diagnostics, script.source
    first = script.diagnostics[0]
    assert (first.line, first.column) == where, first


def test_strings_comments_and_symbols_do_not_count() -> None:
    items, problem = top_level('(echo "a ( "" b") ; (((\n(|we(ird| 1)')
    assert problem is None and len(items) == 2
    assert items[0].head == "echo"
    _, problem = top_level("(a\n  (b c)")
    assert problem is not None and (problem.line, problem.column) == (1, 0)


def test_coqc_messages_with_spans_past_the_line() -> None:
    source = "Theorem t : True.\nProof.\n  exact (I\n  ).\nQed.\n"
    output = ('File "./Item.v", line 3, characters 8-14:\nError: Bad thing\nspanning lines.\n'
              'File "./Item.v", line 1, characters 0-7:\nWarning: careful [w,cat]\n')
    first, second = parse_messages(output, source)
    assert (first.severity, first.message) == ("error", "Bad thing spanning lines.")
    assert (first.line, first.column, first.end_line, first.end_column) == (3, 8, 4, 3)
    assert (second.severity, second.line, second.column, second.end_column) == ("warning", 1, 0, 7)


def test_coq_lexer_sees_nested_comments_strings_and_sentences() -> None:
    text = '(* a (* nested. *) "str *)" . *) Lemma x : "a. b" = "". Proof. exact I. Qed.'
    assert "nested" not in blank(text) and len(blank(text)) == len(text)
    spans = sentences(text)
    assert [text[a:b] for a, b in spans] == ['Lemma x : "a. b" = "".', "Proof.", "exact I.",
                                             "Qed."]
    notation = "Notation \"[ x ; .. ; y ]\" := (cons x .. (cons y nil) ..)."
    assert sentences(notation) == [(0, len(notation))]


def test_declarations_and_the_stated_theorem() -> None:
    composed = compose(("Lia",), "Definition two := 2.",
                       "#[local] Program Lemma bad' : two = 3.\nLemma fine : True.",
                       "Proof. Admitted. Axiom cheat : False. Declare Instance i : C.")
    decls = declarations(composed.text)
    assert [(d.kind, d.name) for d in decls] == [
        ("Definition", "two"), ("Lemma", "bad'"), ("Lemma", "fine"), ("Axiom", "cheat"),
        ("Instance", "i")]
    stated = stated_theorem(composed)
    assert stated is not None and stated.name == "bad'"
    assert composed.text[stated.sentence[0]:stated.sentence[1]] == \
        "#[local] Program Lemma bad' : two = 3."
    whole = compose((), "", "", "Lemma helper : True. Proof. Qed.\nTheorem main : True.")
    found = stated_theorem(whole)
    assert found is not None and found.name == "helper"
    assert stated_theorem(compose((), "", "Definition x := 1.", "")) is None


def test_print_assumptions_replies() -> None:
    assert is_closed("Closed under the global context\n\n")
    assert is_closed("<infomsg>Fetching opaque proofs from disk for Coq.Init.Peano</infomsg>\n"
                     "Closed under the global context\n")
    assert not is_closed("Axioms:\nbad : 1 = 2\nClosed under the global context")
    assert not is_closed("Closed under the global context </prompt>")
    assert assumptions("Axioms:\nW.bad : 1 = 2\nW.loop is assumed to be guarded.\n") == \
        ["W.bad", "W.loop is assumed to be guarded"]


def test_lean_declarations_audit_and_replies() -> None:
    source = ("import Mathlib\nnamespace Foo\n-- theorem hidden : False := sorry\n"
              "theorem bar (n : Nat) : n + 0 = n := by simp\n"
              "axiom cheat : False\nend Foo\nlemma baz : True := trivial\n")
    decls = lean_declarations(source)
    assert [(d.kind, d.name) for d in decls] == [("theorem", "Foo.bar"), ("axiom", "Foo.cheat"),
                                                 ("lemma", "baz")]
    checked = audit(source, decls[0])
    lines = checked.text.splitlines()
    assert checked.type_line is not None
    assert lines[checked.type_line - 1] == \
        "example : ∀ (n : Nat), n + 0 = n := @_root_.Foo.bar"
    assert {lines[n - 1] for n in checked.axiom_lines} == {
        "#print axioms _root_.Foo.bar", "#print axioms _root_.Foo.cheat",
        "#print axioms _root_.baz"}
    assert parse_axioms_reply("'Foo.bar' depends on axioms: [propext, sorryAx]") == \
        ("Foo.bar", ["propext", "sorryAx"])
    assert parse_axioms_reply("'baz' does not depend on any axioms") == ("baz", [])
    assert parse_axioms_reply("baz is fine") is None
    assert refused("theorem t : True := by\n  native_decide\n#eval 1") == ("#eval", 39)
    # The raw text is read too, so even a comment naming a refused command is refused: a
    # lexer that disagreed with Lean's about where a comment ends could otherwise hide one.
    assert refused("-- #eval here\ntheorem t : True := trivial") == ("#eval", 3)
    assert refused("theorem t : True := trivial -- evaluated by hand") is None


async def test_cache_key_and_lru() -> None:
    ob = Obligation("a", "smt", statement="true")
    assert cache_key(ob, "4.8") == cache_key(Obligation("b", "smt", statement="true"), "4.8")
    assert cache_key(ob, "4.8") != cache_key(ob, "4.9")
    cache = MemoryCache(2)
    outcome = CheckOutcome(Verdict.PROVED, "s")
    for key in ("k1", "k2"):
        await cache.put(key, outcome)
    assert await cache.get("k1") is outcome  # k1 now most recent
    await cache.put("k3", outcome)
    assert await cache.get("k2") is None and len(cache) == 2
