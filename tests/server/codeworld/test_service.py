"""What a CodeWorld caller reads over gRPC: MCTS numbers, variants, typed errors."""

from __future__ import annotations

import math

import grpc
import pytest
from meshutil import RunningMesh

from scillm.clients import RPCError, ScillmClient
from scillm.codeworld.v1 import codeworld_pb2 as cw

TESTS = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(4, 4) == 8\n"


def _add_request() -> cw.CodeWorldRunRequest:
    req = cw.CodeWorldRunRequest(mode=cw.SEARCH_MODE_MCTS)
    req.items.add(task_id="add", tests=TESTS, entry_point="f")
    for name, op in (("plus", "+"), ("minus", "-"), ("times", "*")):
        req.strategies.add(name=name, source=f"def f(x, y):\n    return x {op} y\n")
    return req


async def _events(mesh: RunningMesh, req: cw.CodeWorldRunRequest
                  ) -> list[cw.CodeWorldRunResponse]:
    async with ScillmClient(mesh.grpc_target) as client:
        return [e async for e in client.codeworld.run(req)]


async def test_mcts_summary_reads_value_as_total_and_mean_as_mean(mesh: RunningMesh) -> None:
    req = _add_request()
    req.mcts.rollouts, req.mcts.depth, req.mcts.seed = 9, 1, 1
    events = await _events(mesh, req)
    progress = [e.mcts_progress for e in events if e.HasField("mcts_progress")]
    stats = events[-1].summary.mcts_stats
    assert stats.best_variant_id == "plus" and len(progress) == 9
    rewards = [p.reward for p in progress if p.variant_id == "plus"]
    plus = next(c for c in stats.children if c.variant_id == "plus")
    assert plus.visits == len(rewards) > 1
    assert math.isclose(plus.mean, sum(rewards) / len(rewards))
    assert math.isclose(plus.value, plus.mean * plus.visits)
    assert plus.mean > 0.9  # correct, short and quick: the rubric without speed
    # Every run says which variant it evaluated.
    runs = [e.run for e in events if e.HasField("run")]
    assert runs and {r.variant_id for r in runs} == {"plus", "minus", "times"}
    assert all(r.variant_id == r.strategy for r in runs)


async def test_mcts_expansions_are_reported_even_when_they_add_nothing(
        mesh: RunningMesh) -> None:
    """depth 2 with a model whose answer is not the JSON asked for (echo): each
    expansion's record says why no variant was added."""
    req = _add_request()
    req.mcts.rollouts, req.mcts.depth, req.mcts.seed, req.mcts.model = 6, 2, 3, "echo/x"
    events = await _events(mesh, req)
    streamed = [e.generation for e in events if e.HasField("generation")]
    expansions = events[-1].summary.mcts_stats.expansions
    assert streamed and list(expansions) == streamed
    for record in expansions:
        assert record.parent_id in {"plus", "minus", "times"}
        assert record.model == "echo/x" and record.accepted == 0 and not record.variant_ids
        assert "not JSON" in record.error
    assert {c.variant_id for c in events[-1].summary.mcts_stats.children} == {
        "plus", "minus", "times"}


@pytest.mark.parametrize("language", [99, -1])
async def test_an_unknown_language_is_invalid_argument_naming_the_field(
        mesh: RunningMesh, language: int) -> None:
    req = _add_request()
    req.mode = cw.SEARCH_MODE_ALL
    req.strategies.add(name="cobol", source="DISPLAY 'HI'", language=language)  # type: ignore[arg-type]
    with pytest.raises(RPCError) as info:
        await _events(mesh, req)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == "strategies[3].language"
    assert "unknown language" in info.value.message


@pytest.mark.parametrize(("field", "param"), [("mode", "mode"),
                                              ("judge", "scoring.judge.mode")])
async def test_an_unknown_mode_is_invalid_argument_not_the_default(
        mesh: RunningMesh, field: str, param: str) -> None:
    """A search or judge mode this server does not know (a newer client's) ran as the
    default (all strategies, weighted judge), silently; it is refused, naming it."""
    req = _add_request()
    if field == "mode":
        req.mode = 7  # type: ignore[assignment]
    else:
        req.scoring.judge.mode = 7  # type: ignore[assignment]
    with pytest.raises(RPCError) as info:
        await _events(mesh, req)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == param and "7" in info.value.message


