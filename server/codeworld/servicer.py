"""CodeWorldService over gRPC: translate the request, stream the engine's events."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from scillm.codeworld.v1 import codeworld_pb2 as pb
from scillm.codeworld.v1 import codeworld_pb2_grpc

from .. import charges
from ..errors import ErrorTable, StatusError
from ..interceptors import current_request_id
from ..manifests import ManifestClock, RunStore, recording
from ..metrics import Metrics
from . import errors
from ._engine import CodeWorldEngine
from ._events import Generation, MctsProgress, RunResult, Summary
from ._judge import check_weights
from ._model import AutogenSpec, Item, JudgeSpec, MctsSettings, RunRequest, Strategy
from ._scoring import check_scorer
from .sandbox import Limits, UnreadableSource, check_readable, describe_failure, parse_python

__all__ = ["ERRORS", "CodeWorldServicer", "request_from_proto", "run_to_proto",
           "summary_to_proto"]

ERRORS: ErrorTable = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.SandboxError: grpc.StatusCode.UNAVAILABLE,
    errors.GenerationFailed: grpc.StatusCode.UNAVAILABLE,
    errors.CodeWorldError: grpc.StatusCode.INTERNAL,
}

_LANGUAGES = {pb.LANGUAGE_UNSPECIFIED: "python", pb.LANGUAGE_PYTHON: "python",
              pb.LANGUAGE_JAVASCRIPT: "javascript", pb.LANGUAGE_TYPESCRIPT: "typescript",
              pb.LANGUAGE_C: "c", pb.LANGUAGE_CPP: "cpp", pb.LANGUAGE_JAVA: "java",
              pb.LANGUAGE_RUST: "rust", pb.LANGUAGE_GO: "go"}
_LANGUAGE_ENUM = {name: value for value, name in _LANGUAGES.items()
                  if value != pb.LANGUAGE_UNSPECIFIED}
_STATUS = {"ok": pb.RUN_STATUS_OK, "error": pb.RUN_STATUS_ERROR,
           "timeout": pb.RUN_STATUS_TIMEOUT, "killed": pb.RUN_STATUS_KILLED}


def _seconds(d: Any) -> float:
    return float(d.seconds + d.nanos / 1e9)


def _invalid(message: str, param: str) -> StatusError:
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, message, param=param)


#: The whole-number `Limits` fields, and the sandbox `Limits` names they set.
_SANDBOX_LIMITS = (("memory_bytes", "memory"), ("max_file_bytes", "file_size"),
                   ("max_open_files", "open_files"), ("max_output_bytes", "output"),
                   ("total_memory_bytes", "total_memory"), ("max_disk_bytes", "disk"),
                   ("max_files", "files"))


def _limits(limits: pb.Limits) -> tuple[Limits | None, int | None]:
    if not limits.ByteSize():
        return None, None
    values: dict[str, Any] = {}
    if limits.HasField("timeout"):
        values["wall_time"] = _seconds(limits.timeout)
    if limits.HasField("cpu_time"):
        values["cpu_time"] = _seconds(limits.cpu_time)
    values.update((name, getattr(limits, field)) for field, name in _SANDBOX_LIMITS
                  if getattr(limits, field))  # 0: the sandbox's default
    try:
        built = Limits(**values) if values else None
    except ValueError as exc:
        raise _invalid(f"limits: {exc}", "limits") from None
    return built, (limits.concurrency or None)


_JUDGE_MODES = frozenset(pb.JudgeMode.values())
_SEARCH_MODES = frozenset(pb.SearchMode.values())


def _language(strategy: pb.Strategy, index: int) -> str:
    name = _LANGUAGES.get(strategy.language)
    if name is None:
        raise _invalid(f"strategies[{index}].language: unknown language {strategy.language}",
                       f"strategies[{index}].language")
    return name


def _strategy(strategy: pb.Strategy, index: int) -> Strategy:
    """The engine's strategy; its source refused, naming it, when no parser reads it (a
    NUL byte; Python nesting past the parser's limits). A syntax error is the strategy's
    own failure, reported on each of its runs."""
    language = _language(strategy, index)
    param = f"strategies[{index}].source"
    try:
        if language == "python":
            parse_python(strategy.source)
        else:
            check_readable(strategy.source)
    except UnreadableSource as exc:
        raise _invalid(f"{param}: {exc}", param) from None
    except SyntaxError:
        pass
    return Strategy(name=strategy.name or f"strategy-{index}", source=strategy.source,
                    language=language)


def _scorer(source: str) -> str | None:
    """The scorer's source (None: the rubric), refused, naming it, when it is unusable."""
    if not source:
        return None
    try:
        check_scorer(source)
    except errors.InvalidScorer as exc:
        raise _invalid(f"scoring.score_source: {exc}", "scoring.score_source") from None
    return source


