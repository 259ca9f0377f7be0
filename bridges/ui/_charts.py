"""The UI's charts as plotly.js figures (`{"data": [...], "layout": {...}}`), built here
from stored runs and drawn in the browser by the plotly.min.js that the `plotly` package
ships. Only the figure JSON is made in Python: plotly's own Python API is not imported.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scillm.codeworld.v1 import codeworld_pb2

__all__ = ["WINNER", "Figure", "Span", "mcts_tree", "ranking_bars", "reward_line",
           "span_timings", "tree_layout"]

Figure = dict[str, Any]

#: The colour of the winner, the winning path and the best reward.
WINNER = "#d97706"
_OTHER = "#64748b"
_METRIC_COLOURS = ("#2563eb", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d")


def _t(name: str) -> str:
    """A caller's name as plotly text: plotly reads `<b>`, `<a href>` and the like in its
    text, so a strategy named `<a href=...>` drew a link to another site. Escaped, it is
    shown as written (plotly decodes the entities)."""
    return html.escape(name, quote=False)


def _layout(height: int, **extra: Any) -> dict[str, Any]:
    return {"height": height, "margin": {"l": 48, "r": 16, "t": 44, "b": 40},
            "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
            "font": {"family": "system-ui, sans-serif", "size": 12},
            "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0}, **extra}


def ranking_bars(ranking: codeworld_pb2.Ranking) -> Figure:
    """One task's strategies in rank order: the score (the winner's bar highlighted) and
    every metric beside it."""
    entries = sorted(ranking.entries, key=lambda e: (e.rank, e.strategy))
    names = [_t(e.strategy) for e in entries]
    data: list[dict[str, Any]] = [{
        "type": "bar", "name": "score", "x": names, "y": [e.score for e in entries],
        "marker": {"color": [WINNER if e.rank == 1 else _OTHER for e in entries]},
        "hovertemplate": "%{x}<br>score %{y:.4g}<extra></extra>"}]
    metrics = sorted({m for e in entries for m in e.metrics})
    for i, metric in enumerate(metrics):
        data.append({"type": "bar", "name": _t(metric), "x": names,
                     "y": [e.metrics.get(metric) for e in entries],
                     "marker": {"color": _METRIC_COLOURS[i % len(_METRIC_COLOURS)],
                                "opacity": 0.75},
                     "hovertemplate": f"%{{x}}<br>{_t(metric)} %{{y:.4g}}<extra></extra>"})
    return {"data": data, "layout": _layout(300, barmode="group",
                                            xaxis={"title": {"text": "strategy, by rank"}},
                                            yaxis={"title": {"text": "value"}})}


def tree_layout(nodes: Sequence[codeworld_pb2.MctsChild]) -> dict[str, tuple[float, float]]:
    """Positions of a search tree's nodes, the root ("") included: leaves side by side in
    search order, each parent centred over its children, depth downwards."""
    children: dict[str, list[str]] = {}
    for n in nodes:
        children.setdefault(n.parent_id, []).append(n.variant_id)
    depth = {n.variant_id: n.depth for n in nodes}
    placed: dict[str, tuple[float, float]] = {}
    next_leaf = 0.0

    def place(node_id: str, level: int, seen: frozenset[str]) -> float:
        nonlocal next_leaf
        kids = [k for k in children.get(node_id, []) if k not in seen]
        if not kids:
            x = next_leaf
            next_leaf += 1
        else:
            xs = [place(k, depth.get(k, level + 1), seen | {k}) for k in kids]
            x = (xs[0] + xs[-1]) / 2
        placed[node_id] = (x, -float(level))
        return x

    place("", 0, frozenset({""}))
    return placed


def _winning_path(nodes: Sequence[codeworld_pb2.MctsChild], best: str) -> list[str]:
    parent = {n.variant_id: n.parent_id for n in nodes}
    path = []
    node = best
    while node and node in parent and node not in path:
        path.append(node)
        node = parent[node]
    return [*reversed(path)]


def mcts_tree(stats: codeworld_pb2.MctsStats) -> Figure:
    """The search tree: nodes sized by visits and coloured by mean reward, the path from
    the root to the best variant drawn in the winner's colour."""
    nodes = list(stats.children)
    at = tree_layout(nodes)
    path = set(_winning_path(nodes, stats.best_variant_id))
    edges: dict[bool, tuple[list[float | None], list[float | None]]] = {
        False: ([], []), True: ([], [])}
    for n in nodes:
        if n.variant_id not in at or n.parent_id not in at:
            continue
        xs, ys = edges[n.variant_id in path]
        (x0, y0), (x1, y1) = at[n.parent_id], at[n.variant_id]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    shown = [n for n in nodes if n.variant_id in at]
    visits = [n.visits for n in shown]
    biggest = max(visits, default=1) or 1
    data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "lines", "name": "explored", "x": edges[False][0],
         "y": edges[False][1], "line": {"color": "#cbd5e1", "width": 2},
         "hoverinfo": "skip"},
        {"type": "scatter", "mode": "lines", "name": "winning path", "x": edges[True][0],
         "y": edges[True][1], "line": {"color": WINNER, "width": 5}, "hoverinfo": "skip"},
        {"type": "scatter", "mode": "markers", "name": "root", "x": [at[""][0]],
         "y": [at[""][1]], "marker": {"size": 14, "color": "#0f172a", "symbol": "diamond"},
         "hovertemplate": "root<extra></extra>", "showlegend": False},
        {"type": "scatter", "mode": "markers+text", "name": "variants",
         "x": [at[n.variant_id][0] for n in shown], "y": [at[n.variant_id][1] for n in shown],
         "text": [_t(n.variant_id) for n in shown], "textposition": "bottom center",
         "customdata": [[n.visits, n.mean, n.depth] for n in shown],
         "hovertemplate": ("%{text}<br>visits %{customdata[0]}<br>mean reward "
                           "%{customdata[1]:.4g}<br>depth %{customdata[2]}<extra></extra>"),
         "marker": {"size": [12 + 24 * math.sqrt(v / biggest) for v in visits],
                    "color": [n.mean for n in shown], "colorscale": "Viridis",
                    "showscale": True, "colorbar": {"title": {"text": "mean reward"}},
                    "line": {"color": [WINNER if n.variant_id in path else "#ffffff"
                                       for n in shown],
                             "width": [4 if n.variant_id in path else 1 for n in shown]}},
         "showlegend": False}]
    levels = max((n.depth for n in shown), default=1)
    return {"data": data, "layout": _layout(
        160 + 110 * levels, showlegend=True,
        xaxis={"visible": False}, yaxis={"visible": False, "range": [-levels - 0.6, 0.5]})}


