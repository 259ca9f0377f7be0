"""Where the smt rule's refusals are placed, and what is a command: `_smtlib` and the
positions `_smt` reports, pinned in full (severity, start and end), without z3.

test_prove_text.py pins which texts are refused and where each refusal starts; this file
pins the whole diagnostic, for the mutation pass (docs/mutation.md).
"""

from __future__ import annotations

import pytest

from scillm.server.prove import Diagnostic
from scillm.server.prove._smtlib import (
    TopLevel,
    _head,
    _quoted_end,
    is_command,
    line_col,
    pose,
    top_level,
)
from scillm.server.prove._solver import end_of as _end_of

NOT_IN_PREAMBLE = "is not allowed in the preamble: it holds declarations, definitions and " \
    "assertions only"


@pytest.mark.parametrize(("text", "offset", "where"), [
    ("abc", 0, (1, 0)),
    ("abc", 2, (1, 2)),
    ("ab\ncd", 3, (2, 0)),
    ("ab\ncd\nef", 8, (3, 2)),
    ("\nab", 2, (2, 1)),
    ("\n\nab", 1, (2, 0)),
    ("a\nbcd\nefg\nh", 7, (3, 1)),
])
def test_a_position_is_its_line_from_1_and_column_from_0(text: str, offset: int,
                                                         where: tuple[int, int]) -> None:
    assert line_col(text, offset) == where


@pytest.mark.parametrize(("text", "diagnostic"), [
    ('(a "b', Diagnostic("error", "unterminated string", 1, 3, 1, 4)),
    ("(a\n |b", Diagnostic("error", "unterminated quoted symbol", 2, 1, 2, 2)),
    ("(a |b\\c|)", Diagnostic("error", "a backslash is not allowed in a |quoted symbol|",
                              1, 5, 1, 6)),
    ("a\n  b)", Diagnostic("error", "unexpected ')'", 2, 3, 2, 4)),
    ("(a\n (b", Diagnostic("error", "unbalanced '(': missing ')'", 2, 1, 2, 2)),
])
def test_text_that_does_not_read_is_placed_on_one_character(text: str,
                                                            diagnostic: Diagnostic) -> None:
    assert top_level(text)[1] == diagnostic


@pytest.mark.parametrize(("preamble", "diagnostic"), [
    ("(declare-const x Int)\n  (push 1)",
     Diagnostic("error", f"(push ...) {NOT_IN_PREAMBLE}", 2, 2, 2, 10)),
    ("\n(check-sat)", Diagnostic("error", f"(check-sat ...) {NOT_IN_PREAMBLE}", 2, 0, 2, 11)),
    ("(declare-const x Int)\n(assert\n  true) (set-option\n :timeout 1)",
     Diagnostic("error", f"(set-option ...) {NOT_IN_PREAMBLE}", 3, 8, 4, 12)),
    ("(declare-const x Int) xyz", Diagnostic("error", f"the atom 'xyz' {NOT_IN_PREAMBLE}",
                                             1, 22, 1, 25)),
])
def test_a_refused_preamble_item_is_spanned_whole(preamble: str,
                                                  diagnostic: Diagnostic) -> None:
    assert pose(preamble, "true").diagnostics == (diagnostic,)


# The statement sits after `(assert (not ` (13 columns) on the line below the preamble.
@pytest.mark.parametrize(("statement", "diagnostic"), [
    ("(> x 0) (> x 1)", Diagnostic(
        "error", "the statement must be one goal term; this is a second one", 2, 21, 2, 28)),
    ("(> x\n 0) (> x\n 1)", Diagnostic(
        "error", "the statement must be one goal term; this is a second one", 3, 4, 4, 3)),
    ("(> x 0)\n  (check-sat)", Diagnostic(
        "error", "the statement must be one goal term, not the command (check-sat ...); "
        "declarations and assertions belong in the preamble", 3, 2, 3, 13)),
    ("(> x\n  0", Diagnostic("error", "unbalanced '(': missing ')'", 2, 13, 2, 14)),
    ("(> x\n  \"0", Diagnostic("error", "unterminated string", 3, 2, 3, 3)),
    ("  ", Diagnostic("error", "the statement is empty: give one goal term", 2, 13, None,
                      None)),
])
def test_a_refused_statement_is_placed_where_it_sits_in_the_source(
        statement: str, diagnostic: Diagnostic) -> None:
    assert pose("(declare-const x Int)", statement).diagnostics == (diagnostic,)