def _weights(weights: Mapping[str, float]) -> dict[str, float]:
    try:
        check_weights(weights)
    except errors.InvalidRequest as exc:
        raise _invalid(f"scoring.judge.weights: {exc}", "scoring.judge.weights") from None
    return dict(weights)


def _context(task: pb.Task, index: int) -> dict[str, Any]:
    """A task's context as the strategies get it (numbers as JSON numbers: floats)."""
    try:
        return json_format.MessageToDict(task.context)
    except ValueError as exc:  # a NaN or infinity: the binary wire carries one, JSON cannot
        raise _invalid(f"items[{index}].context holds a non-finite number ({exc})",
                       f"items[{index}].context") from None


def request_from_proto(req: pb.CodeWorldRunRequest, default_model: str = "") -> RunRequest:
    """The engine's request for a `CodeWorldRunRequest`."""
    if not req.items:
        raise _invalid("items must not be empty", "items")
    items = []
    for i, task in enumerate(req.items):
        context = _context(task, i) if task.HasField("context") else {}
        if task.tests:
            context["tests"] = task.tests
        if task.entry_point:
            context["entry_point"] = task.entry_point
        items.append(Item(task_id=task.task_id or f"item-{i}", description=task.description,
                          context=context))
    strategies = tuple(_strategy(s, i) for i, s in enumerate(req.strategies))
    limits, concurrency = _limits(req.limits)
    judge = req.scoring.judge
    # Modes this server does not know (a newer client's) ran as the defaults, silently.
    if judge.mode not in _JUDGE_MODES:
        raise _invalid(f"scoring.judge.mode {judge.mode} is not a mode this server knows",
                       "scoring.judge.mode")
    if req.mode not in _SEARCH_MODES:
        raise _invalid(f"mode {req.mode} is not a mode this server knows", "mode")
    spec = JudgeSpec(
        mode="lexicographic" if judge.mode == pb.JUDGE_MODE_LEXICOGRAPHIC else "weighted")
    if judge.weights:
        spec = replace(spec, weights=_weights(judge.weights))
    if judge.order:
        spec = replace(spec, order=tuple(judge.order))
    mcts = autogen = None
    if req.mode == pb.SEARCH_MODE_MCTS:
        m = req.mcts
        model = m.model or default_model
        if m.HasField("temperature") and not 0.0 <= m.temperature <= 2.0:  # NaN too
            raise _invalid("mcts.temperature must be between 0 and 2", "mcts.temperature")
        mcts = MctsSettings(
            rollouts=m.rollouts or 16, depth=m.depth or 1, uct_c=m.uct_c or 1.4, seed=m.seed,
            time_budget=_seconds(m.time_budget) if m.HasField("time_budget") else None,
            model=model, temperature=m.temperature if m.HasField("temperature") else 0.0)
        if m.autogenerate:
            if not model:
                raise _invalid("mcts.autogenerate needs the model that writes the variants: "
                               "set mcts.model (through the HTTP door: strategy_config."
                               "autogenerate.generator_model, or provider.args."
                               "generator_model) or SCILLM_CODEWORLD_MODEL on the server",
                               "mcts.model")
            autogen = AutogenSpec(
                n=m.num_variants or 3, model=model, seed=m.seed,
                temperature=m.temperature if m.HasField("temperature") else 0.7)
    if not strategies and autogen is None:
        raise _invalid("strategies must not be empty (or set mcts.autogenerate)", "strategies")
    return RunRequest(
        items=tuple(items), strategies=strategies, scorer=_scorer(req.scoring.score_source),
        volatile_metrics=tuple(req.scoring.volatile_metrics),
        judge=spec, limits=limits, concurrency=concurrency,
        strict=True if req.limits.strict else None, mcts=mcts, autogenerate=autogen,
        session_id=req.context.session_id or None, track=req.context.track or "default")


