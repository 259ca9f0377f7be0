"""The coq backend on the real coqtop/coqc."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from scillm.server.prove import Limits, Obligation, ProveEngine, ProveSettings, Verdict

ADD0 = "Theorem t : forall n : nat, n + 0 = n."
SPIN = """\
Fixpoint spin (n : nat) (b : bool) : bool := match n with 0 => b | S m => spin m (negb b) end.
Fixpoint spin2 (n : nat) (b : bool) : bool :=
  match n with 0 => b | S m => spin2 m (spin 1000 b) end.
Fixpoint spin3 (n : nat) (b : bool) : bool :=
  match n with 0 => b | S m => spin3 m (spin2 1000 b) end.
Definition r := Eval vm_compute in spin3 1000 true."""


def coq(item_id: str, statement: str, proof: str, **kw: object) -> Obligation:
    return Obligation(item_id, "coq", statement=statement, proof=proof, **kw)  # type: ignore[arg-type]


async def test_true_theorem_is_proved(engine: ProveEngine) -> None:
    result = await engine.check(coq("a", ADD0, "Proof. intros. lia. Qed.", imports=("Lia",)))
    assert result.verdict is Verdict.PROVED, result.message
    assert result.source.startswith("Require Import Lia.\n")


async def test_false_theorem_fails(engine: ProveEngine) -> None:
    result = await engine.check(coq("a", "Theorem t : 1 = 2.", "Proof. reflexivity. Qed."))
    assert result.verdict is Verdict.FAILED
    assert result.diagnostics[0].line == 2


async def test_full_source_as_proof(engine: ProveEngine) -> None:
    source = "Require Import Lia.\nLemma helper : 2 = 2. Proof. reflexivity. Qed.\n" \
             "Theorem main : 1 + 1 = 2. Proof. lia. Qed."
    result = await engine.check(coq("a", "", source))
    assert result.verdict is Verdict.PROVED


async def test_admitted_is_rejected(engine: ProveEngine) -> None:
    result = await engine.check(coq("a", ADD0, "Proof.\nAdmitted."))
    assert result.verdict is Verdict.FAILED
    assert "admitted" in result.message


async def test_admit_is_rejected(engine: ProveEngine) -> None:
    result = await engine.check(coq("a", ADD0, "Proof. intros. admit. Qed."))
    assert result.verdict is Verdict.FAILED
    assert "given up goals" in result.message


async def test_added_axiom_is_rejected(engine: ProveEngine) -> None:
    statement = "Axiom cheat : forall P : Prop, P.\nTheorem t : 1 = 2."
    result = await engine.check(coq("a", statement, "Proof. apply cheat. Qed."))
    assert result.verdict is Verdict.FAILED
    assert "cheat" in result.message
    axiom, theorem = result.diagnostics
    assert (axiom.line, axiom.column, axiom.end_column) == (1, 6, 11)
    assert "cheat is assumed" in axiom.message
    assert (theorem.line, theorem.column, theorem.end_column) == (2, 8, 9)
    assert theorem.message == "t depends on assumptions: cheat"


async def test_admitted_helper_lemma_is_rejected(engine: ProveEngine) -> None:
    proof = "Proof. apply helper. Qed."
    statement = "Lemma helper : 1 = 2. Admitted.\nTheorem t : 1 = 2."
    result = await engine.check(coq("a", statement, proof))
    assert result.verdict is Verdict.FAILED
    assert "helper" in result.message


async def test_malformed_source_is_located(engine: ProveEngine) -> None:
    result = await engine.check(coq("a", ADD0, "Proof.\n  intros. foo bar.\nQed."))
    assert result.verdict is Verdict.FAILED
    d = result.diagnostics[0]
    assert "foo" in d.message
    assert (d.line, d.column, d.end_line, d.end_column) == (3, 10, 3, 13)


async def test_unicode_columns_are_characters(engine: ProveEngine) -> None:
    statement = "Definition α := 1.\nTheorem t : α = 1."
    result = await engine.check(coq("a", statement, "Proof. (* é *) bogus. Qed."))
    d = result.diagnostics[0]
    assert (d.line, d.column, d.end_column) == (3, 15, 20)
    assert result.source.splitlines()[2][15:20] == "bogus"


async def test_state_does_not_leak_between_items(engine: ProveEngine) -> None:
    first = await engine.check(coq("a", "Definition leak := 3.\nTheorem t : leak = 3.",
                                   "Proof. reflexivity. Qed."))
    assert first.verdict is Verdict.PROVED
    for i in range(3):
        later = await engine.check(coq(f"b{i}", f"Theorem u{i} : leak = 3.",
                                       "Proof. reflexivity. Qed."))
        assert later.verdict is Verdict.FAILED


async def test_timeout_kills_and_replaces_worker(engine: ProveEngine) -> None:
    started = time.monotonic()
    result = await engine.check(coq("spin", SPIN + "\nTheorem t : True.", "Proof. exact I. Qed."),
                                limits=Limits(timeout_s=1.0))
    assert result.verdict is Verdict.TIMEOUT
    assert time.monotonic() - started < 4
    again = await engine.check(coq("a", "Theorem t : True.", "Proof. exact I. Qed."))
    assert again.verdict is Verdict.PROVED


async def test_the_kernel_check_catches_what_print_assumptions_misses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rocq#16646: universe checking switched off around a functor application is not
    reported by Print Assumptions. Such text is refused before Coq runs; with that refusal
    taken away here, the warm check alone says PROVED, and coqchk (coq_kernel_check) says
    FAILED. An honest proof passes coqchk too."""
    from cheats import COQ

    import scillm.server.prove._coq as coq_backend

    monkeypatch.setattr(coq_backend, "checks_switched_off", lambda source: None)
    cheat = next(c for c in COQ if c.item_id == "coq-functor-universe-16646")
    item = Obligation("k", "coq", statement=cheat.statement, proof=cheat.proof,
                      preamble=cheat.preamble)
    plain = ProveSettings(scratch_dir=tmp_path, cache_size=0)
    async with ProveEngine(plain) as engine:
        assert (await engine.check(item)).verdict is Verdict.PROVED  # the gap itself
    checked = ProveSettings(scratch_dir=tmp_path, cache_size=0, coq_kernel_check=True)
    async with ProveEngine(checked) as engine:
        caught = await engine.check(item, limits=Limits(timeout_s=60))
        honest = await engine.check(coq("h", ADD0, "Proof. intros. lia. Qed.",
                                        imports=("Lia",)), limits=Limits(timeout_s=60))
    assert caught.verdict is Verdict.FAILED and "coqchk" in caught.message, caught
    assert honest.verdict is Verdict.PROVED, honest.message