async def test_a_score_that_times_out_says_so(mesh: RunningMesh) -> None:
    req = _add_request()
    req.mode = cw.SEARCH_MODE_ALL
    del req.strategies[1:]
    req.scoring.score_source = "def score(task, context, outputs, timings):\n    while True: pass\n"
    req.limits.timeout.FromMilliseconds(500)
    events = await _events(mesh, req)
    run = next(e.run for e in events if e.HasField("run"))
    assert run.status == cw.RUN_STATUS_OK and run.tests_passed
    assert run.score_error == "score() failed: timeout (wall_time)"
    raised = "def score(task, context, outputs, timings):\n    raise KeyError('speed')\n"
    req.scoring.score_source = raised
    events = await _events(mesh, req)
    run = next(e.run for e in events if e.HasField("run"))
    assert run.score_error == "score() failed: error (exception): KeyError: 'speed'"


async def test_autogenerate_without_a_model_says_what_to_configure(mesh: RunningMesh) -> None:
    req = cw.CodeWorldRunRequest(mode=cw.SEARCH_MODE_MCTS)
    req.items.add(task_id="t")
    req.mcts.autogenerate = True
    with pytest.raises(RPCError) as info:
        await _events(mesh, req)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == "mcts.model"
    assert "SCILLM_CODEWORLD_MODEL" in info.value.message


_SCORE = "def score(task, context, outputs, timings):\n    return {'m': 1.0}\n"
_DEEP = "x = " + "-" * 200_000 + "1"  # the parser's stack overflows: MemoryError
_LONG = "x = " + "+".join(["1"] * 100_000)  # building the AST recurses: RecursionError


@pytest.mark.parametrize(("field", "source", "strict"), [
    ("strategy", "def f(x, y):\n    return x + y\n\x00", False),
    ("strategy", "def f(x, y):\n    return x + y\n\x00", True),
    ("strategy", _DEEP, False),
    ("strategy", _DEEP, True),
    ("strategy", _LONG, False),
    ("scorer", _SCORE + "\x00", False),
    ("scorer", _DEEP, False),
    ("scorer", _LONG, False),
])
async def test_a_source_no_parser_reads_is_invalid_argument_naming_it(
        mesh: RunningMesh, field: str, source: str, strict: bool) -> None:
    """A NUL byte in a source (ValueError from the parser) or nesting past the parser's
    limits (MemoryError, RecursionError) failed the call as INTERNAL."""
    req = _add_request()
    req.mode = cw.SEARCH_MODE_ALL
    req.limits.strict = strict
    if field == "strategy":
        req.strategies[1].source, param = source, "strategies[1].source"
    else:
        req.scoring.score_source, param = source, "scoring.score_source"
    with pytest.raises(RPCError) as info:
        await _events(mesh, req)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value.message
    assert info.value.param == param and param in info.value.message


@pytest.mark.parametrize("weight", [math.inf, -math.inf, math.nan, 1e308, 1e6 + 1, -1.0])
async def test_a_judge_weight_out_of_range_is_invalid_argument(mesh: RunningMesh,
                                                               weight: float) -> None:
    """Weights of inf, NaN or 1e308 were accepted: scores became NaN or inf and a wrong
    strategy could rank first."""
    req = _add_request()
    req.mode = cw.SEARCH_MODE_ALL
    req.scoring.judge.weights["correctness"] = weight
    with pytest.raises(RPCError) as info:
        await _events(mesh, req)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == "scoring.judge.weights"
    assert "correctness" in info.value.message


async def test_the_largest_judge_weight_still_ranks_the_right_strategy(
        mesh: RunningMesh) -> None:
    req = _add_request()
    req.mode = cw.SEARCH_MODE_ALL
    req.scoring.judge.weights["correctness"] = 1e6
    summary = (await _events(mesh, req))[-1].summary
    best = summary.rankings[0].entries[0]
    assert best.strategy == "plus" and math.isfinite(best.score)