def _value(value: Any) -> struct_pb2.Value:
    """`value` as a Value; its repr when it is no JSON value. ParseDict takes NaN and
    infinities, which no record can serialise: they are refused here as well. An int past
    any float (`10**400`) is an OverflowError, a lone surrogate (`"\\ud800"`) a
    UnicodeEncodeError (a ValueError): each run's own, never the whole stream's."""
    out = struct_pb2.Value()
    try:
        json.dumps(value, allow_nan=False)
        json_format.ParseDict(value, out)
    except (json_format.ParseError, TypeError, ValueError, OverflowError, RecursionError):
        out.string_value = repr(value)
    return out


def _finite(metrics: Any) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def run_to_proto(run: RunResult) -> pb.RunResult:
    """One run as a `RunResult` message."""
    error = "" if run.status.value == "ok" else describe_failure(
        run.reason, run.error_type, run.error_message)
    out = pb.RunResult(task_id=run.task_id, strategy=run.strategy,
                       status=_STATUS.get(run.status.value, pb.RUN_STATUS_ERROR),
                       result=_value(run.result), stdout=run.stdout, stderr=run.stderr,
                       error=error, lines_of_code=run.lines_of_code,
                       metrics=_finite(run.metrics), score_error=run.score_error,
                       variant_id=run.variant_id)
    out.timings.wall.FromNanoseconds(int(run.wall * 1e9))
    out.timings.cpu.FromNanoseconds(int(run.cpu * 1e9))
    out.timings.peak_memory_bytes = run.peak_memory
    if run.correct is not None:
        out.tests_passed = run.correct
    return out


def generation_to_proto(gen: Generation) -> pb.GenerationInfo:
    """One model generation of variants as a `GenerationInfo` message."""
    return pb.GenerationInfo(model=gen.model, n=gen.n, temperature=gen.temperature,
                             prompt_sha256=gen.prompt_sha256,
                             response_sha256=gen.response_sha256, error=gen.error,
                             accepted=len(gen.variant_ids), variant_ids=gen.variant_ids,
                             rejected=gen.rejected, parent_id=gen.parent_id)


def summary_to_proto(summary: Summary, items: int) -> pb.CodeWorldRunSummary:
    """The terminal summary (manifest added by the caller)."""
    out = pb.CodeWorldRunSummary(items=items, succeeded=summary.counts.get("ok", 0),
                                 failed=summary.counts.get("runs", 0)
                                 - summary.counts.get("ok", 0),
                                 volatile_metrics=sorted(summary.volatile_metrics))
    for task_id, ranked in summary.rankings.items():
        out.rankings.add(task_id=task_id, entries=[
            pb.RankedStrategy(strategy=r.strategy, rank=r.rank, score=r.score,
                              metrics=_finite(r.metrics)) for r in ranked])
    if summary.mcts_stats is not None:
        s = summary.mcts_stats
        out.mcts_stats.rollouts = s.rollouts
        out.mcts_stats.explored = s.explored
        out.mcts_stats.best_variant_id = s.best_variant_id
        for node in s.children:
            out.mcts_stats.children.add(
                variant_id=node.variant_id, parent_id=node.parent_id, depth=node.depth,
                visits=node.visits, value=node.value, mean=node.mean)
        out.mcts_stats.expansions.extend(generation_to_proto(g) for g in s.expansions)
    if summary.generation is not None:
        out.mcts_stats.generation.CopyFrom(generation_to_proto(summary.generation))
    if summary.session is not None:
        si = summary.session
        out.session.CopyFrom(pb.SessionInfo(
            session_id=si.session_id, track=si.track, mean_aggregate=si.mean_aggregate,
            previous_mean=si.previous_mean or 0.0, plateau=si.plateau,
            runs=0 if si.error else si.index + 1, error=si.error))
    return out


