"""How Coq's replies become a verdict: `flat_listing`, `is_closed`, `assumptions` and
`_verdict`, on replies as coqtop 8.16 (`-emacs`) prints them.

The replies below were copied from a real coqtop session; the real prover is exercised
end to end by test_coq_backend.py and test_cheats.py. These tests pin each rule of the
verdict on its own, fast enough for the mutation pass (docs/mutation.md).
"""

from __future__ import annotations

import pytest

from scillm.server.prove import Diagnostic, Verdict
from scillm.server.prove._coq import (
    _verdict,
    assumptions,
    checks_switched_off,
    kernel_assumptions,
)
from scillm.server.prove._coqworker import Judgement, flat_listing, is_closed

CLOSED = "Closed under the global context"
FETCHING = "<infomsg>Fetching opaque proofs from disk for Coq.Arith.PeanoNat</infomsg>"

# `Print Module M.` under `Set Short Module Printing.`
LISTING = """Module
M
:= Struct
     Definition a
     Parameter b
     Inductive c
     Definition c_rect
     Parameter ax
     CoInductive s
     Variant v
   End

"""


def test_a_flat_module_lists_its_names_in_order() -> None:
    assert flat_listing(LISTING, "M") == ["M.a", "M.b", "M.c", "M.c_rect", "M.ax", "M.s",
                                          "M.v"]
    assert flat_listing("<infomsg>x</infomsg> Module M := Struct End", "M") is None
    assert flat_listing("<warning>Module M := Struct Definition a End</warning>", "M") == [
        "M.a"]
    assert flat_listing("Module M := Struct End\n", "M") == []
    tagged = "<prompt>Coq < 1 || 0 < </prompt>Module M := Struct Definition a End"
    assert flat_listing(tagged.replace("<prompt>Coq < 1 || 0 < </prompt>", ""), "M") == [
        "M.a"]


@pytest.mark.parametrize("reply", [
    "Module N := Struct Module O End",  # nested: Search, not this listing
    "Module M := Struct Definition a Module O End",
    "Module M := Struct Definition End",  # a kind without its name
    "Module M := Struct Definition a Parameter b",  # no End
    "Module M := Sig Definition a End",
    "Module M : Struct Definition a End",
    "Module X := Struct Definition a End",  # another module
    "Modules M := Struct Definition a End",
    "Module M := Struct Axiom a End",  # not a kind a flat listing holds
    "Module M := Struct Definition a End End",
    "",
])
def test_anything_but_a_flat_listing_of_the_module_is_none(reply: str) -> None:
    assert flat_listing(reply, "M") is None


@pytest.mark.parametrize(("reply", "closed"), [
    (CLOSED, True),
    (f"\n  {CLOSED}\n\n", True),
    (f"{FETCHING}\n{CLOSED}\n", True),
    (f"{FETCHING}{FETCHING}  {CLOSED}", True),
    (f"<infomsg>Fetching opaque proofs from disk for M.x'</infomsg>{CLOSED}", True),
    (f"<infomsg>Fetching  opaque proofs from disk for M.x</infomsg>{CLOSED}", False),
    (f"{CLOSED}.", False),
    (f"{CLOSED}\n{CLOSED}", False),
    (f"<infomsg>{CLOSED}</infomsg>", False),
    (f"<infomsg>Fetching opaque proofs from disk for Coq</infomsg>x {CLOSED}", False),
    ("Axioms:\nM.ax : False\n", False),
    (f"Axioms:\nf is assumed to be guarded.\n{CLOSED}", False),
    ("", False),
])
def test_closed_means_that_and_nothing_else(reply: str, closed: bool) -> None:
    assert is_closed(reply) is closed


@pytest.mark.parametrize(("reply", "listed"), [
    ("Axioms:\nM.ax : False\n", ["M.ax"]),
    ("Axioms:\nclassic : forall P : Prop, P \\/ ~ P\n", ["classic"]),
    ("Axioms:\nax : forall n : nat,\n     n = n\nx'1 : nat\n", ["ax", "x'1"]),
    ("Axioms:\nf is assumed to be guarded.\n", ["f is assumed to be guarded"]),
    ("<warning>Axioms:</warning>\nI.P : Prop\n", ["I.P"]),
    ("Axioms:\n_hidden : nat\n", ["_hidden"]),
    ("Axioms:\nsomething else ending in X.\n", ["something else ending in X"]),
    ("Axioms:\n  indented : nat\n\n", []),
    ("", []),
])
def test_assumptions_lists_what_print_assumptions_names(reply: str,
                                                        listed: list[str]) -> None:
    assert assumptions(reply) == listed


SOURCE = """Axiom ax : False.
Lemma d : False.
Proof. exact ax. Qed.
Theorem t : True.
Proof. exact I. Qed."""
T_AT = SOURCE.index("t : True")
D_AT = SOURCE.index("d : False")
AX_AT = SOURCE.index("ax : False")


