"""What ``CodeWorldEngine.run`` yields: per-run results, progress, and a final summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .sandbox import JsonValue, Status


@dataclass(frozen=True, slots=True)
class RunResult:
    """One strategy on one item.

    ``status`` is the sandbox status; ``correct`` is ``None`` when the item gives neither
    tests nor an expected value. ``metrics`` come from the scorer (or the default rubric,
    with ``score_error`` saying why the scorer was not used); ``aggregate`` is their
    weighted mean under the request's judge weights.
    """

    strategy: str
    task_id: str
    language: str
    status: Status
    result: JsonValue = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    wall: float = 0.0
    cpu: float = 0.0
    peak_memory: int = 0
    lines_of_code: int = 0
    correct: bool | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    aggregate: float = 0.0
    reason: str = ""
    error_type: str = ""
    error_message: str = ""
    score_error: str = ""
    #: The search tree node this run evaluated (MCTS only; empty otherwise).
    variant_id: str = ""


@dataclass(frozen=True, slots=True)
class MctsProgress:
    """One finished rollout of the search."""

    rollout: int
    variant_id: str
    reward: float
    best_variant_id: str
    best_reward: float


@dataclass(frozen=True, slots=True)
class Generation:
    """The record of one request for variants from a model.

    ``error`` is empty on success; a failed generation yields no variants. ``rejected``
    says why proposed variants were refused. ``parent_id`` is the MCTS node an expansion
    improved (empty for autogeneration).
    """

    model: str
    n: int
    temperature: float
    prompt_sha256: str
    response_sha256: str
    variant_ids: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    error: str = ""
    parent_id: str = ""


@dataclass(frozen=True, slots=True)
class Ranked:
    """A strategy's place in a ranking."""

    rank: int
    strategy: str
    score: float
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeStats:
    """One node of the search tree.

    ``value`` is the total reward backed up through the node, ``mean`` (value / visits)
    its average; ``reward`` is the node's own evaluation.
    """

    variant_id: str
    parent_id: str
    depth: int
    visits: int
    value: float
    reward: float

    @property
    def mean(self) -> float:
        """The mean reward of the rollouts through this node (0 when never visited)."""
        return self.value / self.visits if self.visits else 0.0


@dataclass(frozen=True, slots=True)
class MctsStats:
    """The search after it stopped.

    ``values`` maps each visited node to its mean reward; ``expansions`` records every
    model call that tried to add a variant (successful or not).
    """

    visits: int
    values: Mapping[str, float]
    best_variant_id: str
    best_reward: float
    explored: int
    rollouts: int
    stopped: str
    children: tuple[NodeStats, ...] = ()
    expansions: tuple[Generation, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """Where this run stands in its session track."""

    session_id: str
    track: str
    index: int
    mean_aggregate: float
    previous_mean: float | None
    gain: float | None
    plateau: bool
    #: Why the run is not in the session (the store failed); empty when it is.
    error: str = ""


@dataclass(frozen=True, slots=True)
class Summary:
    """The terminal event: rankings and counts of the whole run.

    ``volatile_metrics`` are the metrics derived from wall time: scores and ranks built
    on them may change from one run of the same request to the next.
    """

    rankings: Mapping[str, tuple[Ranked, ...]]
    overall: tuple[Ranked, ...]
    counts: Mapping[str, int]
    isolation: str
    mcts_stats: MctsStats | None = None
    session: SessionInfo | None = None
    generation: Generation | None = None
    volatile_metrics: frozenset[str] = frozenset()


Event = RunResult | MctsProgress | Generation | Summary
"""Anything ``CodeWorldEngine.run`` yields; the last event is always a ``Summary``."""