#: Bytes of run events a run's stored record keeps whole. A caller sets how much output and
#: result a run may have (up to 16 MiB of each stream): 240 runs of 1.5 MB were held in
#: memory (3-4 GB) and written as one JSON value over SQLite's limit, and the run's summary
#: was lost. Past this, a run's stored copy keeps all but its stdout, stderr and result
#: (`output_not_stored`); the caller's stream has them whole.
RECORDED_BYTES = 64 << 20


def _without_output(response: pb.CodeWorldRunResponse) -> pb.CodeWorldRunResponse:
    kept = pb.CodeWorldRunResponse()
    kept.CopyFrom(response)
    for name in ("stdout", "stderr", "result"):
        kept.run.ClearField(name)
    kept.run.output_not_stored = True
    return kept


class CodeWorldServicer(codeworld_pb2_grpc.CodeWorldServiceServicer):
    """Thin gRPC edge of the CodeWorld engine."""

    def __init__(self, engine: CodeWorldEngine, store: RunStore | None = None,
                 metrics: Metrics | None = None, default_model: str = "") -> None:
        """`default_model` writes MCTS variants when a request names no model."""
        self._engine = engine
        self._store = store
        self._metrics = metrics
        self._default_model = default_model

    async def CodeWorldRun(self, request: pb.CodeWorldRunRequest,
                           context: grpc.aio.ServicerContext[Any, Any],
                           ) -> AsyncIterator[pb.CodeWorldRunResponse]:
        # A session is its caller's: a virtual key's sessions are stored under its key_id
        # (the master key's, and every caller's with keys off, unscoped as before). The
        # caller's summary and manifest keep the session_id it sent.
        run_request = replace(request_from_proto(request, self._default_model),
                              session_owner=charges.caller_key_id())
        self._engine.validate(run_request)
        clock = ManifestClock("codeworld", request.context, request_id=current_request_id(),
                              model=run_request.mcts.model if run_request.mcts else "",
                              item_ids=[i.task_id for i in run_request.items])
        stored_bytes = 0
        async with recording(self._store, clock, request) as record, \
                contextlib.aclosing(self._engine.run(run_request)) as events:  # type: ignore[type-var]
            # Stored with the run as the stream's envelopes: each run's result and, for
            # MCTS, each rollout's reward (the runs UI draws them); kept by a run that ends
            # without its summary.
            recorded = record.events
            async for event in events:
                if isinstance(event, RunResult):
                    response = pb.CodeWorldRunResponse(run=run_to_proto(event))
                    size = response.ByteSize()
                    if stored_bytes + size <= RECORDED_BYTES:
                        stored_bytes += size
                        recorded.append(response)
                    else:
                        recorded.append(_without_output(response))
                    if self._metrics is not None:
                        self._metrics.sandbox_runs.labels(event.status.value).inc()
                    yield response
                elif isinstance(event, Generation):
                    yield pb.CodeWorldRunResponse(generation=generation_to_proto(event))
                elif isinstance(event, MctsProgress):
                    response = pb.CodeWorldRunResponse(mcts_progress=pb.MctsProgress(
                        rollout=event.rollout, variant_id=event.variant_id,
                        reward=event.reward, best_variant_id=event.best_variant_id,
                        best_value=event.best_reward))
                    recorded.append(response)
                    yield response
                elif isinstance(event, Summary):
                    summary = summary_to_proto(event, len(run_request.items))
                    summary.manifest.CopyFrom(clock.finish(backend="sandbox",
                                                           isolation=event.isolation))
                    await record.put(summary.manifest, summary)
                    yield pb.CodeWorldRunResponse(summary=summary)

    async def ListLanguages(self, request: pb.ListLanguagesRequest,
                            context: grpc.aio.ServicerContext[Any, Any],
                            ) -> pb.ListLanguagesResponse:
        return pb.ListLanguagesResponse(languages=[
            pb.LanguageInfo(language=_LANGUAGE_ENUM[t.language.value], available=t.available,
                            version=t.version, reason=t.reason, compiled=t.compiled)
            for t in self._engine.languages()])
