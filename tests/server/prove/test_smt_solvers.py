"""The smt backend's solver choice (z3, cvc5, both) on the real z3 and cvc5 binaries, in
the jail: on the engine, through ProveService on a real gRPC server (127.0.0.1:0), through
the `certainly/` door and `scillm prove batch`.

One test points z3 at a stand-in that SIMULATES A SOLVER BUG (the real z3, its every `sat`
answer rewritten to `unsat`): the cross-check must not let it make a false statement
PROVED. Another points cvc5 at a path that does not exist: a request for it is refused
with FAILED_PRECONDITION, and z3 items run as ever.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import openai
import pytest
from cheats import SMT, Cheat
from meshutil import RunningMesh

from scillm.bridges.seed.prove import request_from_envelope
from scillm.clients import InvalidRequestError, RPCError, ScillmClient
from scillm.prove.v1 import prove_pb2 as pb
from scillm.prove.v1 import prove_pb2_grpc
from scillm.server.completion_link import CompletionLink
from scillm.server.interceptors import build_interceptors
from scillm.server.jail import JailSettings
from scillm.server.prove import (
    InvalidObligation,
    Limits,
    Obligation,
    ProveEngine,
    ProveSettings,
    SolverUnavailable,
    Verdict,
)
from scillm.server.prove.servicer import ERRORS, ProveServicer
from scillm.server.settings import Settings

PRE = "(declare-const x Int)\n(assert (> x 0))"
THEOREM = "(> (+ x 1) x)"
NON_THEOREM = "(> x 1)"
#: A false statement with no preamble (so no consistency check): its negation is sat.
FALSE_ALONE = "(forall ((y Int)) (> (* y y) y))"
#: A goal cvc5 1.0.3 cannot read within 64 MiB (see test_cvc5_worker.py).
HUNGRY = "(= (str.len (str.++ " + " ".join(['"abcdefghij"'] * 20000) + ")) 3)"
Z3_VERSION = "Z3 version 4.8.12 - 64 bit"
CVC5_VERSION = "This is cvc5 version 1.0.3"


def smt(item_id: str, statement: str, preamble: str = PRE, solver: str = "") -> Obligation:
    return Obligation(item_id, "smt", statement=statement, preamble=preamble,
                      smt_solver=solver)


# --------------------------------------------------------------------------- the engine


async def test_a_theorem_both_solvers_prove(engine: ProveEngine) -> None:
    result = await engine.check(smt("t", THEOREM, solver="both"))
    assert (result.verdict, result.vacuous, result.smt_solver) == (Verdict.PROVED, False, "both")
    assert [(s.solver, s.verdict, s.version) for s in result.solvers] == [
        ("z3", Verdict.PROVED, Z3_VERSION), ("cvc5", Verdict.PROVED, CVC5_VERSION)]
    assert result.message == ("z3 and cvc5 agree: negated goal is unsat; the assumptions "
                              "are consistent")
    assert result.diagnostics == ()


async def test_a_non_theorem_both_solvers_refute_with_a_model(engine: ProveEngine) -> None:
    result = await engine.check(smt("f", NON_THEOREM, solver="both"))
    assert result.verdict is Verdict.REFUTED
    z3, cvc5 = result.solvers
    assert result.counterexample == z3.counterexample == "(\n  (define-fun x () Int\n    1)\n)"
    assert cvc5.counterexample == "(\n(define-fun x () Int 1)\n)"
    assert (z3.verdict, cvc5.verdict) == (Verdict.REFUTED, Verdict.REFUTED)


async def test_cvc5_alone_and_z3_by_default(engine: ProveEngine) -> None:
    proved = await engine.check(smt("p", THEOREM, solver="cvc5"))
    assert (proved.verdict, proved.smt_solver) == (Verdict.PROVED, "cvc5")
    assert [(s.solver, s.version) for s in proved.solvers] == [("cvc5", CVC5_VERSION)]
    refuted = await engine.check(smt("r", NON_THEOREM, solver="cvc5"))
    assert (refuted.verdict, refuted.counterexample) == (
        Verdict.REFUTED, "(\n(define-fun x () Int 1)\n)")
    unknown = await engine.check(smt("u", "(> x q)", solver="cvc5"))
    assert (unknown.verdict, unknown.message) == (Verdict.FAILED, "Symbol q is not declared.")
    d = unknown.diagnostics[0]
    assert (d.line, d.column) == (3, 18) and unknown.source.splitlines()[2][18] == "q"
    default = await engine.check(smt("d", THEOREM))
    assert default.smt_solver == "z3"
    assert [(s.solver, s.verdict) for s in default.solvers] == [("z3", Verdict.PROVED)]


async def test_a_vacuous_proof_is_vacuous_for_both(engine: ProveEngine) -> None:
    result = await engine.check(smt("v", "(> x 5)", "(declare-const x Int)\n(assert false)",
                                    solver="both"))
    assert result.verdict is Verdict.PROVED and result.vacuous
    (d,) = result.diagnostics  # each solver's warning, said once
    assert d.severity == "warning" and d.message.startswith("vacuous:")


async def test_the_rules_before_any_solver_hold_for_cvc5_and_both(engine: ProveEngine) -> None:
    """A command in the preamble, a control character: FAILED before any solver runs."""
    for solver in ("cvc5", "both"):
        refused = await engine.check(smt("c", "(> x 0)", "(declare-const x Int)\n(push 1)",
                                         solver=solver))
        assert refused.verdict is Verdict.FAILED and refused.solvers == ()
        assert "not allowed in the preamble" in refused.diagnostics[0].message
        control = await engine.check(smt("k", "(> x\x1b 0)", solver=solver))
        assert control.verdict is Verdict.FAILED and control.solvers == ()
        assert control.diagnostics[0].message.startswith("the control character U+001B")


@pytest.mark.parametrize("solver", ["cvc5", "both"])
@pytest.mark.parametrize("cheat", SMT, ids=lambda c: c.item_id)
async def test_no_smt_cheat_is_a_clean_proved(engine: ProveEngine, cheat: Cheat,
                                              solver: str) -> None:
    result = await engine.check(smt(cheat.item_id, cheat.statement, cheat.preamble, solver),
                                limits=Limits(timeout_s=30))
    assert not (result.verdict is Verdict.PROVED and not result.vacuous), result
    texts = [result.message, *(d.message for d in result.diagnostics)]
    # The checker's own words, the same whichever solver; a solver's words are its own
    # (cvc5: "Symbol x is not declared." where z3 says "unknown constant x").
    said = cheat.says if not result.solvers or cheat.says == "vacuous" else ""
    assert not said or any(said in t for t in texts), (cheat.says, texts)
    assert result.verdict is not Verdict.FAILED or result.diagnostics


async def test_cvc5_out_of_memory_is_an_error(tmp_path: Path) -> None:
    # Workers start at the item's 64 MiB: a cvc5 started with more and then held to 64 MiB
    # takes about ten times longer to run out.
    small = Limits(timeout_s=60, memory_mb=64)
    async with ProveEngine(ProveSettings(scratch_dir=tmp_path, default_limits=small)) as engine:
        result = await engine.check(smt("m", HUNGRY, "", "cvc5"), limits=small)
        after = await engine.check(smt("n", THEOREM, solver="cvc5"))  # on a fresh worker
    assert (result.verdict, result.message) == (
        Verdict.ERROR, 'cvc5 exited (memory limit 64 MiB?): (error "std::bad_alloc")')
    assert after.verdict is Verdict.PROVED


async def test_each_solver_choice_has_its_own_cache_entry(engine: ProveEngine) -> None:
    seen = []
    for solver in ("z3", "z3", "cvc5", "both", "cvc5", "both"):
        result = await engine.check(smt("c", THEOREM, solver=solver))
        assert result.verdict is Verdict.PROVED
        seen.append((solver, result.cached, len(result.solvers)))
    assert seen == [("z3", False, 1), ("z3", True, 1), ("cvc5", False, 1), ("both", False, 2),
                    ("cvc5", True, 1), ("both", True, 2)]


async def test_a_solver_choice_is_for_smt_items_only(engine: ProveEngine) -> None:
    coq = Obligation("q", "coq", statement="Theorem t : True.", proof="Proof. exact I. Qed.",
                     smt_solver="cvc5")
    with pytest.raises(InvalidObligation) as raised:
        engine.run_batch([coq])
    assert raised.value.param == "smt_solver" and "for smt items" in raised.value.message
    with pytest.raises(InvalidObligation) as unknown:
        engine.run_batch([smt("y", THEOREM, solver="yices")])
    assert unknown.value.message == ("item 'y': unknown smt_solver 'yices'; choose from z3, "
                                     "cvc5, both")


# --------------------------------------------------------------------------- gRPC


@asynccontextmanager
async def serving(settings: ProveSettings) -> AsyncIterator[str]:
    """ProveService on a real gRPC server at 127.0.0.1:0 over an engine of `settings`,
    behind the mesh's own interceptors (its error mapping); yields the target."""
    engine = ProveEngine(settings)
    await engine.start()
    link = CompletionLink(lambda: "127.0.0.1:1")  # no formalisation here
    server = grpc.aio.server(interceptors=build_interceptors(Settings(), ERRORS, False))
    prove_pb2_grpc.add_ProveServiceServicer_to_server(ProveServicer(engine, link), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await engine.close()


async def _results(target: str, request: pb.ProveRequest
                   ) -> tuple[dict[str, pb.ItemResult], pb.ProveSummary]:
    async with ScillmClient(target) as client:
        events = [e async for e in client.prove.prove(request)]
    return {e.result.item_id: e.result for e in events[:-1]}, events[-1].summary


def _item(item_id: str, statement: str, preamble: str = PRE,
          solver: int = pb.SMT_SOLVER_UNSPECIFIED) -> pb.Obligation:
    return pb.Obligation(item_id=item_id, backend=pb.BACKEND_SMT, statement=statement,
                         preamble=preamble, smt_solver=solver)  # type: ignore[arg-type]


async def test_the_solvers_through_grpc(tmp_path: Path) -> None:
    request = pb.ProveRequest(default_smt_solver=pb.SMT_SOLVER_BOTH, items=[
        _item("theorem", THEOREM), _item("non-theorem", NON_THEOREM),
        _item("cvc5", NON_THEOREM, solver=pb.SMT_SOLVER_CVC5),
        _item("z3", THEOREM, solver=pb.SMT_SOLVER_Z3)])
    async with serving(ProveSettings(scratch_dir=tmp_path)) as target:
        results, summary = await _results(target, request)
        async with ScillmClient(target) as client:
            listed = await client.prove.backends()
    theorem, refuted = results["theorem"], results["non-theorem"]
    assert (theorem.verdict, theorem.smt_solver) == (pb.VERDICT_PROVED, pb.SMT_SOLVER_BOTH)
    assert [(v.solver, v.verdict) for v in theorem.solver_verdicts] == [
        (pb.SMT_SOLVER_Z3, pb.VERDICT_PROVED), (pb.SMT_SOLVER_CVC5, pb.VERDICT_PROVED)]
    assert theorem.backend_version == f"{Z3_VERSION} + {CVC5_VERSION}"
    assert refuted.verdict == pb.VERDICT_REFUTED and "define-fun x () Int" in \
        refuted.counterexample
    assert [v.counterexample for v in refuted.solver_verdicts] == [
        "(\n  (define-fun x () Int\n    1)\n)", "(\n(define-fun x () Int 1)\n)"]
    assert results["cvc5"].smt_solver == pb.SMT_SOLVER_CVC5
    assert results["cvc5"].counterexample == "(\n(define-fun x () Int 1)\n)"
    assert results["cvc5"].backend_version == CVC5_VERSION
    assert (results["z3"].smt_solver, results["z3"].backend_version) == (pb.SMT_SOLVER_Z3,
                                                                         Z3_VERSION)
    assert (summary.items, summary.proved, summary.refuted) == (4, 2, 2)
    versions = dict(summary.manifest.versions)
    assert {k: versions.get(k) for k in ("smt", "smt:z3", "smt:cvc5")} == {
        "smt": Z3_VERSION, "smt:z3": Z3_VERSION, "smt:cvc5": CVC5_VERSION}
    (smt_info,) = [b for b in listed.backends if b.backend == pb.BACKEND_SMT]
    assert [(s.solver, s.available, s.version) for s in smt_info.solvers] == [
        (pb.SMT_SOLVER_Z3, True, Z3_VERSION), (pb.SMT_SOLVER_CVC5, True, CVC5_VERSION)]


def _lying_z3(tmp_path: Path) -> Path:
    """SIMULATES A SOLVER BUG: a z3 that answers `unsat` where the real one says `sat` (so
    it "proves" false statements). The real z3 under it, in the same jail."""
    where = tmp_path / "lying-solver"
    where.mkdir()
    where.chmod(0o755)  # bound into the jail, read by its unprivileged uid
    z3 = where / "z3"
    z3.write_text('#!/bin/sh\n# Test stand-in simulating a solver bug: sat becomes unsat.\n'
                  'if [ "$1" = --version ]; then exec /usr/bin/z3 --version; fi\n'
                  "/usr/bin/z3 \"$@\" | /usr/bin/sed -u 's/^sat$/unsat/'\n")
    z3.chmod(0o755)
    return z3


async def test_a_lying_solver_cannot_make_a_false_statement_proved(tmp_path: Path) -> None:
    z3 = _lying_z3(tmp_path)
    settings = ProveSettings(scratch_dir=tmp_path, z3_path=str(z3),
                             jail=JailSettings(ro_binds=(str(z3.parent),)))
    request = pb.ProveRequest(no_cache=True, items=[
        _item("z3-alone", FALSE_ALONE, "", pb.SMT_SOLVER_Z3),
        _item("cvc5-alone", FALSE_ALONE, "", pb.SMT_SOLVER_CVC5),
        _item("cross-checked", FALSE_ALONE, "", pb.SMT_SOLVER_BOTH)])
    async with serving(settings) as target:
        results, summary = await _results(target, request)
        again, _ = await _results(target, pb.ProveRequest(items=[
            _item("cross-checked", FALSE_ALONE, "", pb.SMT_SOLVER_BOTH)]))
    # The simulated bug, alone, is believed: that is what the cross-check is for.
    assert results["z3-alone"].verdict == pb.VERDICT_PROVED
    assert results["cvc5-alone"].verdict == pb.VERDICT_REFUTED
    crossed = results["cross-checked"]
    assert crossed.verdict == pb.VERDICT_ERROR and not crossed.counterexample
    (d,) = crossed.diagnostics
    assert d.severity == pb.SEVERITY_ERROR
    assert d.message.startswith("solvers disagree: z3 answered unsat (PROVED): negated goal "
                                "is unsat; cvc5 answered sat (REFUTED): ")
    assert crossed.error.startswith("z3 and cvc5 disagree, so neither is trusted: ")
    assert [(v.solver, v.verdict) for v in crossed.solver_verdicts] == [
        (pb.SMT_SOLVER_Z3, pb.VERDICT_PROVED), (pb.SMT_SOLVER_CVC5, pb.VERDICT_REFUTED)]
    assert (summary.proved, summary.refuted, summary.unknown) == (1, 1, 1)
    # A disagreement is not remembered: it is checked again.
    assert again["cross-checked"].verdict == pb.VERDICT_ERROR
    assert not again["cross-checked"].cached


async def test_cvc5_missing_is_a_failed_precondition(tmp_path: Path) -> None:
    absent = tmp_path / "absent" / "cvc5"
    async with serving(ProveSettings(scratch_dir=tmp_path, cvc5_path=str(absent))) as target:
        async with ScillmClient(target) as client:
            listed = await client.prove.backends()
            for solver in (pb.SMT_SOLVER_CVC5, pb.SMT_SOLVER_BOTH):
                with pytest.raises(RPCError) as raised:
                    [e async for e in client.prove.prove(pb.ProveRequest(
                        items=[_item("c", THEOREM, solver=solver)]))]
                assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
                assert raised.value.message.startswith(
                    f"item 'c': SMT solver 'cvc5' is unavailable: '{absent}' is not on PATH")
                assert raised.value.param == "smt_solver"
        results, _ = await _results(target, pb.ProveRequest(items=[_item("z", THEOREM)]))
    assert results["z"].verdict == pb.VERDICT_PROVED  # z3 runs as ever
    (smt_info,) = [b for b in listed.backends if b.backend == pb.BACKEND_SMT]
    assert smt_info.available
    cvc5 = smt_info.solvers[1]
    assert (cvc5.solver, cvc5.available, cvc5.reason) == (
        pb.SMT_SOLVER_CVC5, False, f"'{absent}' is not on PATH")


async def test_the_engine_refuses_cvc5_missing_with_a_typed_error(tmp_path: Path) -> None:
    settings = ProveSettings(scratch_dir=tmp_path, cvc5_path=str(tmp_path / "none"))
    async with ProveEngine(settings) as engine:
        with pytest.raises(SolverUnavailable) as raised:
            engine.run_batch([smt("c", THEOREM, solver="cvc5")])
    assert (raised.value.solver, raised.value.backend) == ("cvc5", "smt")


async def test_a_wrong_solver_choice_is_an_invalid_argument(tmp_path: Path) -> None:
    coq = pb.Obligation(item_id="q", backend=pb.BACKEND_COQ, statement="Theorem t : True.",
                        proof="Proof. exact I. Qed.", smt_solver=pb.SMT_SOLVER_CVC5)
    unknown = pb.ProveRequest(items=[_item("u", THEOREM)])
    unknown.items[0].smt_solver = 9  # type: ignore[assignment]
    async with serving(ProveSettings(scratch_dir=tmp_path)) as target:
        async with ScillmClient(target) as client:
            for request, param in ((pb.ProveRequest(items=[coq]), "smt_solver"),
                                   (unknown, "items[0].smt_solver")):
                with pytest.raises(RPCError) as raised:
                    [e async for e in client.prove.prove(request)]
                assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
                assert raised.value.param == param


# --------------------------------------------------------------------------- the doors


def test_the_envelope_takes_a_solver_per_item_and_for_the_request() -> None:
    request = request_from_envelope({
        "model": "certainly/smt", "options": {"smt_solver": "both"},
        "items": [{"statement": "true"}, {"statement": "true", "smt_solver": "CVC5"}]})
    assert request.default_smt_solver == pb.SMT_SOLVER_BOTH
    assert [i.smt_solver for i in request.items] == [pb.SMT_SOLVER_UNSPECIFIED,
                                                     pb.SMT_SOLVER_CVC5]
    with pytest.raises(InvalidRequestError) as raised:
        request_from_envelope({"items": [{"statement": "true", "smt_solver": "yices"}]})
    assert raised.value.param == "items[0].smt_solver"


def test_the_choice_through_the_door(mesh: RunningMesh) -> None:
    sdk = openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="x", max_retries=0,
                        timeout=120)
    reply = sdk.chat.completions.create(
        model="certainly/smt", messages=[{"role": "user", "content": "check"}],
        extra_body={"items": [{"item_id": "t", "preamble": PRE, "statement": THEOREM},
                              {"item_id": "f", "preamble": PRE, "statement": NON_THEOREM}],
                    "options": {"smt_solver": "both", "no_cache": True}})
    content = reply.choices[0].message.content or ""
    assert content == "Certainly: 2 items, 1 proved, 1 failed (1 refuted), 0 unproved"
    events = (reply.model_extra or {})["scillm"]["events"]
    results = {e["result"]["item_id"]: e["result"] for e in events if "result" in e}
    for item_id, verdict in (("t", "VERDICT_PROVED"), ("f", "VERDICT_REFUTED")):
        assert results[item_id]["smt_solver"] == "SMT_SOLVER_BOTH"
        assert [(v["solver"], v["verdict"]) for v in results[item_id]["solver_verdicts"]] == [
            ("SMT_SOLVER_Z3", verdict), ("SMT_SOLVER_CVC5", verdict)]


def test_the_choice_through_the_cli(tmp_path: Path, mesh: RunningMesh) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps({"item_id": "f", "backend": "smt", "preamble": PRE,
                                 "statement": NON_THEOREM, "smt_solver": "cvc5"}) + "\n")
    out = subprocess.run([sys.executable, "-m", "scillm.server.cli", "prove", "batch",
                          str(batch), "--no-cache", "--target", mesh.grpc_target],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    (result,) = [json.loads(line)["result"] for line in out.stdout.splitlines()
                 if "result" in line]
    assert (result["verdict"], result["smt_solver"]) == ("VERDICT_REFUTED", "SMT_SOLVER_CVC5")
    assert result["counterexample"] == "(\n(define-fun x () Int 1)\n)"
