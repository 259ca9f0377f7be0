"""The request of a CodeWorld run: items, strategies and how to judge them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .sandbox import JsonValue, Limits

DEFAULT_WEIGHTS: Mapping[str, float] = {"correctness": 0.7, "speed": 0.2, "brevity": 0.1}


@dataclass(frozen=True, slots=True)
class Item:
    """One task every strategy is run on.

    Attributes:
        task_id: unique within the request.
        description: what the task asks, in words (shown to a model when generating).
        context: JSON object handed to the strategy without ``expected`` and ``tests``;
            recognised keys are ``input`` (passed to the strategy),
            ``expected`` (correct when the result equals it), ``tests`` (HumanEval-style
            source defining ``check(candidate)``; correct when it passes) and
            ``entry_point`` (the function ``tests`` check).
    """

    task_id: str
    description: str = ""
    context: Mapping[str, JsonValue] = field(default_factory=dict)

    @property
    def tests(self) -> str | None:
        """HumanEval-style tests, if the item carries them."""
        tests = self.context.get("tests")
        return tests if isinstance(tests, str) and tests.strip() else None

    @property
    def entry_point(self) -> str | None:
        """The function the tests check."""
        entry = self.context.get("entry_point")
        return entry if isinstance(entry, str) else None


@dataclass(frozen=True, slots=True)
class Strategy:
    """A program to evaluate.

    Python runs ``solve(task, context)`` when defined, else ``main()`` (with the item's
    ``input`` as JSON on stdin), else the item's ``entry_point`` under its tests.
    JavaScript runs the same way on node. ``entry`` forces the function to call.
    """

    name: str
    source: str
    language: str = "python"
    entry: str | None = None


@dataclass(frozen=True, slots=True)
class JudgeSpec:
    """How runs are ranked.

    Attributes:
        mode: ``"weighted"`` ranks by the weighted mean of metrics; ``"lexicographic"``
            compares metrics in ``order``, best first, then the weighted score.
        weights: weight per metric (metrics absent here weigh 1.0, except defaults).
        order: metrics compared in lexicographic mode.
    Ties always break by strategy name, ascending.
    """

    mode: Literal["weighted", "lexicographic"] = "weighted"
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    order: tuple[str, ...] = ("correctness", "speed", "brevity")


@dataclass(frozen=True, slots=True)
class MctsSettings:
    """A Monte-Carlo tree search over code variants.

    Attributes:
        rollouts: how many rollouts (1–1000).
        depth: tree depth; above 1 a step asks the model for an improved variant.
        uct_c: UCT exploration constant (``exploration_constant`` is an alias).
        seed: seeds tie-breaking and the model calls (``seed + rollout``).
        time_budget: seconds after which the search stops (``None``: no budget).
        branching: children a node may get from the model.
        model, temperature: passed to ``complete``.
        timing_in_reward: include timing metrics (speed) in the reward; off by default
            because wall time is noisy and would make the search irreproducible.
    """

    rollouts: int = 16
    depth: int = 1
    uct_c: float = 1.4
    seed: int = 0
    time_budget: float | None = None
    branching: int = 2
    model: str = ""
    temperature: float = 0.0
    timing_in_reward: bool = False
    exploration_constant: float | None = None

    def __post_init__(self) -> None:
        if self.exploration_constant is not None:
            object.__setattr__(self, "uct_c", self.exploration_constant)


@dataclass(frozen=True, slots=True)
class AutogenSpec:
    """Ask the model for ``n`` variants before running (1–16)."""

    n: int = 3
    model: str = ""
    temperature: float = 0.7
    language: str = "python"
    instructions: str = ""
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A CodeWorld run: every strategy on every item, then scores, ranking and summary.

    Attributes:
        items, strategies: what to run (limits in ``CodeWorldSettings``).
        scorer: source defining ``score(task, context, outputs, timings) -> {metric: float}``;
            ``None`` uses the default rubric (correctness, speed, brevity).
        judge: how to rank.
        limits: sandbox limits per execution (default: the sandbox's).
        concurrency: executions at once (default: the sandbox's worker count).
        strict: AST policy on Python sources (default: the sandbox setting).
        mcts: search over variants instead of a single pass.
        autogenerate: ask the model for variants first (needs an injected ``complete``).
        session_id, track: keep this run's mean aggregate and report a plateau.
        session_owner: whose session `session_id` names: a virtual key's id, whose
            sessions no other caller reads or moves; empty for the unscoped sessions
            (every caller's with keys off, the master key's with keys on).
        volatile_metrics: metrics ``scorer`` derives from timings; with the rubric's
            ``speed`` they are left out of MCTS rewards and reported apart by replay.
    """

    items: tuple[Item, ...]
    strategies: tuple[Strategy, ...] = ()
    scorer: str | None = None
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    limits: Limits | None = None
    concurrency: int | None = None
    strict: bool | None = None
    mcts: MctsSettings | None = None
    autogenerate: AutogenSpec | None = None
    session_id: str | None = None
    track: str = "default"
    session_owner: str = ""
    volatile_metrics: tuple[str, ...] = ()
