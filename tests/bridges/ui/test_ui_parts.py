"""The UI's parts on their own: every chart is a figure plotly itself accepts, the tree
layout, diagnostics placed on lines, output caps, and the trace link."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from scillm.bridges.ui._charts import (
    Span,
    mcts_tree,
    ranking_bars,
    reward_line,
    span_timings,
    tree_layout,
)
from scillm.bridges.ui._text import cap, diff_lines, place_diagnostics
from scillm.bridges.ui._views import trace_link
from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.common.v1 import common_pb2
from scillm.prove.v1 import prove_pb2 as pv

NODES = [cw.MctsChild(variant_id="a", parent_id="", depth=1, visits=5, mean=0.5),
         cw.MctsChild(variant_id="b", parent_id="", depth=1, visits=1, mean=0.1),
         cw.MctsChild(variant_id="a>0", parent_id="a", depth=2, visits=3, mean=0.9),
         cw.MctsChild(variant_id="a>1", parent_id="a", depth=2, visits=1, mean=0.2)]


def test_every_figure_is_valid_for_plotly() -> None:
    ranking = cw.Ranking(task_id="t", entries=[
        cw.RankedStrategy(strategy="x", rank=1, score=0.9, metrics={"speed": 1.0}),
        cw.RankedStrategy(strategy="y", rank=2, score=0.5, metrics={"speed": 0.2})])
    stats = cw.MctsStats(rollouts=3, best_variant_id="a>0", children=NODES)
    progress = [cw.MctsProgress(rollout=i, variant_id="a", reward=0.1 * i, best_value=0.3)
                for i in (1, 2, 3)]
    spans = [Span("turn 1", 3.0, 0.0, "model"), Span("tool", 1.5, 3.0, "tool")]
    for figure in (ranking_bars(ranking), mcts_tree(stats), reward_line(progress),
                   span_timings(spans), span_timings([Span("item", 2.0)])):
        go.Figure(figure)  # raises on any property plotly does not know
    bars = ranking_bars(ranking)["data"][0]
    assert bars["x"] == ["x", "y"] and bars["marker"]["color"][0] == "#d97706"
    path = mcts_tree(stats)["data"][1]
    assert path["name"] == "winning path" and len(path["x"]) == 6  # root→a→a>0


def test_names_in_figures_are_text_not_markup() -> None:
    """Plotly reads a little HTML in its text (`<b>`, `<a href>`): a strategy, metric,
    variant or span named `<a href='https://evil.test/'>x</a>` drew a link to another
    site on the run's page. Every caller's name reaches a figure escaped."""
    evil = "V<b>bold</b><a href='https://evil.test/'>link</a>"
    ranking = cw.Ranking(task_id="t", entries=[
        cw.RankedStrategy(strategy=evil, rank=1, score=0.9, metrics={evil: 1.0})])
    stats = cw.MctsStats(rollouts=1, best_variant_id=evil, children=[
        cw.MctsChild(variant_id=evil, parent_id="", depth=1, visits=1, mean=0.5)])
    progress = [cw.MctsProgress(rollout=1, variant_id=evil, reward=0.1, best_value=0.1)]
    figures = [ranking_bars(ranking), mcts_tree(stats), reward_line(progress),
               span_timings([Span(evil, 1.0, 0.0, evil)])]
    text = repr(figures)
    assert "<a" not in text and "<b>" not in text, text
    assert "&lt;a href=" in text
    for figure in figures:
        go.Figure(figure)


def test_tree_layout_centres_parents_over_children() -> None:
    at = tree_layout(NODES)
    assert at["a>0"] == (0.0, -2.0) and at["a>1"] == (1.0, -2.0) and at["b"] == (2.0, -1.0)
    assert at["a"] == (0.5, -1.0) and at[""] == (1.25, 0.0)
    looped = [*NODES, cw.MctsChild(variant_id="", parent_id="a>1", depth=3)]
    assert set(tree_layout(looped)) == {"", "a", "b", "a>0", "a>1"}  # a cycle ends


def test_diagnostics_are_placed_on_their_lines() -> None:
    source = "line one\nline two\nline three\n"
    lines, loose = place_diagnostics(source, [
        pv.Diagnostic(severity=pv.SEVERITY_WARNING, message="w", line=1, end_line=2),
        pv.Diagnostic(severity=pv.SEVERITY_ERROR, message="e", line=2, column=3),
        pv.Diagnostic(severity=pv.SEVERITY_INFO, message="nowhere", line=0),
        pv.Diagnostic(message="past the end", line=9)])
    assert [(line.severity, [n.message for n in line.notes]) for line in lines] == [
        ("warning", ["w"]), ("error", ["e"]), ("", [])]
    assert [n.message for n in loose] == ["nowhere", "past the end"]


def test_output_is_capped_and_diffs_show_changes() -> None:
    assert cap("abc", 5).more == 0
    cut = cap("x" * 10, 4)
    assert cut.text == "xxxx" and cut.more == 6
    kinds = [d.kind for d in diff_lines("a\nb\n", "a\nc\n", before_name="0", after_name="1")]
    assert kinds == ["hunk", "same", "del", "add"]
    assert diff_lines("same", "same", before_name="0", after_name="1") == []


@pytest.mark.parametrize(("template", "trace_id", "expected"), [
    ("http://j:16686/trace/{trace_id}", "ab" * 16, "http://j:16686/trace/" + "ab" * 16),
    ("", "ab" * 16, ""),
    ("http://j:16686/trace/{trace_id}", "", ""),
])
def test_trace_link(template: str, trace_id: str, expected: str) -> None:
    assert trace_link(common_pb2.RunManifest(trace_id=trace_id), template) == expected
