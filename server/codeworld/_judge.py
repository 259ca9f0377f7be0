"""The judge: per-item rankings, weighted or lexicographic, with deterministic ties."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._events import Ranked
from ._model import JudgeSpec
from ._scoring import metric_weight
from .errors import InvalidRequest

#: The largest weight of a metric. Weights are relative (renormalised over the metrics a
#: run has): a million to one is emphasis enough, and weighted sums stay finite.
MAX_WEIGHT = 1e6


def check_weights(weights: Mapping[str, float]) -> None:
    """Raise ``InvalidRequest`` naming the first weight that is not a number from 0 to
    ``MAX_WEIGHT`` (inf, NaN or 1e308 made scores inf or NaN, and the ranking wrong)."""
    for metric, weight in weights.items():
        if not 0 <= weight <= MAX_WEIGHT:  # NaN too
            raise InvalidRequest(f"the weight of {metric!r} must be a number from 0 to "
                                 f"{MAX_WEIGHT:g}, not {weight!r}"[:300])


def check_judge(spec: JudgeSpec) -> None:
    """Raise ``InvalidRequest`` for a weight out of range, an unknown mode or an empty
    order."""
    if spec.mode not in ("weighted", "lexicographic"):
        raise InvalidRequest(f"unknown judge mode {spec.mode!r}")
    check_weights(spec.weights)
    if spec.mode == "lexicographic" and not spec.order:
        raise InvalidRequest("a lexicographic judge needs an order of metrics")


def rank(entries: Sequence[tuple[str, Mapping[str, float]]], spec: JudgeSpec) -> tuple[Ranked, ...]:
    """Rank (strategy, metrics) pairs, best first.

    The score is the weighted mean over the metrics any entry has (a metric an entry
    lacks counts 0). Weighted mode sorts by score; lexicographic mode by the metrics in
    ``spec.order`` (missing: worst), then score. Ties break by strategy name.
    """
    # Each entry's score is `aggregate` over the union of metric names, its missing ones 0:
    # weights summed once over the union, then each entry's own metrics (in the union's
    # order, so the sums are those of the whole union's) - time in the metrics the entries
    # have, where filling every entry with the union's names took entries x union.
    names = sorted({m for _, metrics in entries for m in metrics})
    weight_of = {m: metric_weight(m, spec.weights) for m in names}
    weight_sum = sum(weight_of.values())
    scored = []
    for strategy, metrics in entries:
        score = 0.0 if weight_sum <= 0 else sum(
            weight_of[m] / weight_sum * metrics[m] for m in sorted(metrics))
        if spec.mode == "lexicographic":
            key = tuple(-metrics.get(m, float("-inf")) for m in spec.order)
        else:
            key = ()
        scored.append(((*key, -score, strategy), strategy, score, dict(metrics)))
    scored.sort(key=lambda row: row[0])
    return tuple(Ranked(rank=i + 1, strategy=s, score=score, metrics=m)
                 for i, (_, s, score, m) in enumerate(scored))
