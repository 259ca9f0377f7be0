"""No cheat is ever a clean PROVED: the corpus (cheats.py) through the real z3 and Coq,
on the engine, through one gRPC batch, `scillm prove batch` and the `certainly/` door;
provers write nothing on the host and read no host file; `no_cache` checks again; the
formalize loop cannot be cheated by a trailing lemma."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from cheats import ALL, COQ, SMT, Cheat
from meshutil import RunningMesh

from scillm.clients import ScillmClient
from scillm.prove.v1 import prove_pb2 as pb
from scillm.server.prove import (
    FormalizeOptions,
    ItemResult,
    Limits,
    Obligation,
    ProveEngine,
    Verdict,
)

BACKENDS = {"smt": pb.BACKEND_SMT, "coq": pb.BACKEND_COQ}


def test_the_corpus_is_big_enough() -> None:
    assert len(ALL) >= 30 and len(COQ) >= 25 and len(SMT) >= 12
    assert len({c.item_id for c in ALL}) == len(ALL)


def _obligation(c: Cheat) -> Obligation:
    return Obligation(c.item_id, c.backend, statement=c.statement, proof=c.proof,
                      preamble=c.preamble)


def _explained(c: Cheat, texts: list[str]) -> bool:
    return not c.says or any(c.says in t for t in texts)


@pytest.mark.parametrize("cheat", ALL, ids=lambda c: c.item_id)
async def test_no_cheat_is_a_clean_proved(engine: ProveEngine, cheat: Cheat) -> None:
    result: ItemResult = await engine.check(_obligation(cheat), limits=Limits(timeout_s=30))
    clean = result.verdict is Verdict.PROVED and not result.vacuous
    assert not clean, result
    if result.verdict is Verdict.PROVED:
        assert any(d.severity == "warning" and d.message.startswith("vacuous:")
                   for d in result.diagnostics)
    texts = [result.message, *(d.message for d in result.diagnostics)]
    assert _explained(cheat, texts), (cheat.says, texts)


async def test_the_first_row_is_located_on_the_admitted_theorem(engine: ProveEngine) -> None:
    row = COQ[0]
    result = await engine.check(_obligation(row))
    assert result.verdict is Verdict.FAILED
    (d,) = result.diagnostics
    assert (d.line, d.column, d.end_column) == (1, 8, 11)
    assert result.source.splitlines()[0][d.column:d.end_column] == "bad"


async def test_honest_proofs_next_to_the_cheats_still_prove(engine: ProveEngine) -> None:
    """The rules refuse assumptions, not honest structure: sections whose variables the
    statement uses, modules, helpers, Program obligations solved, instances, Lia."""
    honest = [
        Obligation("section-variable", "coq", statement="Theorem t : n + 0 = n.",
                   proof="Proof. auto. Qed. End S.", preamble="Section S. Variable n : nat."),
        Obligation("helper-in-module", "coq", preamble="Module H. Lemma two : 1 + 1 = 2. "
                   "Proof. reflexivity. Qed. End H.", statement="Theorem t : 1 + 1 = 2.",
                   proof="Proof. exact H.two. Qed."),
        Obligation("program", "coq", preamble="Require Import Program.\nProgram Definition "
                   "f : {n : nat | n = 1} := 1.", statement="Theorem t : proj1_sig f = 1.",
                   proof="Proof. exact (proj2_sig f). Qed."),
        Obligation("lia", "coq", imports=("Lia",), statement="Lemma t (n : nat) : n + 1 > n.",
                   proof="Proof. lia. Qed."),
        Obligation("whole-file", "coq", proof="Inductive color := Red | Blue.\n"
                   "Theorem t : forall c : color, c = Red \\/ c = Blue.\n"
                   "Proof. intros []; auto. Qed."),
        Obligation("smt-consistent", "smt", preamble="(declare-const x Int)\n(assert (> x 5))",
                   statement="(> x 3)"),
        # Items of their own vocabulary (Software Foundations' style), new notations with
        # Coq's tokens in them, binders named like a definition: they mean what they say.
        Obligation("own-plus", "coq", preamble="Fixpoint plus (n m : nat) : nat := "
                   "match n with O => m | S p => S (plus p m) end.",
                   statement="Theorem t : plus 0 3 = 3.", proof="Proof. reflexivity. Qed."),
        Obligation("own-list", "coq", preamble="Inductive natlist : Type := nil | cons (n : "
                   "nat) (l : natlist).\nFixpoint length (l : natlist) : nat := match l with "
                   "nil => 0 | cons _ t => S (length t) end.",
                   statement="Theorem t : length nil = 0.", proof="Proof. reflexivity. Qed."),
        Obligation("notation-with-a-comma", "coq",
                   preamble="Notation \"'ALL' x , P\" := (forall x : nat, P) "
                   "(at level 200, x ident).", statement="Theorem t : ALL n, n + 0 = n.",
                   proof="Proof. intro n. rewrite <- plus_n_O. reflexivity. Qed."),
        Obligation("notation-with-bars", "coq", imports=("Coq.ZArith.ZArith",),
                   preamble="Notation \"| x |\" := (Z.abs x) (at level 30).",
                   statement="Theorem t : | 0%Z | = 0%Z.", proof="Proof. reflexivity. Qed."),
        Obligation("binder-named-like-a-constructor", "coq",
                   preamble="Inductive t1 := id | other.",
                   statement="Theorem t : forall id : nat, id = id.",
                   proof="Proof. reflexivity. Qed."),
        Obligation("binder-named-error", "coq",
                   statement="Theorem t : forall Error : Prop, Error -> Error.",
                   proof="Proof. auto. Qed."),
    ]
    for ob in honest:
        result = await engine.check(ob)
        assert result.verdict is Verdict.PROVED and not result.vacuous, result
        if ob.item_id == "binder-named-error":  # reads the same in plain Coq: no note
            assert not result.diagnostics, result


def _request(cheats: list[Cheat]) -> pb.ProveRequest:
    request = pb.ProveRequest(no_cache=True, items=[
        pb.Obligation(item_id=c.item_id, backend=BACKENDS[c.backend],  # type: ignore[arg-type]
                      statement=c.statement, proof=c.proof, preamble=c.preamble)
        for c in cheats])
    request.limits.timeout.FromSeconds(30)
    return request


def _check_results(results: dict[str, dict[str, Any]]) -> None:
    assert set(results) == {c.item_id for c in ALL}
    for c in ALL:
        r = results[c.item_id]
        clean = r.get("verdict") == "VERDICT_PROVED" and not r.get("vacuous")
        assert not clean, (c.item_id, r)
        texts = [r.get("error", ""), *(d.get("message", "") for d in r.get("diagnostics", []))]
        if r.get("verdict") == "VERDICT_FAILED" or r.get("vacuous"):
            assert _explained(c, texts), (c.item_id, c.says, texts)


async def test_the_corpus_through_one_grpc_batch(mesh: RunningMesh) -> None:
    from google.protobuf import json_format

    async with ScillmClient(mesh.grpc_target) as client:
        first = [e async for e in client.prove.prove(_request(ALL))]
        again = [e async for e in client.prove.prove(_request(ALL))]
    for events in (first, again):
        results = {e.result.item_id: json_format.MessageToDict(
            e.result, preserving_proto_field_name=True) for e in events if e.HasField("result")}
        _check_results(results)
        assert not any(e.result.cached for e in events if e.HasField("result"))
        summary = events[-1].summary
        assert summary.vacuous >= 4 and summary.items == len(ALL)


def test_the_corpus_through_the_cli(tmp_path: Path, mesh: RunningMesh) -> None:
    batch = tmp_path / "cheats.jsonl"
    batch.write_text("".join(json.dumps({"item_id": c.item_id, "backend": c.backend,
                                         "statement": c.statement, "proof": c.proof,
                                         "preamble": c.preamble}) + "\n" for c in ALL))
    out = subprocess.run([sys.executable, "-m", "scillm.server.cli", "prove", "batch",
                          str(batch), "--no-cache", "--max-seconds", "30", "--target",
                          mesh.grpc_target], capture_output=True, text=True, timeout=600,
                         check=False)
    assert out.returncode in (0, 1), out.stderr  # 1: the Quit item is an ERROR verdict
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    _check_results({x["result"]["item_id"]: x["result"] for x in lines if "result" in x})
    assert "vacuously" in out.stderr


def test_the_corpus_through_the_door(mesh: RunningMesh) -> None:
    sdk = openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="x", max_retries=0,
                        timeout=600)
    reply = sdk.chat.completions.create(
        model="certainly", messages=[{"role": "user", "content": "check"}],
        extra_body={"items": [{"item_id": c.item_id, "backend": c.backend,
                               "statement": c.statement, "proof": c.proof,
                               "preamble": c.preamble} for c in ALL],
                    "options": {"no_cache": True, "max_seconds": 30}})
    content = reply.choices[0].message.content or ""
    assert content.startswith(f"Certainly: {len(ALL)} items") and "vacuously" in content
    events = (reply.model_extra or {})["scillm"]["events"]
    _check_results({e["result"]["item_id"]: e["result"] for e in events if "result" in e})


async def test_provers_write_nothing_on_the_host_and_read_no_host_file(
        engine: ProveEngine, tmp_path: Path) -> None:
    assert engine.isolation == "bubblewrap"
    secret = tmp_path / "Secret.v"
    secret.write_text("Theorem helper : 1 + 1 = 2. Proof. reflexivity. Qed.\n")
    targets = [tmp_path / "redirected", Path("/tmp") / f"scillm-escape-{tmp_path.name}",
               tmp_path / "extracted.ml"]
    writes = [
        Obligation("redirect-host", "coq", preamble=f'Redirect "{targets[0]}" Print nat.',
                   statement="Theorem t : True.", proof="Proof. exact I. Qed."),
        Obligation("redirect-tmp", "coq", preamble=f'Redirect "{targets[1]}" Print nat.',
                   statement="Theorem t : True.", proof="Proof. exact I. Qed."),
        Obligation("extraction", "coq", preamble=f'Require Extraction.\nExtraction '
                   f'"{targets[2]}" nat.', statement="Theorem t : True.",
                   proof="Proof. exact I. Qed."),
    ]
    for ob in writes:
        await engine.check(ob)
    for target in targets:
        assert not [p for p in target.parent.iterdir() if p.name.startswith(target.name)], target
    loaded = await engine.check(Obligation(
        "load-host", "coq", preamble=f'Load "{secret.with_suffix("")}".',
        statement="Theorem t : 1 + 1 = 2.", proof="Proof. exact helper. Qed."))
    assert loaded.verdict is Verdict.FAILED
    assert "find" in loaded.message or "not found" in loaded.message, loaded.message
    etc = await engine.check(Obligation(
        "load-etc", "coq", preamble='Load "/etc/passwd".', statement="Theorem t : True.",
        proof="Proof. exact I. Qed."))
    assert etc.verdict is Verdict.FAILED
    smt_out = await engine.check(Obligation(
        "smt-channel", "smt", preamble=f'(set-option :regular-output-channel "{targets[1]}")',
        statement="true"))
    assert smt_out.verdict is Verdict.FAILED and not targets[1].exists()


async def test_no_cache_checks_again(engine: ProveEngine) -> None:
    ob = Obligation("c", "coq", statement="Theorem t : 2 + 2 = 4.", proof="Proof. auto. Qed.")
    first = await engine.check(ob)
    cached = await engine.check(ob)
    assert not first.cached and cached.cached
    async with engine.run_batch([ob], no_cache=True) as run:
        fresh = [r async for r in run]
    assert fresh[0].verdict is Verdict.PROVED and not fresh[0].cached


async def test_the_formalize_loop_refuses_the_trailing_lemma_trick(
        engine: ProveEngine) -> None:
    """A model that admits the real theorem and appends a trivial lemma gets FAILED, and
    the repair round sees why."""
    cheat = ("```coq\nTheorem main : forall n : nat, n * 0 = 1.\nProof. Admitted.\n"
             "Lemma trivial_one : True. Proof. exact I. Qed.\n```")
    also = ("```coq\nLemma trivial_one : True. Proof. exact I. Qed.\n"
            "Theorem main : forall n : nat, n * 0 = 1.\nProof. Admitted.\n```")
    asked: list[list[dict[str, str]]] = []

    async def model(messages: list[dict[str, str]], *, model: str,
                    temperature: float | None) -> tuple[str, dict[str, Any]]:
        asked.append(messages)
        return (cheat if len(asked) == 1 else also), {"prompt_tokens": 1, "completion_tokens": 1}

    item = Obligation("r", "coq", requirement_text="n times zero is one")
    async with engine.run_batch([item], formalize=FormalizeOptions("m", max_attempts=2),
                                complete=model) as run:
        (result,) = [r async for r in run]
    assert result.verdict is Verdict.FAILED
    assert [a.verdict for a in result.attempts] == [Verdict.FAILED, Verdict.FAILED]
    assert "main is assumed" in asked[1][-1]["content"]


async def test_the_formalize_loop_refuses_a_model_that_assumes_its_goal(
        engine: ProveEngine) -> None:
    """A model's smt code that asserts the goal in its declarations was PROVED, and not
    vacuous (the assumption is consistent): the model may declare and define, not assume.
    Its redefinition of `not` is refused as a caller's is."""
    replies = ["```smt2\n(declare-const x Int)\n(assert (> x 5))\n; goal\n(> x 5)\n```",
               "```smt2\n(define-fun not ((b Bool)) Bool b)\n; goal\n(= 1 2)\n```"]
    asked: list[list[dict[str, str]]] = []

    async def model(messages: list[dict[str, str]], *, model: str,
                    temperature: float | None) -> tuple[str, dict[str, Any]]:
        asked.append(messages)
        return replies[len(asked) - 1], {"prompt_tokens": 1, "completion_tokens": 1}

    item = Obligation("r", "smt", requirement_text="1 equals 2",
                      preamble="(declare-const y Int)\n(assert (> y 0))")
    async with engine.run_batch([item], formalize=FormalizeOptions("m", max_attempts=2),
                                complete=model) as run:
        (result,) = [r async for r in run]
    assert result.verdict is Verdict.FAILED
    assert [a.verdict for a in result.attempts] == [Verdict.FAILED, Verdict.FAILED]
    first = result.attempts[0]
    assert "not assert" in first.diagnostics[0].message and first.diagnostics[0].line == 4
    assert "may declare and define, not assert" in asked[1][-1]["content"]
    assert "'not' is defined by the solver" in result.attempts[1].diagnostics[0].message


async def test_an_item_open_for_another_reason_is_not_blamed_on_its_reading(
        engine: ProveEngine) -> None:
    """The slow path loads the item again after the reset: its reading with the imports
    alone must be made again too, or an axiom's item was also told its statement means
    something else."""
    result = await engine.check(Obligation(
        "axiom", "coq", preamble="Axiom cheat : False.", statement="Theorem bad : 1 = 2.",
        proof="Proof. destruct cheat. Qed."))
    assert result.verdict is Verdict.FAILED
    messages = [d.message for d in result.diagnostics]
    assert any("cheat is assumed" in m for m in messages), messages
    assert not any("imports alone" in m for m in messages), messages
