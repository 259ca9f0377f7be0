"""cvc5's own readiness entry: `scillm.prove.v1.ProveService/cvc5` in gRPC health, beside
`/smt` (z3), `/coq` and `/lean4`; what `ProveEngine.readiness` says, and what `scillm
doctor --target` reads of it. SERVING where cvc5 runs; NOT_SERVING where it does not, with
`ListBackends` saying why and doctor calling it an optional part, with how to install it."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from meshutil import RunningMesh, ServedProcess

from scillm.clients import ScillmClient
from scillm.prove.v1 import prove_pb2 as pb
from scillm.server.commands.doctor import Check, Status, collect, unmet
from scillm.server.prove import ProveEngine, ProveSettings

PROVE = "scillm.prove.v1.ProveService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NO_OTEL = {"PATH": "/usr/bin:/bin"}


async def _health(target: str, *parts: str) -> dict[str, int]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {p: (await stub.Check(health_pb2.HealthCheckRequest(
            service=f"{PROVE}/{p}"))).status for p in parts}


async def test_the_engine_says_each_part_is_ready(tmp_path: Path) -> None:
    async with ProveEngine(ProveSettings(scratch_dir=tmp_path)) as engine:
        ready = engine.readiness()
    assert ready == {"smt": True, "coq": True, "lean4": False, "cvc5": True}
    absent = ProveSettings(scratch_dir=tmp_path, cvc5_path=str(tmp_path / "none" / "cvc5"))
    async with ProveEngine(absent) as engine:
        assert engine.readiness()["cvc5"] is False
        assert engine.readiness()["smt"] is True  # z3 runs as ever


async def test_a_mesh_with_cvc5_serves_its_entry(mesh: RunningMesh) -> None:
    assert await _health(mesh.grpc_target, "smt", "cvc5") == {"smt": SERVING, "cvc5": SERVING}
    checks = {c.part: c for c in await collect(target=mesh.grpc_target, environ=NO_OTEL)}
    entry = checks[f"{PROVE}/cvc5"]
    assert entry.status is Status.OK
    # The local `cvc5` row and the mesh's entry tell the same story.
    assert checks["cvc5"].status is Status.OK
    assert unmet(list(checks.values()), ["cvc5"]) == []


async def test_without_cvc5_its_entry_is_not_serving_and_said_why(tmp_path: Path) -> None:
    """`scillm serve --service prove` on a host whose PATH has z3 but no cvc5."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("z3", "bwrap"):
        os.symlink(f"/usr/bin/{tool}", bin_dir / tool)
    served = ServedProcess("prove", ["--service", "prove", "--no-http", "--grpc-port", "0"],
                           {"PATH": str(bin_dir), "HOME": str(tmp_path),
                            "SCILLM_STORE_PATH": str(tmp_path / "runs.sqlite3")},
                           tmp_path / "prove.log")
    try:
        served.wait_ready()
        target = served.grpc_target
        assert await _health(target, "smt", "cvc5") == {"smt": SERVING, "cvc5": NOT_SERVING}
        async with ScillmClient(target) as client:
            listed = await client.prove.backends()
        (smt,) = [b for b in listed.backends if b.backend == pb.BACKEND_SMT]
        cvc5 = smt.solvers[1]
        assert (cvc5.solver, cvc5.available, cvc5.reason) == (
            pb.SMT_SOLVER_CVC5, False, "'cvc5' is not on PATH")
        checks = {c.part: c for c in await collect(target=target, environ=NO_OTEL)}
    finally:
        served.stop()
    entry = checks[f"{PROVE}/cvc5"]
    assert entry == Check(f"{PROVE}/cvc5", Status.MISSING,
                          "NOT_SERVING: the server lacks this part",
                          "apt-get install cvc5; optional: only smt items that ask for cvc5 "
                          "(smt_solver cvc5 or both) need it", optional=True)
    # Optional: the mesh is ready without it, unless cvc5 is what is expected.
    assert not [r for r in unmet(list(checks.values()), []) if "cvc5" in r]
    assert f"cvc5: {PROVE}/cvc5 is MISSING" in unmet(list(checks.values()), ["cvc5"])
