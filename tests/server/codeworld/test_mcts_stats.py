"""MCTS statistics as a caller reads them: value is the total, mean the mean.

A property test drives the real `Search` (with a scripted evaluation and model, no
sandbox) and reads its statistics through the servicer's `summary_to_proto`, where the
mean was once divided by the visits a second time.
"""

from __future__ import annotations

import asyncio
import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from scillm.server.codeworld import (
    MctsProgress,
    MctsSettings,
    RunResult,
    Status,
    Strategy,
    Summary,
)
from scillm.server.codeworld._mcts import Search
from scillm.server.codeworld.servicer import summary_to_proto


def _search_events(rewards: dict[str, float], settings_: MctsSettings,
                   improved: list[float]) -> tuple[list[MctsProgress], Summary]:
    """Run a search where strategy `name` earns `rewards[name]` and the model's k-th
    variant earns `improved[k % len]`."""
    earned = dict(rewards)
    proposals = iter(range(10_000))

    async def evaluate(strategy: Strategy) -> list[RunResult]:
        return [RunResult(strategy.name, "t", "python", Status.OK,
                          aggregate=earned[strategy.source])]

    async def complete(messages: list[dict[str, str]], *, model: str, temperature: float,
                       seed: int | None, response_format: object = None) -> str:
        k = next(proposals)
        earned[f"variant {k}"] = improved[k % len(improved)]
        return json.dumps({"variants": [{"id": f"v{k}", "title": "t", "rationale": "r",
                                         "code": f"variant {k}"}]})

    async def main() -> tuple[list[MctsProgress], Summary]:
        search = Search(settings_, evaluate=evaluate, reward=lambda runs: runs[0].aggregate,
                        items=(), complete=complete if improved else None)
        progress = [e async for e in search.run([Strategy(n, n) for n in rewards])
                    if isinstance(e, MctsProgress)]
        return progress, Summary({}, (), {}, "test", mcts_stats=search.stats())

    return asyncio.run(main())


rewards_ = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]),
                           st.floats(0, 1, allow_nan=False), min_size=1)


@settings(max_examples=60, deadline=None)
@given(rewards=rewards_, rollouts=st.integers(1, 25), uct_c=st.floats(0, 3),
       seed=st.integers(0, 1000), depth=st.integers(1, 3),
       improved=st.lists(st.floats(0, 1, allow_nan=False), max_size=3))
def test_value_is_the_total_and_mean_the_mean_of_rollout_rewards(
        rewards: dict[str, float], rollouts: int, uct_c: float, seed: int, depth: int,
        improved: list[float]) -> None:
    mcts = MctsSettings(rollouts=rollouts, depth=depth, uct_c=uct_c, seed=seed)
    progress, summary = _search_events(rewards, mcts, improved)
    stats = summary_to_proto(summary, 1).mcts_stats
    assert stats.rollouts == len(progress) == rollouts
    for child in stats.children:
        assert math.isclose(child.mean * child.visits, child.value, abs_tol=1e-9), child
        # The rollouts through a node: the node itself or one of its descendants.
        through = [p.reward for p in progress if p.variant_id == child.variant_id
                   or p.variant_id.startswith(child.variant_id + ">")]
        assert child.visits == len(through)
        if through:
            assert math.isclose(child.mean, sum(through) / len(through), abs_tol=1e-9)
    best = next(c for c in stats.children if c.variant_id == stats.best_variant_id)
    own = [p.reward for p in progress if p.variant_id == best.variant_id]
    if not any(c.parent_id == best.variant_id and c.visits for c in stats.children):
        assert math.isclose(best.mean, sum(own) / len(own), abs_tol=1e-9)


def test_the_issue_example_reads_total_and_mean() -> None:
    """x+y right (0.9886), x-y and x*y wrong: 9 rollouts, depth 1, seed 1."""
    rewards = {"add": 0.9886, "sub": 0.2886, "mul": 0.2886}
    progress, summary = _search_events(rewards, MctsSettings(rollouts=9, depth=1, seed=1), [])
    stats = summary_to_proto(summary, 1).mcts_stats
    add = next(c for c in stats.children if c.variant_id == "add")
    assert stats.best_variant_id == "add"
    assert math.isclose(add.mean, 0.9886) and add.visits > 1
    assert math.isclose(add.value, 0.9886 * add.visits)
    assert all(math.isclose(p.reward, 0.9886) for p in progress if p.variant_id == "add")
