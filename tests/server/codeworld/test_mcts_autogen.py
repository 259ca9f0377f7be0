"""MCTS determinism with a scripted model, and autogeneration success and failure."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from scillm.server.codeworld import (
    AutogenSpec,
    CodeWorldEngine,
    CodeWorldSettings,
    Event,
    Generation,
    Item,
    MctsProgress,
    MctsSettings,
    RunRequest,
    SandboxSettings,
    Strategy,
    Summary,
)

ITEMS = (Item("sq-3", "square it", {"input": 3, "expected": 9}),
         Item("sq-4", "square it", {"input": 4, "expected": 16}))
WEAK = Strategy("weak", "def solve(task, context):\n    return context['input'] * 2\n")


class Scripted:
    """A deterministic model: improves by answering the right code, records its calls."""

    def __init__(self, answer: str | None = None) -> None:
        self.calls: list[tuple[int | None, float]] = []
        self.formats: list[dict[str, Any] | None] = []
        self.answer = answer

    async def __call__(self, messages: list[dict[str, str]], *, model: str,
                       temperature: float, seed: int | None,
                       response_format: dict[str, Any] | None = None) -> str:
        self.calls.append((seed, temperature))
        self.formats.append(response_format)
        if self.answer is not None:
            return self.answer
        code = "def solve(task, context):\n    return context['input'] ** 2\n"
        return json.dumps({"variants": [{"id": f"v{seed}", "title": "square",
                                         "rationale": "use a power", "code": code}]})


async def _run(complete: Scripted, request: RunRequest) -> list[Event]:
    settings = CodeWorldSettings(sandbox=SandboxSettings(workers=2))
    async with CodeWorldEngine(settings, complete=complete) as engine:
        return [event async for event in engine.run(request)]


async def test_mcts_is_deterministic_and_improves() -> None:
    mcts = MctsSettings(rollouts=6, depth=2, exploration_constant=0.5, seed=7)
    request = RunRequest(ITEMS, (WEAK,), mcts=mcts)
    first, second = Scripted(), Scripted()
    events_a = await _run(first, request)
    events_b = await _run(second, request)
    progress_a = [e for e in events_a if isinstance(e, MctsProgress)]
    progress_b = [e for e in events_b if isinstance(e, MctsProgress)]
    assert progress_a == progress_b and len(progress_a) == 6
    assert first.calls == second.calls and first.calls[0][0] is not None
    summary = events_a[-1]
    assert isinstance(summary, Summary) and summary.mcts_stats is not None
    stats = summary.mcts_stats
    assert stats.best_variant_id.startswith("weak>") and stats.best_reward > 0.9
    assert stats.visits == 6 and stats.explored >= 2 and stats.rollouts == 6
    assert mcts.uct_c == 0.5
    assert {n.variant_id for n in stats.children} >= {"weak", stats.best_variant_id}


async def test_autogenerate_records_the_generation() -> None:
    model = Scripted()
    request = RunRequest(ITEMS, (WEAK,),
                         autogenerate=AutogenSpec(n=1, model="scripted", temperature=0.3,
                                                  seed=1))
    events = await _run(model, request)
    generation = next(e for e in events if isinstance(e, Generation))
    assert generation.error == "" and generation.variant_ids == ("v1",)
    assert len(generation.prompt_sha256) == 64 and generation.model == "scripted"
    summary = events[-1]
    assert isinstance(summary, Summary)
    assert summary.rankings["sq-3"][0].strategy == "v1"


async def test_variants_are_asked_for_in_their_json_shape() -> None:
    """The model call carries the answer's shape as `response_format` (the local model
    then decodes to it by grammar): at most `n` variants of four strings each."""
    model = Scripted()
    await _run(model, RunRequest(ITEMS, (WEAK,), autogenerate=AutogenSpec(n=2)))
    fmt = model.formats[0]
    assert fmt is not None and fmt["type"] == "json_schema"
    schema = fmt["json_schema"]["schema"]
    one = {"id": "a", "title": "t", "rationale": "r", "code": "x = 1"}
    jsonschema.validate({"variants": [one, {**one, "id": "b"}]}, schema)
    for wrong in ({"variants": [one] * 3}, {"variants": []}, {"variants": [{"id": "a"}]}):
        assert not jsonschema.Draft202012Validator(schema).is_valid(wrong)


async def test_failed_generation_is_reported_not_stubbed() -> None:
    for answer in ("not json", json.dumps({"variants": []}),
                   json.dumps({"variants": [{"id": "x", "title": "t", "rationale": "r",
                                             "code": "def solve(:"}]})):
        events = await _run(Scripted(answer), RunRequest(ITEMS, (WEAK,),
                                                         autogenerate=AutogenSpec(n=2)))
        generation = next(e for e in events if isinstance(e, Generation))
        assert generation.error and generation.variant_ids == ()
        summary = events[-1]
        assert isinstance(summary, Summary) and summary.counts["strategies"] == 1
