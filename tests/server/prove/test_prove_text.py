"""Pure text helpers: SMT-LIB posing, Coq messages, the cache key and LRU."""

from __future__ import annotations

from scillm.server.prove import CheckOutcome, MemoryCache, Obligation, Verdict, cache_key
from scillm.server.prove._coqtext import axioms_of, parse_messages, theorem_name
from scillm.server.prove._smtlib import pose, top_level


def test_goal_and_script_modes() -> None:
    assert pose("(declare-const x Int)", "(> x 0)").source == \
        "(declare-const x Int)\n(assert (not (> x 0)))\n(check-sat)\n"
    script = pose("", "(assert false)")
    assert script.source == "(assert false)\n(check-sat)\n" and not script.stateful
    assert pose("", "(set-option :timeout 10)\n(assert false)").stateful


def test_strings_comments_and_symbols_do_not_count() -> None:
    items, problem = top_level('(echo "a ( "" b") ; (((\n(|we(ird| 1)')
    assert problem is None and len(items) == 2
    _, problem = top_level("(a\n  (b c)")
    assert problem is not None and (problem.line, problem.column) == (1, 0)


def test_more_than_one_goal_term_is_refused() -> None:
    assert pose("", "(> 1 0) (> 2 0)").diagnostics


def test_coqc_messages_with_spans_past_the_line() -> None:
    source = "Theorem t : True.\nProof.\n  exact (I\n  ).\nQed.\n"
    output = ('File "./Item.v", line 3, characters 8-14:\nError: Bad thing\nspanning lines.\n'
              'File "./Item.v", line 1, characters 0-7:\nWarning: careful [w,cat]\n')
    first, second = parse_messages(output, source)
    assert (first.severity, first.message) == ("error", "Bad thing spanning lines.")
    assert (first.line, first.column, first.end_line, first.end_column) == (3, 8, 4, 3)
    assert (second.severity, second.line, second.column, second.end_column) == ("warning", 1, 0, 7)


def test_theorem_name_and_axioms() -> None:
    source = "(* Lemma fake : x. *)\nLemma helper : True.\nTheorem main : True.\n"
    assert theorem_name("", source) == ("main", source.index("main"))
    assert theorem_name("Lemma helper : True.", source) == ("helper", source.index("helper"))
    assert axioms_of("Axioms:\ncheat : False\nModule.other : nat -> nat\n") == \
        ["cheat", "Module.other"]


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
