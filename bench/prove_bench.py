"""Prove bench: warm worker pools vs one prover process per obligation.

Run: .venv/bin/python bench/prove_bench.py [--smt N] [--coq N] [--lia N]

Targets: through the service, >= 20x one z3 per obligation and >= 5x one coqc per obligation.

For each backend it checks N small, distinct obligations (cache disabled) through a
`ProveEngine` with prewarmed pools (provers jailed in bubblewrap, every declaration's
assumptions and the stated type checked), then the same sources with one `z3`/`coqc`
process per obligation, sequentially and unjailed (coqc also runs `Print Assumptions`
of the theorem). It prints obligations/s for both and their ratio.

`--coqchk N` also times the other way to judge a Coq item that the issue weighed: compile
it to a .vo with coqc and run the independent kernel checker `coqchk -o` on it (the
standard library admitted, not re-checked), one pair of processes per obligation.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # before grpc is imported

import argparse
import asyncio
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from scillm.server.prove import Limits, Obligation, ProveEngine, ProveSettings, Verdict


def smt_items(n: int) -> list[Obligation]:
    return [Obligation(f"s{i}", "smt", preamble="(declare-const x Int)\n(declare-const y Int)\n"
                       f"(assert (> x {i}))", statement=f"(> (+ x y {i}) y)") for i in range(n)]


def coq_items(n: int) -> list[Obligation]:
    shapes = [("Theorem t{i} : {i} + 0 = {i}.", "Proof. reflexivity. Qed."),
              ("Lemma l{i} : forall n : nat, 0 + n + {i} = n + {i}.", "Proof. intros. simpl. "
               "reflexivity. Qed."),
              ("Theorem a{i} : forall P Q : Prop, P /\\ Q -> Q /\\ P.",
               "Proof. intros P Q [p q]. split; assumption. Qed.")]
    return [Obligation(f"c{i}", "coq", statement=shapes[i % 3][0].format(i=i),
                       proof=shapes[i % 3][1]) for i in range(n)]


def lia_items(n: int) -> list[Obligation]:
    return [Obligation(f"l{i}", "coq", imports=("Lia",),
                       statement=f"Lemma l{i} : forall n : nat, n + {i} >= {i}.",
                       proof="Proof. intros. lia. Qed.") for i in range(n)]


async def pooled(items: list[Obligation], settings: ProveSettings) -> tuple[float, Counter[str]]:
    async with ProveEngine(settings) as engine:
        started = time.perf_counter()
        verdicts = Counter([r.verdict.value async for r in
                            engine.run_batch(items, defaults=Limits(timeout_s=60))])
        return time.perf_counter() - started, verdicts


def cold(items: list[Obligation], engine: ProveEngine, scratch: Path) -> float:
    started = time.perf_counter()
    for item in items:
        backend = engine.backend(item.backend)
        if item.backend == "smt":
            path = scratch / "item.smt2"
            path.write_text(backend.source_of(item))
            argv = ["z3", str(path)]
        else:
            name = item.statement.split()[1]
            path = scratch / "Item.v"
            path.write_text(backend.source_of(item) + f"Print Assumptions {name}.\n")
            argv = ["coqc", "-q", path.name]
        out = subprocess.run(argv, cwd=scratch, capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    return time.perf_counter() - started


def kernel_checked(items: list[Obligation], engine: ProveEngine, scratch: Path) -> float:
    """coqc to a .vo, then `coqchk -o` of that library (stdlib admitted), per obligation."""
    started = time.perf_counter()
    for item in items:
        path = scratch / "Item.v"
        path.write_text(engine.backend("coq").source_of(item))
        for argv in (["coqc", "-q", path.name],
                     ["coqchk", "-silent", "-o", "-admit", "Coq.Init.Prelude", "-admit",
                      "Coq.micromega.Lia", "-norec", "Item"]):
            out = subprocess.run(argv, cwd=scratch, capture_output=True, text=True, check=False)
            assert out.returncode == 0, out.stdout + out.stderr
    return time.perf_counter() - started


def report(label: str, n: int, warm: float, verdicts: Counter[str], cold_s: float) -> None:
    print(f"{label:<28} n={n:<4} pool {n / warm:8.1f} obl/s ({warm:6.2f} s)   "
          f"cold {n / cold_s:7.1f} obl/s ({cold_s:6.2f} s)   ratio {cold_s / warm:6.1f}x   "
          f"{dict(verdicts)}")


async def through_service(items: list[Obligation], scratch: Path) -> tuple[float, Counter[str]]:
    """The same obligations as one batch through ProveService over gRPC."""
    from dataclasses import replace

    from scillm.clients import ScillmClient
    from scillm.prove.v1 import prove_pb2 as pb
    from scillm.server.app import Mesh
    from scillm.server.settings import Settings

    backends = {"smt": pb.BACKEND_SMT, "coq": pb.BACKEND_COQ}
    request = pb.ProveRequest(no_cache=True, items=[
        pb.Obligation(item_id=o.item_id, backend=backends[o.backend],  # type: ignore[arg-type]
                      statement=o.statement, proof=o.proof, preamble=o.preamble,
                      imports=list(o.imports)) for o in items])
    request.limits.timeout.FromSeconds(60)
    mesh = Mesh(replace(Settings(), grpc_port=0, http_enabled=False,
                        services=("completion", "prove"), store_path=scratch / "runs.sqlite3"))
    await mesh.start()
    try:
        async with ScillmClient(mesh.grpc_target) as client:
            started = time.perf_counter()
            verdicts: Counter[str] = Counter()
            async for event in client.prove.prove(request):
                if event.HasField("result"):
                    verdicts[pb.Verdict.Name(event.result.verdict)] += 1
            return time.perf_counter() - started, verdicts
    finally:
        await mesh.stop(1.0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smt", type=int, default=400)
    parser.add_argument("--coq", type=int, default=200)
    parser.add_argument("--lia", type=int, default=20)
    parser.add_argument("--coqchk", type=int, default=10,
                        help="obligations timed as coqc + coqchk per obligation")
    parser.add_argument("--pool", type=int, default=2, help="workers per backend")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        settings = ProveSettings(smt_pool_size=args.pool, coq_pool_size=args.pool, prewarm=True,
                                 cache_size=0, scratch_dir=scratch)
        probe = ProveEngine(settings)
        for label, items in (("smt (z3)", smt_items(args.smt)),
                             ("coq (trivial tactics)", coq_items(args.coq)),
                             ("coq (Require Lia + lia)", lia_items(args.lia))):
            if not items:
                continue
            warm, verdicts = await pooled(items, settings)
            assert set(verdicts) == {Verdict.PROVED.value}, verdicts
            cold_s = cold(items, probe, scratch)
            report(label, len(items), warm, verdicts, cold_s)
            served, served_verdicts = await through_service(items, scratch)
            report("  through ProveService", len(items), served, served_verdicts, cold_s)
        if args.coqchk:
            items = coq_items(args.coqchk)
            warm, verdicts = await pooled(items, settings)
            kernel = kernel_checked(items, probe, scratch)
            report("coq: coqc + coqchk each", len(items), warm, verdicts, kernel)


if __name__ == "__main__":
    asyncio.run(main())
