"""Monte-Carlo tree search over code variants, where a rollout runs the code.

The root's children are the request's strategies. A rollout selects by UCT down the
tree; an unvisited node is evaluated (every item is run in the sandbox, the reward is
the mean aggregate score); a visited node above ``depth`` may be expanded by asking the
model for an improved variant given the scores and errors so far (at most ``branching``
times). Rewards are backed up along the path. Evaluations are cached per node, UCT ties
break with a ``Random(seed)``, and model calls get ``seed + rollout``: the same seed and
a deterministic model give the same search.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from ._autogen import Complete, generate, variants_prompt
from ._events import Event, Generation, MctsProgress, MctsStats, NodeStats, RunResult
from ._model import Item, MctsSettings, Strategy
from .errors import InvalidRequest

Evaluate = Callable[[Strategy], Awaitable[list[RunResult]]]
Reward = Callable[[list[RunResult]], float]


@dataclass(eq=False)
class _Node:
    id: str
    strategy: Strategy | None
    depth: int
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    reward: float | None = None
    runs: list[RunResult] = field(default_factory=list)
    expansions: int = 0


def check_mcts(settings: MctsSettings) -> None:
    """Raise ``InvalidRequest`` for settings out of range."""
    if not 1 <= settings.rollouts <= 1000:
        raise InvalidRequest("mcts.rollouts must be in [1, 1000]")
    if not 1 <= settings.depth <= 10:
        raise InvalidRequest("mcts.depth must be in [1, 10]")
    if not 0 <= settings.uct_c <= 100 or not 1 <= settings.branching <= 16:
        raise InvalidRequest("mcts.uct_c must be in [0, 100] and branching in [1, 16]")
    if settings.time_budget is not None and settings.time_budget <= 0:
        raise InvalidRequest("mcts.time_budget must be positive")


class Search:
    """One search; ``run`` yields run results, generations and progress events."""

    def __init__(self, settings: MctsSettings, *, evaluate: Evaluate, reward: Reward,
                 items: Sequence[Item], complete: Complete | None = None,
                 language: str = "python") -> None:
        self._settings = settings
        self._evaluate = evaluate
        self._reward = reward
        self._items = items
        self._complete = complete
        self._language = language
        self._root = _Node("", None, 0)
        self._rng = random.Random(settings.seed)
        self._rollouts = 0
        self._stopped = "not started"
        self._expansions: list[Generation] = []

    async def run(self, initial: Sequence[Strategy]) -> AsyncIterator[Event]:
        """Search, yielding every event; ``stats()`` describes the result afterwards."""
        self._root.children = [_Node(s.name, s, 1, self._root) for s in initial]
        deadline = (None if self._settings.time_budget is None
                    else time.monotonic() + self._settings.time_budget)
        self._stopped = "rollouts"
        for rollout in range(self._settings.rollouts):
            if deadline is not None and time.monotonic() >= deadline:
                self._stopped = "time_budget"
                break
            if not self._root.children:
                self._stopped = "no variants"
                break
            path = [self._root]
            node = self._root
            while True:
                fresh = [c for c in node.children if c.visits == 0]
                if fresh:
                    node = fresh[0]
                    path.append(node)
                    break
                if self._expandable(node):
                    node.expansions += 1
                    child = None
                    async for event in self._expand(node, rollout):
                        if isinstance(event, _Node):
                            child = event
                        else:
                            yield event
                    if child is not None:
                        node = child
                        path.append(node)
                        break
                if not node.children:
                    break
                node = self._select(node)
                path.append(node)
            if node.reward is None:
                assert node.strategy is not None
                node.runs = [replace(run, variant_id=node.id)
                             for run in await self._evaluate(node.strategy)]
                for run in node.runs:
                    yield run
                node.reward = self._reward(node.runs)
            for visited in path:
                visited.visits += 1
                visited.value += node.reward
            self._rollouts = rollout + 1
            best = self._best()
            yield MctsProgress(rollout + 1, node.id, node.reward, best.id, best.reward or 0.0)

    def stats(self) -> MctsStats:
        """Visits, values and the best variant of the search so far."""
        nodes = self._nodes()
        best = self._best()
        return MctsStats(
            visits=self._root.visits,
            values={n.id: n.value / n.visits for n in nodes if n.visits},
            best_variant_id=best.id, best_reward=best.reward or 0.0,
            explored=sum(1 for n in nodes if n.reward is not None), rollouts=self._rollouts,
            stopped=self._stopped,
            children=tuple(NodeStats(n.id, n.parent.id if n.parent else "", n.depth, n.visits,
                                     n.value, n.reward or 0.0)
                           for n in nodes),
            expansions=tuple(self._expansions))

    def _expandable(self, node: _Node) -> bool:
        return (node is not self._root and self._complete is not None
                and node.depth < self._settings.depth
                and node.expansions < self._settings.branching)

    def _select(self, node: _Node) -> _Node:
        c = self._settings.uct_c
        log_n = math.log(max(node.visits, 1))

        def uct(child: _Node) -> tuple[float, float]:
            mean = child.value / child.visits
            return mean + c * math.sqrt(log_n / child.visits), self._rng.random()

        return max(node.children, key=uct)

    async def _expand(self, node: _Node, rollout: int) -> AsyncIterator[Event | _Node]:
        assert self._complete is not None and node.strategy is not None
        messages = variants_prompt(self._items, 1, self._language, "",
                                   feedback=_feedback(node))
        strategies, record = await generate(
            self._complete, messages, n=1, model=self._settings.model,
            temperature=self._settings.temperature, seed=self._settings.seed + rollout,
            language=self._language)
        name = f"{node.id}>{node.expansions}"
        record = replace(record, parent_id=node.id)
        self._expansions.append(record)
        yield record
        if strategies:
            strategy = Strategy(name, strategies[0].source, self._language)
            child = _Node(name, strategy, node.depth + 1, node)
            node.children.append(child)
            yield child

    def _nodes(self) -> list[_Node]:
        found: list[_Node] = []
        stack = list(reversed(self._root.children))
        while stack:
            node = stack.pop()
            found.append(node)
            stack.extend(reversed(node.children))
        return found

    def _best(self) -> _Node:
        scored = [n for n in self._nodes() if n.reward is not None]
        if not scored:
            return self._root
        return min(scored, key=lambda n: (-(n.reward or 0.0), n.id))


def _feedback(node: _Node) -> str:
    assert node.strategy is not None
    lines = [f"Improve this variant (reward {node.reward or 0.0:.3f}):", node.strategy.source,
             "Results per task:"]
    for run in node.runs[:20]:
        line = f"- {run.task_id}: {run.status.value}, score {run.aggregate:.3f}"
        if run.error_type:
            line += f", {run.error_type}: {run.error_message[:200]}"
        lines.append(line)
    lines.append("Return exactly one improved variant.")
    return "\n".join(lines)