async def test_a_program_whose_output_nests_too_deeply_fails_alone(mesh: RunningMesh) -> None:
    """A main() printing JSON nested 30,000 deep made reading its output raise
    RecursionError: the whole run failed INTERNAL, every other strategy's result lost."""
    req = cw.CodeWorldRunRequest(mode=cw.SEARCH_MODE_ALL)
    req.items.add(task_id="t").context.update({"input": 1, "expected": 3})
    req.strategies.add(name="deep", source="def main():\n"
                       "    print('[' * 30000 + ']' * 30000)\n")
    req.strategies.add(name="three", source="def main():\n    print(3)\n")
    events = await _events(mesh, req)
    runs = {e.run.strategy: e.run for e in events if e.HasField("run")}
    assert runs["three"].status == cw.RUN_STATUS_OK and runs["three"].tests_passed
    assert runs["deep"].status == cw.RUN_STATUS_ERROR and not runs["deep"].tests_passed
    assert "deep" in runs["deep"].error
    assert events[-1].summary.rankings[0].entries[0].strategy == "three"


@pytest.mark.parametrize("printed", ["[NaN, Infinity, -Infinity]", "1e999", "-Infinity"])
async def test_a_program_that_prints_numbers_json_has_not_fails_alone(
        mesh: RunningMesh, printed: str) -> None:
    """Python's JSON reader takes NaN and Infinity, and reads 1e999 as inf: a program
    printing them made the run's record unserialisable, and the whole run failed INTERNAL
    with every other strategy's result and the ranking lost. Such output is text."""
    req = cw.CodeWorldRunRequest(mode=cw.SEARCH_MODE_ALL)
    req.items.add(task_id="t").context.update({"input": 1, "expected": 3})
    req.strategies.add(name="nan", source=f"def main():\n    print({printed!r})\n")
    req.strategies.add(name="three", source="def main():\n    print(3)\n")
    events = await _events(mesh, req)
    runs = {e.run.strategy: e.run for e in events if e.HasField("run")}
    assert runs["three"].status == cw.RUN_STATUS_OK and runs["three"].tests_passed
    assert runs["nan"].result.string_value == printed, runs["nan"]
    assert events[-1].summary.rankings[0].entries[0].strategy == "three"


async def test_a_runs_stored_record_is_bounded_and_its_stream_is_whole(
        mesh: RunningMesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller sets how much output each run may have: 240 runs of 1.5 MB were held in
    memory and written as one JSON value past SQLite's limit, and the summary was lost.
    Past RECORDED_BYTES a run's stored copy leaves its output out, and says so."""
    import asyncio

    from scillm.server.codeworld import servicer
    from scillm.server.manifests import open_run_store

    monkeypatch.setattr(servicer, "RECORDED_BYTES", 30_000)
    req = cw.CodeWorldRunRequest()
    for i in range(4):
        req.items.add(task_id=f"t{i}").context.update({"input": i})
    req.strategies.add(name="loud", language=cw.LANGUAGE_PYTHON,
                       source="def solve(task, context):\n    print('x' * 10000)\n"
                              "    return context['input']\n")
    req.limits.concurrency = 1
    events = await _events(mesh, req)
    runs = [e.run for e in events if e.HasField("run")]
    assert len(runs) == 4 and all(len(r.stdout) == 10001 for r in runs)  # the stream: whole
    summary = events[-1].summary
    store = open_run_store(mesh.mesh.settings)
    try:
        stored = await asyncio.to_thread(store.get, summary.manifest.run_id)
    finally:
        store.close()
    assert stored is not None and stored.result.succeeded == 4  # type: ignore[attr-defined]
    kept = [e["run"] for e in stored.events if "run" in e]
    assert len(kept) == 4
    whole = [r for r in kept if not r.get("output_not_stored")]
    cut = [r for r in kept if r.get("output_not_stored")]
    assert len(whole) == 2 and all(len(r["stdout"]) == 10001 for r in whole)
    assert len(cut) == 2 and all("stdout" not in r and "result" not in r for r in cut)