def test_a_refused_statement_without_a_preamble_starts_on_line_one() -> None:
    assert pose("", "true false").diagnostics == (Diagnostic(
        "error", "the statement must be one goal term; this is a second one", 1, 18, 1, 23),)


@pytest.mark.parametrize(("head", "command"), [
    ("check-sat", True), ("assert", True), ("declare-const", True), ("echo", True),
    ("include", True), ("exit", True), ("", False), ("and", False), ("=>", False),
    ("forall", False), ("Check-sat", False),
])
def test_a_command_is_known_by_its_head(head: str, command: bool) -> None:
    assert is_command(TopLevel(0, 1, head)) is command


@pytest.mark.parametrize(("text", "end"), [
    ("", (1, 0)),
    ("(a)", (1, 3)),
    ("(a)\n", (1, 3)),
    ("(a)\n(bb)\n(ccc)\n\n", (3, 5)),
    ("(aaaa)\n(b)  \n", (2, 5)),
    ("(a)\n  \n", (2, 2)),
])
def test_the_end_of_a_preamble_is_just_past_its_last_character(
        text: str, end: tuple[int, int]) -> None:
    assert _end_of(text) == end


@pytest.mark.parametrize(("text", "at", "end"), [
    ('"a" "b"', 0, 3),
    ('""', 0, 2),
    ('x "a""b" "c"', 2, 8),
    ('"a""""b"', 0, 8),
    ('"a"""', 0, 5),
    ('"a""', 0, -1),
    ('"abc', 0, -1),
    ("|a| |b|", 0, 3),
    ("||", 0, 2),
    ('|a""b|', 0, 6),
    ("|a||b|", 0, 3),
    ("|ab", 0, -1),
])
def test_a_string_ends_at_a_quote_not_doubled_and_a_quoted_symbol_at_its_bar(
        text: str, at: int, end: int) -> None:
    assert _quoted_end(text, at) == end


@pytest.mark.parametrize(("text", "items"), [
    # A comment between `(` and the head is skipped to its end of line, and no further.
    ("(; c\n assert true)", [TopLevel(0, 18, "assert")]),
    ("true\n(; c\n assert true)", [TopLevel(0, 4, ""), TopLevel(5, 23, "assert")]),
    ("(; c\n assert\n true)", [TopLevel(0, 19, "assert")]),
    ("( ;a\n;b\n\tpush 1)", [TopLevel(0, 16, "push")]),
    # Blanks after `(`, however many.
    ("true ( assert true)", [TopLevel(0, 4, ""), TopLevel(5, 19, "assert")]),
    ("(\t\n  assert true)", [TopLevel(0, 17, "assert")]),
    # A top-level comment ends at its own line's end, the last one at the end of the text.
    ("; c\n(push 1)\n; d\n", [TopLevel(4, 12, "push")]),
    ("(a) ; tail", [TopLevel(0, 3, "a")]),
    ("ab;c\n(d)", [TopLevel(0, 2, ""), TopLevel(5, 8, "d")]),
    # Strings and quoted symbols are atoms, whatever they hold.
    ('"a;b" |c (d)| xyz', [TopLevel(0, 5, ""), TopLevel(6, 13, ""), TopLevel(14, 17, "")]),
    ('"say ""hi"""', [TopLevel(0, 12, "")]),
    # An atom ends at a blank, a parenthesis, a comment, a quote or a bar (as z3's symbol).
    ("xyz", [TopLevel(0, 3, "")]),
    ("ab(c)", [TopLevel(0, 2, ""), TopLevel(2, 5, "c")]),
    ('a"b c"', [TopLevel(0, 1, ""), TopLevel(1, 6, "")]),
    ("a|b c|", [TopLevel(0, 1, ""), TopLevel(1, 6, "")]),
    ("aXb (declare-const X Int)", [TopLevel(0, 3, ""), TopLevel(4, 25, "declare-const")]),
    # A head ends where a symbol does.
    ('(a"b")', [TopLevel(0, 6, "a")]),
    ("(check-sat;c\n)", [TopLevel(0, 14, "check-sat")]),
    ("(|x| 1)", [TopLevel(0, 7, "")]),
])
def test_top_level_items_are_spanned_with_their_head(text: str, items: list[TopLevel]) -> None:
    assert top_level(text) == (items, None)


