"""How Lean's messages become a verdict: `parse_lean_messages`, `verdict_of`, `_policy` and
`judge`, and the text they rest on (`_leantext`: `blank`, `declarations`, `theorems`,
`audit`, `ALLOWED_AXIOMS`).

No Lean toolchain installs on this machine kind. Lean's side is its documented output:
`lean --json` prints one JSON object per message, and answers `#print axioms X` with an
information message at that line, "'X' depends on axioms: [...]" or "'X' does not depend
on any axioms". Each rule of the verdict is pinned on its own here, fast enough for the
mutation pass (docs/mutation.md); test_lean_backend.py runs the whole check against a
stand-in `lean` in the jail.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from scillm.server.prove import CheckOutcome, Diagnostic, Verdict, parse_lean_messages
from scillm.server.prove._lean import _policy, judge, verdict_of
from scillm.server.prove._leantext import (
    ALLOWED_AXIOMS,
    Audit,
    LeanDeclaration,
    _binders_and_type,
    audit,
    blank,
    declarations,
    theorems,
)

#: Lean's foundations, one by one: any other axiom fails an item.
FOUNDATIONS = ("propext", "Classical.choice", "Quot.sound")


def test_the_allowed_axioms_are_leans_foundations_and_nothing_else() -> None:
    assert sorted(ALLOWED_AXIOMS) == sorted(FOUNDATIONS)


def lean_json(severity: str, line: int, data: str, column: int = 0) -> str:
    """One message as `lean --json` prints it."""
    return json.dumps({"severity": severity, "pos": {"line": line, "column": column},
                       "endPos": None, "fileName": "/inbox/Item.lean", "data": data,
                       "caption": ""})


def axioms_answer(line: int, name: str, axioms: list[str]) -> str:
    """Lean's answer to `#print axioms name`, at the checker's line."""
    said = (f"'{name}' depends on axioms: [{', '.join(axioms)}]" if axioms else
            f"'{name}' does not depend on any axioms")
    return lean_json("information", line, said)


# ---------------------------------------------------------------- Lean's JSON messages


def test_each_json_line_is_one_diagnostic_and_anything_else_an_error() -> None:
    output = "\n".join([
        lean_json("information", 5, "  2  ", column=3),
        "",
        "uncaught exception: boom",
        "[1, 2]",
        json.dumps({"pos": {"line": 2, "column": 1}, "endPos": {"line": 2, "column": 4},
                    "data": "no severity"}),
        json.dumps({"severity": "Warning", "pos": {"line": "2", "column": None}}),
        "   ",
        lean_json("error", 7, "unknown identifier 'x'"),
    ]) + "\n"
    assert parse_lean_messages(output) == [
        Diagnostic("info", "2", 5, 3, None, None),
        Diagnostic("error", "uncaught exception: boom"),
        Diagnostic("error", "[1, 2]"),
        Diagnostic("error", "no severity", 2, 1, 2, 4),
        Diagnostic("warning", "", None, None, None, None),
        Diagnostic("error", "unknown identifier 'x'", 7, 0, None, None),
    ]


@pytest.mark.parametrize("raw", ['"a string"', "3", "null", "true"])
def test_json_that_is_not_an_object_is_an_error_and_reading_goes_on(raw: str) -> None:
    assert parse_lean_messages(f"{raw}\n{lean_json('warning', 1, 'w')}") == [
        Diagnostic("error", raw), Diagnostic("warning", "w", 1, 0, None, None)]


def test_without_an_error_sorry_or_failed_exit_lean_has_no_objection() -> None:
    assert verdict_of(0, [Diagnostic("warning", "unused variable `h`", 1, 4)]) == (
        Verdict.PROVED, "no errors, no sorry")
    assert verdict_of(3, []) == (Verdict.FAILED, "lean exited 3")


# ---------------------------------------------------------------- refused before Lean runs


REFUSED = ("is refused: commands that run code or extend the syntax could change or forge "
           "the checker's audit")


def test_a_refused_command_is_placed_on_its_word() -> None:
    source = 'theorem t : True := by\n  exact (dbg_trace "x"; trivial)'
    assert _policy(source) == Diagnostic("error", f"`dbg_trace` {REFUSED}", 2, 9, 2, 18)


@pytest.mark.parametrize(("kind", "declared"), [
    ("instance", "instance : Inhabited Nat := ⟨0⟩"),
    ("example", "example : 1 = 1 := rfl"),
])
def test_an_anonymous_declaration_is_refused_where_it_starts(kind: str,
                                                             declared: str) -> None:
    source = f"theorem t : True := trivial\n  {declared}"
    assert _policy(source) == Diagnostic(
        "error", f"an anonymous `{kind}` cannot be audited for axioms: give it a name "
        "(theorem <name> : ...)", 2, 2, 2, 2 + len(kind))


def test_named_declarations_and_plain_theorems_pass_the_policy() -> None:
    assert _policy("theorem t : True := trivial\ninstance inst : Inhabited Nat := ⟨0⟩\n"
                   "def d := 1") is None


# ---------------------------------------------------------------- the text of an item


NESTED = ("namespace A\nnamespace B\nsection S\n"
          "theorem t (X : Nat) (f : (n : Nat) → Nat) :f X = f X := rfl\nend S\n"
          "def d := 1\nend B\nend A\ninstance : Inhabited Nat := ⟨0⟩\n"
          "example : True := trivial\n")


def test_declarations_are_named_by_their_namespaces_not_their_sections() -> None:
    at = NESTED.index
    assert declarations(NESTED) == [
        LeanDeclaration("theorem", "A.B.t", "t", at("t (X"), at("end S")),
        LeanDeclaration("def", "A.B.d", "d", at("d :="), at("end B")),
        LeanDeclaration("instance", "", "", at("instance"), at("example")),
        LeanDeclaration("example", "", "", at("example"), len(NESTED)),
    ]
    assert [d.name for d in theorems(declarations(NESTED))] == ["A.B.t"]


def test_blank_wipes_comments_and_strings_and_keeps_every_offset() -> None:
    text = '-- c\n/- a /- b -/ c\n -/x "s\\"t" \'"\' r#"q"# -- z\ny'
    assert blank(text) == "    \n" + " " * 14 + "\n   x" + " " * 23 + "\ny"


@pytest.mark.parametrize(("text", "blanked"), [
    # A raw string ends at its first quote and as many hashes; `ar"` is not one.
    ('r"a" b', '     b'),
    ('r"a"b', '    b'),
    ('r"a" b "c"', '     b    '),
    ('r#"a"b"# c', '         c'),
    ('r"abc', '     '),
    ('ar"\\" x', 'ar     '),
    # A string: a backslash escapes the next character; an unterminated one runs to the end.
    ('"" x "y"', '   x    '),
    ('"a" x', '    x'),
    ('"a"b', '   b'),
    ('"a""b"', '      '),
    ('"\\"" x', '     x'),
    ('"abc', '    '),
    ('"a"-- c\nd', '       \nd'),
    # A quote after a name is part of it (x'), not a Char literal.
    ("x'\"'", "x'  "),
    (" x'\"'", " x'  "),
    ("x := 'a' -- c", "x :=         "),
    # Block comments nest; an unclosed one runs to the end.
    ("/-/- -/-/ x", "          x"),
    ("/- /--/ -/ x", "           x"),
    ("/- open", "       "),
    ("-- c\nd", "    \nd"),
])
def test_blank_ends_each_string_and_comment_where_lean_does(text: str, blanked: str) -> None:
    assert blank(text) == blanked


def test_binders_end_at_the_first_colon_outside_brackets_and_the_type_at_colon_eq() -> None:
    text = NESTED[NESTED.index("theorem"):]
    after = len("theorem t")
    assert _binders_and_type(text, after) == ("(X : Nat) (f : (n : Nat) → Nat)", "f X = f X")
    assert _binders_and_type("t {α : Type} [Inhabited α] ⦃x : α⦄ ⟨a, b⟩ : x = x := rfl", 1) == (
        "{α : Type} [Inhabited α] ⦃x : α⦄ ⟨a, b⟩", "x = x")
    assert _binders_and_type(": a : b := c", 0) == ("", "a : b")
    assert _binders_and_type("t : (a := 1) = a := rfl -- :=", 1) == ("", "(a := 1) = a")


@pytest.mark.parametrize("text", ["t : True", "t := trivial", "t (h : True := trivial)"])
def test_without_both_a_colon_and_colon_eq_there_is_no_stated_type(text: str) -> None:
    assert _binders_and_type(text, 1) is None


def test_the_audit_checks_the_stated_type_before_the_next_command_and_asks_every_name(
        ) -> None:
    (stated,) = theorems(declarations(NESTED))
    checked = audit(NESTED, stated)
    assert checked == Audit(NESTED.replace(
        "end S\n", "\nexample : ∀ (X : Nat) (f : (n : Nat) → Nat), f X = f X := "
        "@_root_.A.B.t\nend S\n") + "#print axioms _root_.A.B.t\n#print axioms _root_.A.B.d\n",
        {13: "A.B.t", 14: "A.B.d"}, 6)
    lines = checked.text.splitlines()
    assert lines[5].startswith("example : ∀") and lines[12] == "#print axioms _root_.A.B.t"


def test_a_theorem_without_binders_is_checked_at_its_type_alone() -> None:
    source = "theorem u : True := trivial"
    (stated,) = theorems(declarations(source))
    assert audit(source, stated) == Audit(
        source + "\nexample : True := @_root_.u\n#print axioms _root_.u\n", {3: "u"}, 2)


@pytest.mark.parametrize(("source", "text"), [
    ("def x := 1", "def x := 1\n#print axioms _root_.x\n"),
    ("def x := 1\n", "def x := 1\n#print axioms _root_.x\n"),
    ("-- nothing", "-- nothing\n"),
    ("-- nothing\n", "-- nothing\n"),
    ("", "\n"),
])
def test_without_a_stated_theorem_only_the_axioms_are_asked(source: str, text: str) -> None:
    assert audit(source, None) == Audit(text, {2: "x"} if "x" in text else {}, None)


def test_a_stated_theorem_whose_type_cannot_be_read_gets_no_type_check() -> None:
    source = "theorem t : True\n"
    (stated,) = theorems(declarations(source))
    assert audit(source, stated) == Audit(source + "#print axioms _root_.t\n", {2: "t"}, None)


# ---------------------------------------------------------------- the verdict


SOURCE = "theorem t (n : Nat) : n + 0 = n := by simp\ntheorem u : True := trivial\n"
STATED = theorems(declarations(SOURCE))[0]
CHECKED = audit(SOURCE, STATED)
TYPE_LINE, T_LINE, U_LINE = 3, 5, 6
UNUSED = lean_json("warning", 1, "unused variable `h`")
PROVED_MESSAGE = ("t has the stated type; every declaration rests only on Lean's "
                  "foundational axioms")


def test_the_audit_of_the_verdict_tests_is_where_they_expect_it() -> None:
    assert (CHECKED.type_line, CHECKED.axiom_lines) == (TYPE_LINE, {T_LINE: "t", U_LINE: "u"})
    lines = CHECKED.text.splitlines()
    assert lines[TYPE_LINE - 1] == "example : ∀ (n : Nat), n + 0 = n := @_root_.t"
    assert (lines[T_LINE - 1], lines[U_LINE - 1]) == ("#print axioms _root_.t",
                                                      "#print axioms _root_.u")


def judged(returncode: int, *lines: str, checked: Audit = CHECKED) -> CheckOutcome:
    return judge(SOURCE, checked, "t", returncode, parse_lean_messages("\n".join(lines)))


def test_proved_when_every_answer_is_clean_and_the_items_own_messages_are_kept() -> None:
    outcome = judged(0, UNUSED, axioms_answer(T_LINE, "t", ["propext"]),
                     axioms_answer(U_LINE, "u", []))
    assert outcome == CheckOutcome(Verdict.PROVED, SOURCE, (
        Diagnostic("warning", "unused variable `h`", 1, 0),), message=PROVED_MESSAGE)


@pytest.mark.parametrize("axiom", FOUNDATIONS)
def test_each_foundational_axiom_is_allowed(axiom: str) -> None:
    outcome = judged(0, axioms_answer(T_LINE, "t", [axiom]), axioms_answer(U_LINE, "u", []))
    assert outcome == CheckOutcome(Verdict.PROVED, SOURCE, message=PROVED_MESSAGE)


@pytest.mark.parametrize("axiom", ["sorryAx", "Lean.ofReduceBool", "Lean.trustCompiler",
                                   "Classical.em", "propext'", "choice", "u"])
def test_any_other_axiom_fails(axiom: str) -> None:
    outcome = judged(0, axioms_answer(T_LINE, "t", []),
                     axioms_answer(U_LINE, "u", ["propext", axiom]))
    assert outcome.verdict is Verdict.FAILED
    assert outcome.message == f"u depends on axioms: {axiom}"


def test_every_declaration_with_other_axioms_is_named_with_all_of_them() -> None:
    outcome = judged(0, UNUSED, axioms_answer(T_LINE, "t", ["sorryAx", "propext", "cheat"]),
                     axioms_answer(U_LINE, "u", ["Lean.ofReduceBool"]))
    assert outcome == CheckOutcome(Verdict.FAILED, SOURCE, (
        Diagnostic("warning", "unused variable `h`", 1, 0),
        Diagnostic("error", "t depends on axioms: sorryAx, cheat"),
        Diagnostic("error", "u depends on axioms: Lean.ofReduceBool"),
    ), message="t depends on axioms: sorryAx, cheat")


def test_every_declaration_without_one_answer_is_named() -> None:
    outcome = judged(1, lean_json("error", T_LINE, "unknown constant 't'"),
                     axioms_answer(U_LINE, "u", []), axioms_answer(U_LINE, "u", []))
    assert outcome == CheckOutcome(Verdict.FAILED, SOURCE, (
        Diagnostic("error", "Lean gave no single answer to `#print axioms t`"),
        Diagnostic("error", "Lean gave no single answer to `#print axioms u`"),
    ), message="Lean gave no single answer to `#print axioms t`")


def test_an_answer_elsewhere_or_not_an_information_does_not_count() -> None:
    outcome = judged(0, axioms_answer(T_LINE + 2, "t", []),
                     lean_json("warning", U_LINE, "'u' does not depend on any axioms"))
    assert [d.message for d in outcome.diagnostics] == [
        "'t' does not depend on any axioms",
        "Lean gave no single answer to `#print axioms t`",
        "Lean gave no single answer to `#print axioms u`"]


def test_a_stated_type_that_does_not_check_fails_after_the_items_own_messages() -> None:
    outcome = judged(1, UNUSED, lean_json("error", TYPE_LINE, "type mismatch"),
                     axioms_answer(T_LINE, "t", []), axioms_answer(U_LINE, "u", []))
    message = ("t does not have the stated type at the end of its declaration (a section "
               "variable it used?)")
    assert outcome == CheckOutcome(Verdict.FAILED, SOURCE, (
        Diagnostic("warning", "unused variable `h`", 1, 0), Diagnostic("error", message)),
        message=message)


def test_a_stated_type_that_could_not_be_read_fails() -> None:
    outcome = judged(0, axioms_answer(T_LINE, "t", []), axioms_answer(U_LINE, "u", []),
                     checked=replace(CHECKED, type_line=None))
    message = "the stated type of t could not be read"
    assert outcome == CheckOutcome(Verdict.FAILED, SOURCE, (Diagnostic("error", message),),
                                   message=message)


def test_lean_failing_for_no_reason_of_its_own_is_a_failure() -> None:
    outcome = judged(1, UNUSED, axioms_answer(T_LINE, "t", []), axioms_answer(U_LINE, "u", []))
    assert outcome == CheckOutcome(Verdict.FAILED, SOURCE, (
        Diagnostic("warning", "unused variable `h`", 1, 0),), message="lean exited 1")


def test_the_items_own_error_or_sorry_fails_it_with_only_its_own_messages() -> None:
    error = lean_json("error", 1, "unsolved goals")
    outcome = judged(1, error, axioms_answer(T_LINE, "t", ["sorryAx"]))
    assert outcome == CheckOutcome(Verdict.FAILED, SOURCE, (
        Diagnostic("error", "unsolved goals", 1, 0),), message="unsolved goals")
    sorry = lean_json("warning", 2, "declaration uses 'sorry'")
    outcome = judged(0, sorry, axioms_answer(T_LINE, "t", []), axioms_answer(U_LINE, "u", []))
    assert (outcome.verdict, outcome.message) == (Verdict.FAILED, "the proof uses sorry")
