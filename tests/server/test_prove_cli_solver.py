"""`scillm prove run|batch --smt-solver {z3,cvc5,both}`, run as a user runs it against a
real mesh (real z3 and cvc5 in the jail)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from meshutil import RunningMesh

from scillm.bridges.cli.prove import batch_envelope, run_envelope
from scillm.bridges.seed.prove import request_from_envelope
from scillm.prove.v1 import prove_pb2 as pb

SCILLM = str(Path(sys.executable).parent / "scillm")
PRE = "(declare-const x Int)"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCILLM, *args], capture_output=True, text=True, timeout=300,
                          check=False)


def _result(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    (result,) = [json.loads(line)["result"] for line in out.stdout.splitlines()
                 if line.startswith('{"result"')]
    return result  # type: ignore[no-any-return]


def test_the_help_names_the_choices() -> None:
    for verb in ("run", "batch"):
        said = _run("prove", verb, "--help")
        assert said.returncode == 0
        assert "--smt-solver {z3,cvc5,both}" in said.stdout, said.stdout
        assert "PROVED only when both prove it" in " ".join(said.stdout.split())
    run = " ".join(_run("prove", "run", "--help").stdout.split())
    assert "implies --backend smt" in run and "default: the server's, z3" in run


def test_an_unknown_choice_is_refused() -> None:
    said = _run("prove", "run", "(> 1 2)", "--smt-solver", "yices")
    assert said.returncode == 2 and "invalid choice: 'yices'" in said.stderr


def test_the_envelopes_carry_the_choice_only_when_given(tmp_path: Path) -> None:
    """Left out, the field is unset and the server's default (z3) applies; `run` puts it on
    its one item (an smt item), `batch` in the options (items that name none)."""
    plain = request_from_envelope(run_envelope("(> 1 2)", backend=None, proof="", preamble="",
                                               model=None, max_seconds=None))
    assert plain.items[0].smt_solver == pb.SMT_SOLVER_UNSPECIFIED
    assert plain.items[0].backend == pb.BACKEND_UNSPECIFIED
    chosen = request_from_envelope(run_envelope(
        "(> 1 2)", backend=None, proof="", preamble="", model=None, max_seconds=None,
        smt_solver="cvc5"))
    assert (chosen.items[0].smt_solver, chosen.default_backend) == (pb.SMT_SOLVER_CVC5,
                                                                     pb.BACKEND_SMT)
    lines = "\n".join(json.dumps(i) for i in [{"statement": "true"},
                                              {"statement": "true", "smt_solver": "z3"}])
    batch = request_from_envelope(batch_envelope(lines, backend=None, model=None,
                                                 max_seconds=None, smt_solver="both"))
    assert batch.default_smt_solver == pb.SMT_SOLVER_BOTH
    assert [i.smt_solver for i in batch.items] == [pb.SMT_SOLVER_UNSPECIFIED, pb.SMT_SOLVER_Z3]
    unset = request_from_envelope(batch_envelope(lines, backend=None, model=None,
                                                 max_seconds=None))
    assert unset.default_smt_solver == pb.SMT_SOLVER_UNSPECIFIED
    coq = tmp_path / "t.v"
    coq.write_text("Theorem t : True.\nProof. exact I. Qed.\n")
    with pytest.raises(ValueError, match="--smt-solver is for the smt backend; "
                                         "this item's backend is coq"):
        run_envelope(str(coq), backend=None, proof="", preamble="", model=None,
                     max_seconds=None, smt_solver="cvc5")


def test_run_with_each_solver(tmp_path: Path, mesh: RunningMesh) -> None:
    target = ("--target", mesh.grpc_target, "--no-cache", "--preamble", PRE)
    default = _run("prove", "run", "(> x x)", *target)
    assert default.returncode == 3, default.stderr
    assert _result(default)["smt_solver"] == "SMT_SOLVER_Z3"
    cvc5 = _run("prove", "run", "(> x x)", "--smt-solver", "cvc5", *target)
    assert cvc5.returncode == 3, cvc5.stderr
    result = _result(cvc5)
    assert (result["verdict"], result["smt_solver"]) == ("VERDICT_REFUTED", "SMT_SOLVER_CVC5")
    assert result["counterexample"] == "(\n(define-fun x () Int 0)\n)"
    both = _run("prove", "run", "(>= x x)", "--smt-solver", "both", *target)
    assert both.returncode == 0, both.stderr
    result = _result(both)
    assert (result["verdict"], result["smt_solver"]) == ("VERDICT_PROVED", "SMT_SOLVER_BOTH")
    assert [(v["solver"], v["verdict"]) for v in result["solver_verdicts"]] == [
        ("SMT_SOLVER_Z3", "VERDICT_PROVED"), ("SMT_SOLVER_CVC5", "VERDICT_PROVED")]
    source = tmp_path / "goal.smt2"
    source.write_text("(> 2 1)\n")
    from_file = _run("prove", "run", str(source), "--smt-solver", "cvc5", "--target",
                     mesh.grpc_target, "--no-cache")
    assert from_file.returncode == 0, from_file.stderr
    assert _result(from_file)["smt_solver"] == "SMT_SOLVER_CVC5"
    coq = tmp_path / "t.v"
    coq.write_text("Theorem t : True.\nProof. exact I. Qed.\n")
    refused = _run("prove", "run", str(coq), "--smt-solver", "cvc5", "--target",
                   mesh.grpc_target)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == ("scillm prove: --smt-solver is for the smt backend; this "
                              "item's backend is coq\n")


def test_batch_with_a_solver_for_the_items_that_name_none(tmp_path: Path,
                                                         mesh: RunningMesh) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(i) for i in [
        {"item_id": "mine", "backend": "smt", "preamble": PRE, "statement": "(> x x)"},
        {"item_id": "own", "backend": "smt", "preamble": PRE, "statement": "(> x x)",
         "smt_solver": "z3"}]) + "\n")
    out = _run("prove", "batch", str(batch), "--smt-solver", "cvc5", "--no-cache",
               "--target", mesh.grpc_target)
    assert out.returncode == 0, out.stderr
    results = {r["item_id"]: r for r in (json.loads(line)["result"]
                                         for line in out.stdout.splitlines()
                                         if line.startswith('{"result"'))}
    assert results["mine"]["smt_solver"] == "SMT_SOLVER_CVC5"
    assert results["own"]["smt_solver"] == "SMT_SOLVER_Z3"