def reward_line(progress: Sequence[codeworld_pb2.MctsProgress]) -> Figure:
    """Each rollout's reward, and the best reward so far."""
    rollouts = [p.rollout for p in progress]
    return {"data": [
        {"type": "scatter", "mode": "lines+markers", "name": "reward", "x": rollouts,
         "y": [p.reward for p in progress], "line": {"color": "#2563eb"},
         "customdata": [_t(p.variant_id) for p in progress],
         "hovertemplate": "rollout %{x}: %{customdata}<br>reward %{y:.4g}<extra></extra>"},
        {"type": "scatter", "mode": "lines", "name": "best so far", "x": rollouts,
         "y": [p.best_value for p in progress], "line": {"color": WINNER, "shape": "hv",
                                                          "width": 3},
         "hovertemplate": "rollout %{x}<br>best %{y:.4g}<extra></extra>"}],
        "layout": _layout(280, xaxis={"title": {"text": "rollout"}, "dtick": 1},
                          yaxis={"title": {"text": "reward"}})}


@dataclass(frozen=True)
class Span:
    """A timed part of a run: a label, its duration, and where it starts when known."""

    label: str
    ms: float
    start_ms: float | None = None
    group: str = ""


def span_timings(spans: Sequence[Span]) -> Figure:
    """The run's stored timings as horizontal bars, first at the top; bars with a start
    sit on a shared timeline (a waterfall)."""
    groups = sorted({s.group for s in spans})
    data = []
    for i, group in enumerate(groups):
        mine = [s for s in spans if s.group == group]
        trace: dict[str, Any] = {
            "type": "bar", "orientation": "h", "name": _t(group) or "duration",
            "y": [_t(s.label) for s in mine], "x": [s.ms for s in mine],
            "marker": {"color": _METRIC_COLOURS[i % len(_METRIC_COLOURS)]},
            "hovertemplate": "%{y}<br>%{x:.3f} ms<extra></extra>"}
        if any(s.start_ms is not None for s in mine):
            trace["base"] = [s.start_ms or 0.0 for s in mine]
        data.append(trace)
    labels = list(dict.fromkeys(_t(s.label) for s in spans))
    return {"data": data, "layout": _layout(
        90 + 26 * len(labels), barmode="overlay" if len(groups) < 2 else "group",
        showlegend=len(groups) > 1,
        margin={"l": 200, "r": 16, "t": 44 if len(groups) > 1 else 16, "b": 40},
        xaxis={"title": {"text": "ms"}},
        yaxis={"autorange": "reversed", "categoryorder": "array", "categoryarray": labels,
               "automargin": True})}
