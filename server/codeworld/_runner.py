"""Running strategies on items in the sandbox, concurrently, and scoring each run."""

from __future__ import annotations

import ast
import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scillm.clients.structs import whole_numbers

from ..fair import shares_as
from ._events import RunResult
from ._model import Item, Strategy
from ._scoring import Rubric, aggregate, lines_of_code, user_metrics
from .errors import InvalidSource, WorkerCrashed
from .sandbox import (
    COMPILED,
    Execution,
    JsonValue,
    Language,
    Limits,
    Sandbox,
    Status,
    check_policy,
    parse_python,
)

#: Languages whose strategies are programs: context JSON on stdin, result JSON on stdout.
PROGRAMS = frozenset(lang.value for lang in COMPILED - {Language.TYPESCRIPT})
_JS_LIKE = frozenset({Language.JAVASCRIPT.value, Language.TYPESCRIPT.value})
_JS_FUNCTION = re.compile(
    r"(?:function\s*\*?\s*([A-Za-z_$][\w$]*)|(?:const|let|var)\s+([A-Za-z_$][\w$]*)\s*=)")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A strategy checked once before it runs on every item.

    ``problem`` is empty when it can run; otherwise each of its runs reports it.
    """

    strategy: Strategy
    lines_of_code: int
    functions: frozenset[str] = frozenset()
    problem: str = ""
    problem_type: str = ""


def prepare(strategy: Strategy, *, strict: bool, unavailable: Mapping[str, str]) -> Prepared:
    """Check language, syntax and (strict mode) policy of a strategy.

    ``unavailable`` maps each language that cannot run here to why.
    """
    loc = lines_of_code(strategy.source)
    if strategy.language in unavailable:
        return Prepared(strategy, loc, problem=f"language {strategy.language!r} is "
                        f"unavailable here: {unavailable[strategy.language]}",
                        problem_type="LanguageUnavailable")
    if strategy.language in PROGRAMS:
        if strategy.entry is not None:
            return Prepared(strategy, loc, problem=f"{strategy.language} strategies are "
                            "programs: no entry function", problem_type="InvalidSource")
        return Prepared(strategy, loc)
    if strategy.language in _JS_LIKE:
        names = {a or b for a, b in _JS_FUNCTION.findall(strategy.source)}
        return Prepared(strategy, loc, frozenset(names))
    try:
        tree = parse_python(strategy.source)
    except SyntaxError as exc:
        return Prepared(strategy, loc, problem=f"syntax error: {exc}", problem_type="SyntaxError")
    if strict:
        try:
            check_policy(strategy.source, strategy=strategy.name)
        except InvalidSource as exc:
            return Prepared(strategy, loc, problem=str(exc), problem_type=type(exc).__name__)
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return Prepared(strategy, loc, frozenset(names))


@dataclass(frozen=True, slots=True)
class _Plan:
    entry: str | None
    args: list[JsonValue] = field(default_factory=list)
    stdin: str = ""
    tests: str | None = None
    via_main: bool = False


def task_of(item: Item) -> dict[str, Any]:
    """The ``task`` argument handed to strategies and scorers."""
    return {"task_id": item.task_id, "description": item.description}


#: Context keys a strategy does not see.
_JUDGED_BY = frozenset({"tests", "expected"})


def _plan(prepared: Prepared, item: Item) -> _Plan | str:
    strategy = prepared.strategy
    # What the strategy is judged by is not handed to it: `return context["expected"]`
    # was correct on every item (the scorer and the correctness check still see it).
    context = {k: v for k, v in item.context.items() if k not in _JUDGED_BY}
    if strategy.language in PROGRAMS:
        if item.tests is not None:
            return (f"the item has check(candidate) tests, which run Python, JavaScript or "
                    f"TypeScript functions; a {strategy.language} program needs an expected "
                    "value instead")
        return _Plan(None, stdin=json.dumps(whole_numbers(context)), via_main=True)
    if item.tests is not None:
        entry = strategy.entry or item.entry_point
        if entry is None:
            return "the item has tests but no entry_point"
        return _Plan(entry, tests=item.tests)
    entry = strategy.entry or next((n for n in ("solve", "main") if n in prepared.functions),
                                   None)
    if entry is None:
        return "defines neither solve(task, context) nor main()"
    if entry == "main":
        return _Plan("main", stdin=json.dumps(item.context.get("input")), via_main=True)
    return _Plan(entry, args=[task_of(item), context])


@dataclass(slots=True)
class Runner:
    """Runs and scores strategies on items with at most ``concurrency`` runs at once."""

    sandbox: Sandbox
    rubric: Rubric
    weights: Mapping[str, float]
    limits: Limits | None = None
    scorer: str | None = None
    concurrency: int = 1
    _gate: asyncio.Semaphore | None = None

    async def run_one(self, prepared: Prepared, item: Item) -> RunResult:
        """One strategy on one item, scored; failures become a status, never an exception."""
        strategy = prepared.strategy
        plan = prepared.problem or _plan(prepared, item)
        if isinstance(plan, str):
            execution = Execution(Status.ERROR, reason="invalid", error_message=plan,
                                  error_type=prepared.problem_type or "EntryMissing")
        else:
            execution = await self._execute(strategy, plan)
        correct = _correct(item, execution)
        metrics = self.rubric.metrics(execution, correct, prepared.lines_of_code)
        score_error = ""
        if self.scorer is not None:
            found, score_error = await user_metrics(
                self.sandbox, self.scorer, task_of(item), item.context, execution, correct,
                self.limits)
            metrics = found if found is not None else metrics
        return RunResult(
            strategy=strategy.name, task_id=item.task_id, language=strategy.language,
            status=execution.status, result=execution.result, stdout=execution.stdout,
            stderr=execution.stderr, truncated=execution.truncated, wall=execution.wall,
            cpu=execution.cpu, peak_memory=execution.peak_memory,
            lines_of_code=prepared.lines_of_code, correct=correct, metrics=metrics,
            aggregate=aggregate(metrics, self.weights), reason=execution.reason,
            error_type=execution.error_type, error_message=execution.error_message,
            score_error=score_error)

    async def run_many(self, prepared: Sequence[Prepared], items: Sequence[Item]
                       ) -> AsyncIterator[RunResult]:
        """Every strategy on every item; results are yielded as they complete."""
        with shares_as(self):  # the sandbox shares its workers fairly among runners
            tasks = [asyncio.ensure_future(self._gated(p, item))
                     for p in prepared for item in items]
        try:
            for next_done in asyncio.as_completed(tasks):
                yield await next_done
        finally:
            for task in tasks:
                task.cancel()

    async def _gated(self, prepared: Prepared, item: Item) -> RunResult:
        if self._gate is None:
            self._gate = asyncio.Semaphore(max(1, self.concurrency))
        async with self._gate:
            return await self.run_one(prepared, item)

    async def _execute(self, strategy: Strategy, plan: _Plan) -> Execution:
        try:
            execution = await self.sandbox.run(
                strategy.language, strategy.source, entry=plan.entry, args=plan.args,
                stdin=plan.stdin, tests=plan.tests, limits=self.limits)
        except WorkerCrashed as exc:
            return Execution(Status.KILLED, reason="worker_crashed", error_type="WorkerCrashed",
                             error_message=str(exc))
        except InvalidSource as exc:
            return Execution(Status.ERROR, reason="invalid", error_type=type(exc).__name__,
                             error_message=str(exc))
        if plan.via_main and execution.ok and execution.result is None:
            return _with_stdout_result(execution)
        return execution


def _with_stdout_result(execution: Execution) -> Execution:
    """A program's execution with its stdout as its result: the JSON it printed, else
    the text; an error when it printed JSON nested too deeply to read."""
    text = execution.stdout.strip()
    try:
        result: JsonValue = json.loads(text, parse_constant=_not_json,
                                       parse_float=_finite_float)
    except ValueError:  # NaN, Infinity and 1e999 too: no JSON value, and no record holds them
        result = text
    except RecursionError:
        return replace(execution, status=Status.ERROR, reason="result_depth",
                       error_type="ResultTooDeep",
                       error_message="stdout is JSON nested too deeply to read")
    return replace(execution, result=result)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is past any float")
    return value


def _correct(item: Item, execution: Execution) -> bool | None:
    if item.tests is not None:
        return execution.ok and execution.result is True
    if "expected" in item.context:
        return execution.ok and bool(execution.result == item.context["expected"])
    return None
