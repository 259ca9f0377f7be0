"""Scoring a run: the user's ``score()`` in the sandbox, or the default rubric.

``score(task, context, outputs, timings)`` returns ``{metric: float}``: at most
``MAX_METRICS`` metrics, each a number of magnitude at most ``MAX_METRIC``. Past either,
that run's ``score_error`` says why and it is scored by the rubric; the other runs are not
affected. (150,000 metrics from each of 20 strategies held the service's event loop for
30 s while they were checked, ranked and sent.)
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._model import DEFAULT_WEIGHTS
from .errors import InvalidScorer, SandboxError
from .sandbox import (
    Execution,
    JsonValue,
    Limits,
    Sandbox,
    describe_failure,
    parse_python,
    utf8_safe,
)

TIMING_METRICS = frozenset({"speed"})
#: The largest magnitude of a metric score() returns: sums and means of many runs' scores
#: must stay finite (and JSON), which metrics near 1.8e308 did not.
MAX_METRIC = 1e300
#: The most metrics one ``score()`` may return: generous for scientific scoring, and
#: bounding what a run's ranking handles (its strategies times this many).
MAX_METRICS = 1000


@dataclass(frozen=True, slots=True)
class Rubric:
    """The default rubric.

    correctness: 1.0 or 0.0 when the item has tests or an expected value (else absent).
    speed: ``speed_reference / (speed_reference + wall)`` for a successful run, else 0.
    brevity: ``brevity_reference / (brevity_reference + lines_of_code)``.
    """

    speed_reference: float = 0.05
    brevity_reference: float = 20.0

    def metrics(self, execution: Execution, correct: bool | None, loc: int) -> dict[str, float]:
        """The rubric's metrics of one run."""
        found: dict[str, float] = {}
        if correct is not None:
            found["correctness"] = 1.0 if correct else 0.0
        found["speed"] = (self.speed_reference / (self.speed_reference + execution.wall)
                          if execution.ok else 0.0)
        found["brevity"] = self.brevity_reference / (self.brevity_reference + loc)
        return found


def metric_weight(name: str, weights: Mapping[str, float] | None = None) -> float:
    """The weight of metric ``name``: its weight in ``weights`` (None: the rubric's), else
    its default weight (0.7/0.2/0.1 for the rubric's metrics), else 1.0."""
    table = DEFAULT_WEIGHTS if weights is None else weights
    return table.get(name, DEFAULT_WEIGHTS.get(name, 1.0))


def aggregate(metrics: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """Weighted mean of ``metrics``, weights renormalised over the metrics present.

    A metric without a weight weighs its default (0.7/0.2/0.1 for the rubric) or 1.0.
    """
    weighted = [(metric_weight(name, weights), value) for name, value in metrics.items()]
    weight_sum = sum(weight for weight, _ in weighted)
    if weight_sum <= 0:
        return 0.0
    # Each metric weighted by its share: a mean of finite metrics is finite, where the
    # weighted sum of large ones (1e308 twice) overflowed to inf.
    return sum(weight / weight_sum * value for weight, value in weighted)


def lines_of_code(source: str) -> int:
    """Lines that are neither blank nor comments."""
    return sum(1 for line in source.splitlines()
               if line.strip() and not line.strip().startswith(("#", "//")))


def check_scorer(source: str) -> None:
    """Raise ``InvalidScorer`` unless ``source`` parses and defines ``score``."""
    try:
        tree = parse_python(source)
    except SyntaxError as exc:
        raise InvalidScorer(f"score source does not parse: {exc}") from exc
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    if "score" not in names:
        raise InvalidScorer("score source defines no score(task, context, outputs, timings)")


def validate_metrics(value: JsonValue) -> dict[str, float]:
    """``value`` as ``{metric: float}``; raises ``ValueError`` otherwise."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f"score() must return a non-empty {{metric: float}}, got {value!r}"[:300])
    if len(value) > MAX_METRICS:
        raise ValueError(f"score() returned {len(value)} metrics; it may return at most "
                         f"{MAX_METRICS}")
    found: dict[str, float] = {}
    for name, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValueError(f"metric {name!r} is not a number: {number!r}"[:300])
        if not abs(number) <= MAX_METRIC:  # NaN, inf, and ints past any float too
            raise ValueError(f"metric {name!r} is not a number from {-MAX_METRIC:g} to "
                             f"{MAX_METRIC:g}: {number!r}")
        found[utf8_safe(str(name))] = float(number)
    return found


async def user_metrics(
    sandbox: Sandbox,
    scorer: str,
    task: Mapping[str, Any],
    context: Mapping[str, JsonValue],
    execution: Execution,
    correct: bool | None,
    limits: Limits | None,
) -> tuple[dict[str, float] | None, str]:
    """Run ``score()`` in the sandbox; (metrics, "") or (None, why it failed)."""
    outputs = {"result": execution.result, "stdout": execution.stdout,
               "stderr": execution.stderr, "status": execution.status.value,
               "correct": correct}
    timings = {"wall": execution.wall, "cpu": execution.cpu,
               "peak_memory": execution.peak_memory}
    try:
        ran = await sandbox.run("python", scorer, entry="score",
                                args=[dict(task), dict(context), outputs, timings],
                                limits=limits)
    except SandboxError as exc:
        return None, f"scorer could not run: {exc}"
    if not ran.ok:
        why = describe_failure(ran.reason, ran.error_type, ran.error_message,
                               status=ran.status.value)
        return None, f"score() failed: {why}"
    try:
        return validate_metrics(ran.result), ""
    except ValueError as exc:
        return None, str(exc)