async def test_a_worker_is_retired_before_its_leaked_loads_run_out_of_descriptors(
        tmp_path: Path) -> None:
    """Coq 8.16's `Load` never closes its file: one descriptor per item (two with the
    clean reading of the statement), and past the jail's RLIMIT_NOFILE (256) every item a
    worker got failed with "Too many open files". A worker is now retired before that:
    here with 80 descriptors, 40 honest items in a row on one worker all prove."""
    from scillm.server.jail import JailSettings

    settings = ProveSettings(coq_pool_size=1, scratch_dir=tmp_path,
                             jail=JailSettings(open_files=80))
    async with ProveEngine(settings) as engine:
        items = [coq(f"i{i}", "Theorem t : 1 + 1 = 2.", "Proof. reflexivity. Qed.")
                 for i in range(40)]
        async with engine.run_batch(items, no_cache=True) as run:
            verdicts = [r.verdict async for r in run]
    assert verdicts == [Verdict.PROVED] * 40


#: What an item may print before its theorem and in its proof (idtac's text, `Check`'s
#: answer, a deprecation note that Coq's warning quotes), shaped as what the checker
#: reads: Coq's out-of-memory error, coqchk's list of an item's axioms.
PRINTS = {
    "out-of-memory": ("", 'idtac "Out of memory". idtac "Error: Out of memory.".'),
    "kernel-axiom": ("", 'idtac "* Axioms:". idtac "    Item.t : False".'),
    "check": ("Check nat.\n", "Print bool."),
    "warning-note": ('#[deprecated(since="1", note="x\n* Axioms:\n    Item.t : False")]\n'
                     "Notation one := 1.\nDefinition d := one.\n", ""),
}


@pytest.mark.parametrize("kernel", [False, True], ids=["warm", "coqchk"])
@pytest.mark.parametrize("prints", list(PRINTS), ids=list(PRINTS))
async def test_what_a_proof_prints_does_not_change_its_verdict(
        tmp_path: Path, kernel: bool, prints: str) -> None:
    """The verdict is the proof's alone. A proof that printed "Out of memory" was an ERROR
    ("coq ran out of memory or crashed": the whole of the Load's reply, printed output
    included, was searched for it), and one that printed coqchk's shape of an axiom of
    the item (or had a warning quote it) was FAILED under `coq_kernel_check`: coqc's
    output went into the text read as coqchk's summary. The same text printed by a proof
    that fails does not hide its error."""
    before, during = PRINTS[prints]
    settings = ProveSettings(scratch_dir=tmp_path, cache_size=0, coq_kernel_check=kernel)
    async with ProveEngine(settings) as engine:
        proved = await engine.check(coq("p", f"{before}Theorem t : True.",
                                        f"Proof. {during} exact I. Qed."),
                                    limits=Limits(timeout_s=60))
        failed = await engine.check(coq("f", f"{before}Theorem t : 1 = 2.",
                                        f"Proof. {during} reflexivity. Qed."),
                                    limits=Limits(timeout_s=60))
    assert (proved.verdict, proved.diagnostics) == (Verdict.PROVED, ()), proved
    assert failed.verdict is Verdict.FAILED, failed
    assert failed.message == 'Unable to unify "2" with "1".', failed.message