def _judge(**fields: object) -> tuple[Verdict, tuple[Diagnostic, ...], str]:
    values: dict[str, object] = {"loaded": True, "stated_ok": True, "stated_found": True,
                                 "clean": True, "clean_ok": True}
    values.update(fields)
    outcome = _verdict(SOURCE, "t", T_AT, Judgement(**values))  # type: ignore[arg-type]
    assert outcome.source == SOURCE
    return outcome.verdict, outcome.diagnostics, outcome.message


def test_proved_only_when_nothing_is_open_and_the_stated_type_holds() -> None:
    verdict, diagnostics, message = _judge()
    assert (verdict, diagnostics) == (Verdict.PROVED, ())
    assert message == ("t has the stated type; every declaration is closed under the global "
                       "context")


def test_a_statement_that_means_else_with_the_imports_alone_is_failed() -> None:
    verdict, diagnostics, message = _judge(clean_ok=False)
    assert verdict is Verdict.FAILED and "with the imports alone" in message
    assert diagnostics[0].severity == "error" and diagnostics[0].line is not None


def test_a_statement_of_the_items_own_words_is_proved_with_a_note() -> None:
    verdict, diagnostics, _ = _judge(clean=False, clean_ok=None)
    assert verdict is Verdict.PROVED
    assert [d.severity for d in diagnostics] == ["info"]
    assert "the item's own definitions" in diagnostics[0].message


def test_an_axiom_is_blamed_where_it_is_declared() -> None:
    verdict, diagnostics, message = _judge(open={"ax": "Axioms:\nax : False\n",
                                                 "d": "Axioms:\nax : False\n"})
    assert verdict is Verdict.FAILED
    assert diagnostics == (
        Diagnostic("error", "ax is assumed (an axiom, parameter or admitted proof), not proved",
                   1, 6, 1, 8),
        Diagnostic("error", "d depends on assumptions: ax", 2, 6, 2, 7))
    assert message == diagnostics[0].message


def test_a_declaration_in_a_nested_module_is_named_and_placed_by_its_short_name() -> None:
    # CoqWorker.judge names declarations relative to the item: `ax`, `M.N.ax`.
    _, diagnostics, _ = _judge(open={"M.N.ax": "Axioms:\nM.N.ax : False\n",
                                     "M.N.d": "Axioms:\nM.N.ax : False\nI.P : Prop\n"})
    assert diagnostics == (
        Diagnostic("error", "ax is assumed (an axiom, parameter or admitted proof), not proved",
                   1, 6, 1, 8),
        Diagnostic("error", "d depends on assumptions: M.N.ax, I.P", 2, 6, 2, 7))


def test_an_unreadable_reply_is_quoted() -> None:
    _, diagnostics, _ = _judge(open={"d": "  odd reply  \n"})
    assert diagnostics == (Diagnostic("error", "d depends on assumptions: odd reply", 2, 6, 2,
                                      7),)


def test_a_culprit_the_source_does_not_declare_is_reported_without_a_place() -> None:
    _, diagnostics, message = _judge(open={"made_by_a_tactic": "Axioms:\nax : False\n",
                                           "d": "Axioms:\nax : False\n"})
    assert diagnostics[1] == Diagnostic("error", "made_by_a_tactic depends on assumptions: ax")
    assert [d.message for d in diagnostics] == [
        "d depends on assumptions: ax", "made_by_a_tactic depends on assumptions: ax"]
    assert (diagnostics[0].line, diagnostics[1].line, diagnostics[1].column) == (2, None, None)
    assert message == "d depends on assumptions: ax"


@pytest.mark.parametrize(("stated_ok", "found", "said"), [
    (False, True, "t does not have the stated type at the end of the source (a section "
                  "hypothesis it used was discharged into it, or it was stated again)"),
    (None, False, "t is not in the environment at the end of the source (stated inside a "
                  "module type or functor, or removed)"),
    (None, True, "t does not have the stated type"),
])
def test_the_stated_theorem_must_exist_with_its_stated_type(
        stated_ok: bool | None, found: bool, said: str) -> None:
    verdict, diagnostics, message = _judge(stated_ok=stated_ok, stated_found=found)
    assert verdict is Verdict.FAILED
    assert diagnostics[0].message.startswith(said) and diagnostics[0].severity == "error"
    assert (diagnostics[0].line, diagnostics[0].column, diagnostics[0].end_line,
            diagnostics[0].end_column) == (4, 8, 4, 9)
    assert message == diagnostics[0].message and len(diagnostics) == 1


def test_a_stated_theorem_already_blamed_is_not_blamed_twice() -> None:
    for name in ("t", "M.t", "M.N.t"):
        _, diagnostics, _ = _judge(stated_ok=False, open={name: "Axioms:\nax : F\n"})
        assert [d.message for d in diagnostics] == ["t depends on assumptions: ax"]


def test_diagnostics_come_in_source_order_and_the_stated_type_first_on_its_line() -> None:
    _, diagnostics, message = _judge(stated_ok=False, open={
        "d": "Axioms:\nax : False\n", "gone": "Axioms:\nax : False\n",
        "ax": "Axioms:\nax : False\n"})
    assert [(d.line, d.message.split()[0]) for d in diagnostics] == [
        (1, "ax"), (2, "d"), (4, "t"), (None, "gone")]
    assert message.startswith("ax is assumed")
    assert (AX_AT, D_AT) == (6, 24)


