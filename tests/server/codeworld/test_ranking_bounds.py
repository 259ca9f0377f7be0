"""The judge's work grows with the metrics the runs have, not entries x their union."""

from __future__ import annotations

from scillm.server.codeworld._judge import rank
from scillm.server.codeworld._model import JudgeSpec
from scillm.server.codeworld._scoring import aggregate


def _entries(strategies: int, metrics: int) -> list[tuple[str, dict[str, float]]]:
    """Each strategy with metrics of its own names (the union: strategies x metrics), and
    the rubric's few, weighted or not."""
    return [(f"s{s}", {**{f"s{s}-m{m}": (s * 31 + m * 7) % 97 / 97 for m in range(metrics)},
                       "correctness": s % 2, "speed": 1 / (s + 1)})
            for s in range(strategies)]


def test_scores_are_the_weighted_mean_over_the_union_bit_for_bit() -> None:
    """Each entry's missing metrics count 0 over the union, as before, to the last bit
    (replays compare scores)."""
    entries = _entries(7, 13)
    names = sorted({m for _, metrics in entries for m in metrics})
    for spec in (JudgeSpec(), JudgeSpec(weights={"s3-m2": 5.0, "speed": 0.0}),
                 JudgeSpec(weights={m: 0.0 for m in names})):
        expected = {s: aggregate({m: metrics.get(m, 0.0) for m in names}, spec.weights)
                    for s, metrics in entries}
        assert {r.strategy: r.score for r in rank(entries, spec)} == expected


def test_many_strategies_with_the_most_metrics_rank_quickly() -> None:
    """64 strategies with 1,000 metrics of their own names each: filling each entry with
    the union's 64,000 names was 4 million entries per item."""
    import time

    entries = _entries(64, 1000)
    started = time.process_time()
    ranked = rank(entries, JudgeSpec())
    assert len(ranked) == 64
    assert time.process_time() - started < 1.0