@pytest.mark.parametrize(("text", "column", "line"), [
    ('"a\\b" |c\\d|', 8, 1),
    ("; a\\b\n|c\\d|", 2, 2),
    ("|c\\d\\e|", 2, 1),
])
def test_a_backslash_in_a_quoted_symbol_is_placed_on_its_first_one(
        text: str, column: int, line: int) -> None:
    assert top_level(text)[1] == Diagnostic(
        "error", "a backslash is not allowed in a |quoted symbol|", line, column, line,
        column + 1)


@pytest.mark.parametrize(("text", "at", "end", "head"), [
    ("(ab", 0, 3, "ab"),
    ("(ab)c", 0, 3, "ab"),
    ("(abc", 0, 2, "a"),
    ("(  ", 0, 3, ""),
    ("x (; c ", 2, 7, ""),
    ("x ( ; c\n", 2, 8, ""),
])
def test_a_head_is_read_no_further_than_the_end_it_is_given(text: str, at: int, end: int,
                                                            head: str) -> None:
    assert _head(text, at, end) == head


@pytest.mark.parametrize(("preamble", "diagnostics"), [
    # A command behind a comment is still the command.
    ("(; c\n push 1)", (Diagnostic("error", f"(push ...) {NOT_IN_PREAMBLE}", 1, 0, 2, 8),)),
    ("; c\n(check-sat)\n; d", (
        Diagnostic("error", f"(check-sat ...) {NOT_IN_PREAMBLE}", 2, 0, 2, 11),)),
    ("( ; c\n assert true) ; (push 1)", ()),
    # Without a head, the form is previewed by its first 20 characters.
    ("(assert true)((check-sat)(push 1)(pop 1))", (
        Diagnostic("error", f"((check-sat)(push 1)( ...) {NOT_IN_PREAMBLE}", 1, 13, 1, 41),)),
    ("(assert true)((x))", (Diagnostic("error", f"((x) ...) {NOT_IN_PREAMBLE}", 1, 13, 1, 18),)),
    ("(assert true)( |a b| )", (
        Diagnostic("error", f"(|a b| ...) {NOT_IN_PREAMBLE}", 1, 13, 1, 22),)),
    # An atom by its first 40.
    ("x" * 45, (Diagnostic("error", f"the atom {'x' * 40!r} {NOT_IN_PREAMBLE}", 1, 0, 1, 45),)),
    ('"x" |y z|', (Diagnostic("error", f"the atom '\"x\"' {NOT_IN_PREAMBLE}", 1, 0, 1, 3),
                   Diagnostic("error", f"the atom '|y z|' {NOT_IN_PREAMBLE}", 1, 4, 1, 9))),
])
def test_a_preamble_is_read_through_comments_strings_and_quoted_symbols(
        preamble: str, diagnostics: tuple[Diagnostic, ...]) -> None:
    assert pose(preamble, "true").diagnostics == diagnostics


def test_a_command_behind_a_comment_is_refused_as_the_statement() -> None:
    assert pose("", "(; c\n check-sat)").diagnostics == (Diagnostic(
        "error", "the statement must be one goal term, not the command (check-sat ...); "
        "declarations and assertions belong in the preamble", 1, 13, 2, 11),)


@pytest.mark.parametrize(("statement", "term"), [
    ("(> 1 0) ; done", "(> 1 0)"),
    ("; why\n(> 1 0)", "(> 1 0)"),
    ("|a ; b|", "|a ; b|"),
    ('(= "a)" "b")', '(= "a)" "b")'),
])
def test_the_goal_is_sent_as_its_own_span(statement: str, term: str) -> None:
    script = pose("", statement)
    assert (script.diagnostics, script.query) == ((), f"(assert (not {term}))\n(check-sat)\n")


def test_a_quote_after_an_atom_starts_a_second_term_as_z3_reads_it() -> None:
    assert pose("", 'x"y"').diagnostics == (Diagnostic(
        "error", "the statement must be one goal term; this is a second one", 1, 14, 1, 17),)
