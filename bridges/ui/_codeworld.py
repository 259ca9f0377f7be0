"""A CodeWorld run as its page shows it: per task the ranked strategies (the winner
marked) with their metrics, each strategy's run with status, timings and capped output;
for MCTS the search tree and the reward over rollouts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from scillm.codeworld.v1 import codeworld_pb2 as cw

from ._charts import Figure, Span, mcts_tree, ranking_bars, reward_line
from ._text import Capped, cap
from ._views import duration_ms, enum_name

__all__ = ["CodeWorldView", "codeworld_view", "events"]


#: The fields of CodeWorldRunResponse's envelope (events stored before it was kept are bare
#: RunResults).
_ENVELOPE = frozenset(cw.CodeWorldRunResponse.DESCRIPTOR.fields_by_name)


def events(stored: Iterable[dict[str, Any]],
           ) -> tuple[list[cw.RunResult], list[cw.MctsProgress]]:
    """The stored stream events: runs and rollouts (a bare RunResult: older stores)."""
    runs: list[cw.RunResult] = []
    progress: list[cw.MctsProgress] = []
    for event in stored:
        if _ENVELOPE & set(event):
            envelope = json_format.ParseDict(event, cw.CodeWorldRunResponse(),
                                             ignore_unknown_fields=True)
            if envelope.HasField("run"):
                runs.append(envelope.run)
            elif envelope.HasField("mcts_progress"):
                progress.append(envelope.mcts_progress)
        else:
            runs.append(json_format.ParseDict(event, cw.RunResult(),
                                              ignore_unknown_fields=True))
    return runs, progress


@dataclass(frozen=True)
class RunLine:
    """One strategy's run on one task."""

    strategy: str
    variant: str
    status: str
    wall_ms: float
    cpu_ms: float
    peak_mb: float
    tests_passed: bool | None
    lines_of_code: int
    metrics: list[tuple[str, float]]
    result: Capped
    stdout: Capped
    stderr: Capped
    error: str


@dataclass(frozen=True)
class Entry:
    """A ranked strategy."""

    rank: int
    strategy: str
    score: float
    metrics: list[tuple[str, float]]
    winner: bool


@dataclass
class TaskView:
    """One task: its ranking, its chart and its runs."""

    task_id: str
    description: str
    entries: list[Entry] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    chart: Figure | None = None
    runs: list[RunLine] = field(default_factory=list)


@dataclass
class CodeWorldView:
    """Everything the CodeWorld page shows."""

    summary: cw.CodeWorldRunSummary
    mode: str
    tasks: list[TaskView]
    tree: Figure | None = None
    rewards: Figure | None = None
    spans: list[Span] = field(default_factory=list)


def _line(run: cw.RunResult) -> RunLine:
    value = json_format.MessageToJson(run.result, indent=None) if run.HasField("result") \
        else ""
    return RunLine(
        run.strategy, run.variant_id, enum_name(cw.RunStatus, run.status),
        duration_ms(run.timings.wall), duration_ms(run.timings.cpu),
        run.timings.peak_memory_bytes / 1e6,
        run.tests_passed if run.HasField("tests_passed") else None, run.lines_of_code,
        sorted(run.metrics.items()), cap(value), cap(run.stdout), cap(run.stderr),
        "\n".join(x for x in (run.error, run.score_error) if x))


def codeworld_view(request: cw.CodeWorldRunRequest, summary: cw.CodeWorldRunSummary,
                   stored_events: Iterable[dict[str, Any]]) -> CodeWorldView:
    """The page's content from the stored request, summary and events."""
    runs, progress = events(stored_events)
    tasks = {t.task_id: TaskView(t.task_id, t.description) for t in request.items}
    for ranking in summary.rankings:
        task = tasks.setdefault(ranking.task_id, TaskView(ranking.task_id, ""))
        ordered = sorted(ranking.entries, key=lambda e: (e.rank, e.strategy))
        task.metric_names = sorted({m for e in ordered for m in e.metrics})
        task.entries = [Entry(e.rank, e.strategy, e.score, sorted(e.metrics.items()),
                              e.rank == 1) for e in ordered]
        task.chart = ranking_bars(ranking)
    for run in runs:
        tasks.setdefault(run.task_id, TaskView(run.task_id, "")).runs.append(_line(run))
    order = {e.strategy: e.rank for t in summary.rankings for e in t.entries}
    for task in tasks.values():
        task.runs.sort(key=lambda r: (order.get(r.strategy, 1 << 30), r.strategy, r.variant))
    mode = "MCTS" if request.mode == cw.SEARCH_MODE_MCTS else "all strategies"
    view = CodeWorldView(summary, mode, list(tasks.values()))
    if summary.HasField("mcts_stats") and summary.mcts_stats.children:
        view.tree = mcts_tree(summary.mcts_stats)
    if progress:
        view.rewards = reward_line(progress)
    view.spans = [Span(f"{r.task_id} · {r.variant_id or r.strategy}", duration_ms(t), None,
                       group)
                  for r in runs for group, t in (("wall", r.timings.wall),
                                                 ("cpu", r.timings.cpu))]
    return view
