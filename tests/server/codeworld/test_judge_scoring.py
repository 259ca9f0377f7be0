"""The judge's rankings and the default rubric."""

from __future__ import annotations

import pytest

from scillm.server.codeworld import JudgeSpec, Rubric, aggregate, rank
from scillm.server.codeworld._scoring import lines_of_code, validate_metrics
from scillm.server.codeworld.sandbox import Execution, Status


def test_aggregate_renormalises_over_present_metrics() -> None:
    assert aggregate({"correctness": 1.0, "speed": 0.5, "brevity": 0.0}) == pytest.approx(0.8)
    assert aggregate({"speed": 0.5, "brevity": 1.0}) == pytest.approx((0.1 + 0.1) / 0.3)
    assert aggregate({}) == 0.0
    assert aggregate({"custom": 0.25}) == 0.25


def test_aggregate_of_finite_metrics_is_finite() -> None:
    """The weighted sum of large metrics overflowed to inf before it was divided."""
    assert aggregate({"a": 1e308, "b": 1e308}) == pytest.approx(1e308)
    many = {f"m{i}": 1e300 for i in range(500)}
    assert aggregate(many, dict.fromkeys(many, 1e6)) == pytest.approx(1e300)


def test_rubric() -> None:
    ok = Execution(Status.OK, wall=0.05)
    metrics = Rubric(speed_reference=0.05, brevity_reference=20).metrics(ok, True, 20)
    assert metrics == {"correctness": 1.0, "speed": 0.5, "brevity": 0.5}
    failed = Rubric().metrics(Execution(Status.ERROR), None, 5)
    assert "correctness" not in failed and failed["speed"] == 0.0


def test_weighted_ranking_breaks_ties_by_name() -> None:
    entries = [("b", {"correctness": 1.0}), ("a", {"correctness": 1.0}),
               ("c", {"correctness": 0.0})]
    ranking = rank(entries, JudgeSpec())
    assert [r.strategy for r in ranking] == ["a", "b", "c"]
    assert [r.rank for r in ranking] == [1, 2, 3]


def test_lexicographic_ranking() -> None:
    entries = [("fast", {"correctness": 0.0, "speed": 1.0}),
               ("right", {"correctness": 1.0, "speed": 0.1}),
               ("right_fast", {"correctness": 1.0, "speed": 0.9})]
    spec = JudgeSpec(mode="lexicographic", order=("correctness", "speed"))
    assert [r.strategy for r in rank(entries, spec)] == ["right_fast", "right", "fast"]
    weighted = JudgeSpec(weights={"speed": 1.0, "correctness": 0.0})
    assert rank(entries, weighted)[0].strategy == "fast"


def test_validate_metrics() -> None:
    assert validate_metrics({"a": 1, "b": 0.5}) == {"a": 1.0, "b": 0.5}
    for bad in (None, {}, {"a": "x"}, {"a": True}, {"a": float("nan")}, [1],
                {"a": 1e301}, {"a": -1e308}, {"a": 10**400}):
        with pytest.raises(ValueError):
            validate_metrics(bad)


def test_lines_of_code() -> None:
    assert lines_of_code("# c\n\nx = 1\n  // js\ny = 2\n") == 2
