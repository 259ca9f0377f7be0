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


class _Counted(dict[str, float]):
    """A strategy's metrics, counting the lookups the judge makes in them."""

    lookups = 0

    def __getitem__(self, name: str) -> float:
        _Counted.lookups += 1
        return super().__getitem__(name)

    def get(self, name: str, default: object = None) -> object:  # type: ignore[override]
        _Counted.lookups += 1
        return super().get(name, default)


def test_many_strategies_with_the_most_metrics_are_ranked_in_their_own_metrics() -> None:
    """64 strategies with 1,000 metrics of their own names each: filling each entry with
    the union's 64,000 names was 4 million lookups per item (3.1 s of CPU). The judge now
    looks up each entry's own metrics, a bounded number of times: counted, not timed."""
    entries = [(s, _Counted(metrics)) for s, metrics in _entries(64, 1000)]
    own = sum(len(metrics) for _, metrics in entries)
    _Counted.lookups = 0
    ranked = rank(entries, JudgeSpec())
    assert len(ranked) == 64
    assert _Counted.lookups <= 2 * own, (_Counted.lookups, own)