def test_two_culprits_on_one_line_come_in_column_order() -> None:
    source = "Axiom ax : False. Axiom bx : False.\nTheorem t : True.\nProof. exact I. Qed."
    judgement = Judgement(loaded=True, stated_ok=True, stated_found=True,
                          open={"bx": "Axioms:\nbx : False\n", "ax": "Axioms:\nax : False\n"})
    outcome = _verdict(source, "t", source.index("t : True"), judgement)
    assert [(d.line, d.column, d.message[:2]) for d in outcome.diagnostics] == [
        (1, 6, "ax"), (1, 24, "bx")]


REFUSED = ("is refused: switching off the kernel's guard, positivity, universe or template "
           "checks (or changing the theory) can never give a proof PROVED accepts")


@pytest.mark.parametrize(("source", "words", "span"), [
    ("Unset Guard Checking.\nFixpoint f (n : nat) : False := f n.",
     "Unset Guard Checking", (1, 0, 1, 20)),
    ("Definition a := 1.\n  Unset Positivity Checking.", "Unset Positivity Checking",
     (2, 2, 2, 27)),
    ("Unset Universe Checking.", "Unset Universe Checking", (1, 0, 1, 23)),
    ("Unset Template Check.", "Unset Template Check", (1, 0, 1, 20)),
    ("Set Definitional UIP.", "Set Definitional UIP", (1, 0, 1, 20)),
    ("#[bypass_check(guard)] Fixpoint f (n : nat) : False := f n.", "bypass_check",
     (1, 2, 1, 14)),
    ("Print Typing Flags.", "Typing Flags", (1, 6, 1, 18)),
    # Words split by a comment and a line break: found in the blanked text, placed and
    # quoted from the item's own text.
    ("Lemma x : True. Proof. exact I. Qed.\nUnset (* hidden *) Universe\n  Checking.",
     "Unset (* hidden *) Universe Checking", (2, 0, 3, 10)),
    # The same words in a comment first: the one that counts is the one Coq reads.
    ("(* Unset Guard Checking. *)\nUnset   Guard Checking.", "Unset Guard Checking",
     (2, 0, 2, 22)),
    # In a string only (Coq's lexer and ours could disagree about strings): still refused.
    ('Definition s := "Unset Guard Checking".', "Unset Guard Checking", (1, 17, 1, 37)),
])
def test_switching_a_kernel_check_off_is_refused_where_it_is_written(
        source: str, words: str, span: tuple[int, int, int, int]) -> None:
    assert checks_switched_off(source) == Diagnostic("error", f"`{words}` {REFUSED}", *span)


@pytest.mark.parametrize("source", [
    "Theorem t : True. Proof. exact I. Qed.",
    "Set Guard Checking.\nUnset Guarded Checking.\nUnset Checking.",
    "Definition Unset_Guard_Checking := 1.",
    "",
])
def test_text_that_switches_nothing_off_is_not_refused(source: str) -> None:
    assert checks_switched_off(source) is None


#: `coqchk -silent -o -norec Item` (Coq 8.16) on an item with an axiom, a fixpoint defined
#: with guard checking off and an inductive with positivity checking off, the item having
#: loaded the standard library's Classical (whose axioms are not the item's). Each
#: section ends with a line of two blanks.
COQCHK = "\n".join([
    "",
    "CONTEXT SUMMARY",
    "===============",
    "",
    "* Theory: Set is predicative",
    "  ",
    "* Axioms:",
    "    Coq.Logic.Classical_Prop.classic",
    "    Item.cheat",
    "  ",
    "* Constants/Inductives relying on type-in-type: <none>",
    "  ",
    "* Constants/Inductives relying on unsafe (co)fixpoints:",
    "    Item.loop",
    "  ",
    "* Inductives whose positivity is assumed:",
    "    Item.B",
    "  ",
    "",
])


def test_the_kernel_checker_lists_what_the_item_itself_assumes() -> None:
    assert kernel_assumptions(COQCHK) == [
        "Item.cheat (axioms)", "Item.loop (constants/inductives relying on unsafe "
        "(co)fixpoints)", "Item.B (inductives whose positivity is assumed)"]


def test_an_item_the_kernel_checker_finds_clean_assumes_nothing() -> None:
    clean = "\n".join(ln for ln in COQCHK.splitlines() if not ln.startswith("    Item."))
    assert kernel_assumptions(clean) == []
    assert kernel_assumptions("") == []


def test_only_lines_under_a_section_heading_are_listed() -> None:
    """What coqc printed before coqchk's summary (the item's own `Print`s) is not listed,
    and a heading is named by its text up to its first colon."""
    before = "    Item.printed_by_coqc\n"
    assert kernel_assumptions(before + COQCHK)[0] == "Item.cheat (axioms)"
    assert kernel_assumptions("* A: B: C\n    Item.x\n") == ["Item.x (a)"]