async def test_a_proof_that_runs_out_of_memory_is_still_an_error(engine: ProveEngine) -> None:
    """Coq's own "Error: Out of memory." on the Load stays an ERROR (not FAILED) now that
    what the item prints is no longer searched for it."""
    result = await engine.check(coq(
        "oom", "Theorem t : True.",
        "Proof. Eval vm_compute in List.length (List.repeat 0 50000000). exact I. Qed."),
        limits=Limits(timeout_s=60, memory_mb=400))
    assert result.verdict is Verdict.ERROR, result
    assert "out of memory" in result.message and "400 MiB" in result.message, result.message


@pytest.mark.parametrize(("proof", "error"), [
    ('Proof. Pwd. Check nat. Print bool. Compute 1 + 1. idtac "Error: printed".\n'
     "  reflexivity. Qed.", 'Unable to unify "2" with "1".'),
    # No located error here: the message was cut out of coqc's whole output, what the
    # proof printed first ("printed Error: There are pending proofs ...").
    ('Proof. idtac "Error: printed". Check nat.', "There are pending proofs"),
])
async def test_what_a_failed_proof_prints_is_not_a_diagnostic(
        engine: ProveEngine, proof: str, error: str) -> None:
    """coqc's printed output (Pwd, Check, Print, Compute, idtac: its standard output) was
    read with its messages (standard error) as one text: it came back as the item's first
    error diagnostic, and its message, before the one real error."""
    result = await engine.check(coq("f", "Theorem t : 1 = 2.", proof))
    assert result.verdict is Verdict.FAILED, result
    assert result.message.startswith(error), result.message
    assert [d.severity for d in result.diagnostics] == ["error"], result.diagnostics
    for d in result.diagnostics:
        assert not any(p in d.message for p in ("/tmp", "nat", "bool", "printed")), d


@pytest.mark.parametrize(("char", "point"), [
    ("\x01", "U+0001"), ("\x0c", "U+000C"), ("\x1b", "U+001B"), ("\x7f", "U+007F")])
async def test_a_control_character_in_a_callers_item_is_named_where_it_is(
        engine: ProveEngine, char: str, point: str) -> None:
    """A caller's item holding a control character coqc cannot read (every C0 one but tab,
    LF and CR, and DEL: each checked with the real coqc) came back FAILED with Coq's
    "Syntax Error: Lexer: Undefined token", of a character most displays do not show. It
    is FAILED naming the character and its line and column, before Coq runs; in a
    comment (where Coq reads it, and the item was PROVED) too: one rule wherever it is."""
    result = await engine.check(coq("c", "Theorem t : 1 + 1 = 2.",
                                    f"Proof. refl{char}exivity. Qed."))
    assert result.verdict is Verdict.FAILED, result
    (d,) = result.diagnostics
    assert f"control character {point}" in d.message and "Lexer" not in d.message, d
    assert (d.line, d.column, d.end_line, d.end_column) == (2, 11, 2, 12), d
    assert result.source.split("\n")[1][11] == char  # (splitlines breaks at U+000C)
    assert point in result.message and "line 2, column 12" in result.message, result.message
    commented = await engine.check(coq("m", "Theorem t : 1 + 1 = 2.",
                                       f"(* a{char}b *)\nProof. reflexivity. Qed."))
    assert commented.verdict is Verdict.FAILED, commented
    assert [(d.line, d.column) for d in commented.diagnostics] == [(2, 4)]


@pytest.mark.parametrize("proof", [
    'Proof. fail "Out of memory". Qed.',
    'Proof. fail "Error: Out of memory.". Qed.',
    'Proof. idtac "Out of memory". fail "out of memory". Qed.',
])
async def test_an_error_that_quotes_out_of_memory_is_the_items_failure(
        engine: ProveEngine, proof: str) -> None:
    """Coq's own error on the item's Load was searched for "Out of memory": a tactic that
    fails with that message (Coq: "Error: Tactic failure: Out of memory.") made the item's
    FAILED an ERROR, "coq ran out of memory or crashed". Only Coq's own report of its
    memory running out, "Error: Out of memory." and nothing more, is that ERROR (see
    test_a_proof_that_runs_out_of_memory_is_still_an_error)."""
    result = await engine.check(coq("q", "Theorem t : 1 = 2.", proof))
    assert result.verdict is Verdict.FAILED, result
    assert result.message.startswith("Tactic failure:"), result.message
    assert "ran out of memory" not in result.message
