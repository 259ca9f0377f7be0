"""What strategies and `score()` send back is untrusted: through the real service, each odd
value is that run's own (its result as repr, its error escaped, its score_error), never the
whole stream's INTERNAL, and a run learns nothing of other callers' runs."""

from __future__ import annotations

import asyncio
import os

import pytest
from meshutil import RunningMesh

from scillm.clients import ScillmClient
from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.server.codeworld._scoring import MAX_METRICS
from scillm.server.manifests import open_run_store

GOOD = "def solve(task, context):\n    return 6\n"


def _request(*strategies: tuple[str, str], score: str = "",
             language: cw.Language = cw.LANGUAGE_PYTHON) -> cw.CodeWorldRunRequest:
    req = cw.CodeWorldRunRequest(mode=cw.SEARCH_MODE_ALL)
    req.items.add(task_id="t").context.update({"expected": 6})
    req.strategies.add(name="good", source=GOOD)
    for name, source in strategies:
        req.strategies.add(name=name, source=source, language=language)
    if score:
        req.scoring.score_source = score
    return req


async def _runs(mesh: RunningMesh, req: cw.CodeWorldRunRequest
                ) -> tuple[dict[str, cw.RunResult], cw.CodeWorldRunSummary]:
    async with ScillmClient(mesh.grpc_target) as client:
        events = [e async for e in client.codeworld.run(req)]
    assert events[-1].HasField("summary")
    return {e.run.strategy: e.run for e in events if e.HasField("run")}, events[-1].summary


async def test_an_int_past_any_float_is_that_runs_repr_in_stream_and_record(
        mesh: RunningMesh) -> None:
    """`return 10**400` failed the whole run INTERNAL (OverflowError building its Value):
    every other strategy's result and the stored manifest's result were lost."""
    runs, summary = await _runs(mesh, _request(
        ("bigint", "def solve(task, context):\n    return 10**400\n")))
    assert runs["good"].result.number_value == 6 and runs["good"].tests_passed
    assert runs["bigint"].status == cw.RUN_STATUS_OK
    assert runs["bigint"].result.string_value == repr(10**400)
    assert summary.rankings[0].entries[0].strategy == "good"
    store = open_run_store(mesh.mesh.settings)
    try:
        stored = await asyncio.to_thread(store.get, summary.manifest.run_id)
    finally:
        store.close()
    assert stored is not None and stored.result.items == 1  # type: ignore[attr-defined]
    kept = {e["run"]["strategy"]: e["run"] for e in stored.events if "run" in e}
    assert kept["bigint"]["result"] == repr(10**400)


_RAISES = "def solve(task, context):\n    raise ValueError('bad \\ud800 end')\n"
_JS_THROWS = "function solve(task, context) { throw new Error('bad \\ud800 end'); }"


@pytest.mark.parametrize(("source", "language"), [
    (_RAISES, cw.LANGUAGE_PYTHON), (_JS_THROWS, cw.LANGUAGE_JAVASCRIPT)],
    ids=["python", "javascript"])
async def test_a_lone_surrogate_in_a_strategys_error_is_escaped(
        mesh: RunningMesh, source: str, language: cw.Language) -> None:
    """A lone surrogate (JSON's "\\ud800") on a protobuf string field failed the whole run
    INTERNAL (UnicodeEncodeError)."""
    runs, _ = await _runs(mesh, _request(("lone", source), language=language))
    assert runs["good"].tests_passed
    assert runs["lone"].status == cw.RUN_STATUS_ERROR
    assert "bad \\ud800 end" in runs["lone"].error, runs["lone"].error


async def test_a_lone_surrogate_in_a_result_is_that_runs_repr(mesh: RunningMesh) -> None:
    runs, _ = await _runs(mesh, _request(
        ("lone", "def solve(task, context):\n    return {'\\ud800': 'x\\udfff'}\n")))
    assert runs["good"].tests_passed
    assert runs["lone"].result.string_value == repr({"\ud800": "x\udfff"})


async def test_a_lone_surrogate_in_a_metric_name_is_escaped(mesh: RunningMesh) -> None:
    runs, summary = await _runs(mesh, _request(
        score="def score(task, context, outputs, timings):\n"
              "    return {'bad \\ud800': 1.0, 'caf\\u00e9 \\u03b1': 0.5}\n"))
    assert dict(runs["good"].metrics) == {"bad \\ud800": 1.0, "café α": 0.5}  # valid: as is
    assert not runs["good"].score_error
    assert dict(summary.rankings[0].entries[0].metrics) == {"bad \\ud800": 1.0, "café α": 0.5}


async def test_a_lone_surrogate_in_a_scorers_error_is_escaped(mesh: RunningMesh) -> None:
    runs, _ = await _runs(mesh, _request(
        score="def score(task, context, outputs, timings):\n"
              "    raise ValueError('bad \\ud800 end')\n"))
    assert runs["good"].score_error == \
        "score() failed: error (exception): ValueError: bad \\ud800 end"


async def test_a_score_may_return_max_metrics_and_no_more(mesh: RunningMesh) -> None:
    """150,000 metrics from each of 20 strategies' score() held the mesh's event loop for
    30 s (every caller's /readyz waited): a score() returns at most MAX_METRICS."""
    def scorer(count: int) -> str:
        return ("def score(task, context, outputs, timings):\n"
                f"    return {{f'm{{i}}': 0.5 for i in range({count})}}\n")

    runs, summary = await _runs(mesh, _request(
        ("other", "def solve(task, context):\n    return 7\n"), score=scorer(MAX_METRICS)))
    assert len(runs["good"].metrics) == MAX_METRICS and not runs["good"].score_error
    assert len(summary.rankings[0].entries[0].metrics) == MAX_METRICS
    runs, summary = await _runs(mesh, _request(score=scorer(150_000)))
    good = runs["good"]
    assert good.score_error == (f"score() returned 150000 metrics; it may return at most "
                                f"{MAX_METRICS}")
    assert set(good.metrics) == {"correctness", "speed", "brevity"}  # the rubric's instead
    assert summary.rankings[0].entries[0].strategy == "good"


async def test_a_runs_directory_says_nothing_of_other_runs(mesh: RunningMesh) -> None:
    """The run directory was /tmp/run-<n>: a run read how many runs other callers had
    made on its worker. Every run's directory is now named the same."""
    probe = "import os\ndef solve(task, context):\n    return os.getcwd()\n"
    req = cw.CodeWorldRunRequest(mode=cw.SEARCH_MODE_ALL)
    for i in range(6):
        req.items.add(task_id=f"t{i}")
    req.strategies.add(name="probe", source=probe)
    req.limits.concurrency = 2
    runs = []
    for _ in range(2):
        async with ScillmClient(mesh.grpc_target) as client:
            runs += [e.run async for e in client.codeworld.run(req) if e.HasField("run")]
    cwds = {r.result.string_value for r in runs}
    assert all(r.status == cw.RUN_STATUS_OK for r in runs), runs
    assert {os.path.basename(c) for c in cwds} == {"run"}, cwds
