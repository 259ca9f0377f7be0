"""AgentService over gRPC: translate messages and config, stream the loop's events."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from scillm.agent.v1 import agent_pb2 as pb
from scillm.agent.v1 import agent_pb2_grpc
from scillm.clients import openai_wire as wire
from scillm.clients.errors import InvalidRequestError, RPCError
from scillm.completion.v1 import completion_pb2 as cpb

from ..errors import ErrorTable, StatusError
from ..interceptors import current_request_id
from ..manifests import ManifestClock, RunStore, recording
from . import errors
from ._engine import AgentEngine
from ._records import (
    FinalEvent,
    ModelTurnEvent,
    RunResult,
    StopReason,
    ToolCall,
    ToolCallEvent,
    ToolResult,
    ToolResultEvent,
    Usage,
)
from ._settings import RunConfig
from ._trace import JsonlTrace

__all__ = ["ERRORS", "AgentServicer", "config_from_proto"]

ERRORS: ErrorTable = {
    errors.AgentConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelError: grpc.StatusCode.UNAVAILABLE,
    errors.McpServerError: grpc.StatusCode.UNAVAILABLE,
    errors.HttpToolServerError: grpc.StatusCode.UNAVAILABLE,
    errors.CodeExecutorUnavailableError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AgentError: grpc.StatusCode.INTERNAL,
}

#: A model call's failures that are the caller's mistake, not an outage: a step (whose
#: model call is its whole work) answers with the call's own code, not UNAVAILABLE; so
#: does a run whose first model call failed so, before it streamed anything.
_CALLERS_CODES = frozenset((grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.OUT_OF_RANGE))


class ModelNotFound(StatusError):
    """The run's model is not configured: NOT_FOUND with the Completion service's own
    reason (an error's `ErrorInfo.reason` is its class name), which the OpenAI door
    answers as a plain unknown model, 404 `model_not_found`."""


def _callers_mistake(exc: BaseException | None) -> StatusError | None:
    """The caller's mistake a failed model call (a ModelError) was (see `_CALLERS_CODES`),
    if it was one: its code and the call's own words ("model 'x' is not configured")."""
    if not isinstance(exc, errors.ModelError):
        return None
    cause = exc.__cause__
    if isinstance(cause, InvalidRequestError):  # refused before the call (no model)
        return StatusError(grpc.StatusCode.INVALID_ARGUMENT, cause.message, param=cause.param)
    if isinstance(cause, RPCError) and cause.code in _CALLERS_CODES:
        kind = ModelNotFound if cause.reason == ModelNotFound.__name__ else StatusError
        return kind(cause.code, cause.message, param=cause.param,
                    retry_after_s=cause.retry_after_s)
    return None


_STOP = {StopReason.SUCCESS: pb.STOP_REASON_SUCCESS, StopReason.BUDGET: pb.STOP_REASON_BUDGET,
         StopReason.MAX_ITERATIONS: pb.STOP_REASON_MAX_ITERATIONS,
         StopReason.ERROR: pb.STOP_REASON_ERROR}


def config_from_proto(config: pb.AgentConfig) -> RunConfig:
    """The loop's per-run options; zero values mean the engine's defaults. (A repeated
    field has no presence in proto3: an empty `mcp_servers` or `http_tool_servers` reads
    as left out, every configured server, unless its `..._given` says it was given: then
    none.)"""
    response_format = None
    if config.response_format.type:
        probe = cpb.CompletionRequest(model="x", response_format=config.response_format)
        response_format = wire.request_from_proto(probe).get("response_format")
    return RunConfig(
        model=config.model or None,
        max_iterations=config.max_iterations or None,
        max_total_seconds=(config.max_total_time.ToNanoseconds() / 1e9
                           if config.HasField("max_total_time") else None),
        max_total_tokens=config.max_total_tokens or None,
        enable_repair=config.enable_repair if config.HasField("enable_repair") else None,
        use_tools=config.use_tools if config.HasField("use_tools") else None,
        auto_run_code=config.auto_run_code or None,
        languages=tuple(config.languages) or None,
        mcp_servers=(tuple(config.mcp_servers)
                     if config.mcp_servers or config.mcp_servers_given else None),
        response_format=response_format,
        reasoning_effort=config.reasoning_effort or None,
        seed=config.seed if config.HasField("seed") else None,
        temperature=config.temperature if config.HasField("temperature") else None,
        top_p=config.top_p if config.HasField("top_p") else None,
        max_tokens=config.max_tokens if config.HasField("max_tokens") else None,
        stop=tuple(config.stop) or None,
        presence_penalty=(config.presence_penalty if config.HasField("presence_penalty")
                          else None),
        frequency_penalty=(config.frequency_penalty if config.HasField("frequency_penalty")
                           else None),
        escalation_model=config.escalation_model or None,
        escalation_iterations=config.escalation_iterations or None,
        max_history_messages=config.max_history_messages or None,
        max_history_chars=config.max_history_chars or None,
        shell_allowlist=tuple(config.shell_allowlist) or None,
        shell_presets=tuple(config.shell_presets) or None,
        http_tool_servers=(tuple(config.http_tool_servers)
                           if config.http_tool_servers or config.http_tool_servers_given
                           else None),
        http_tool_headers=dict(config.http_tool_headers) or None)


def _messages(messages: Sequence[cpb.Message]) -> list[dict[str, Any]]:
    if not messages:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "messages must not be empty",
                          param="messages")
    for i, m in enumerate(messages):
        if m.role == cpb.ROLE_UNSPECIFIED:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"messages[{i}].role is ROLE_UNSPECIFIED",
                              param=f"messages[{i}].role")
    return [wire.message_from_proto(m) for m in messages]


def _usage(usage: Usage) -> Any:
    return wire.usage_to_proto({"prompt_tokens": usage.prompt_tokens,
                                "completion_tokens": usage.completion_tokens,
                                "total_tokens": usage.total_tokens})


def _tool_call(call: ToolCall) -> cpb.ToolCall:
    return cpb.ToolCall(id=call.id, function=cpb.FunctionCall(name=call.name,
                                                              arguments=call.arguments))


def _tool_result(result: ToolResult) -> pb.ToolResult:
    out = pb.ToolResult(tool_call_id=result.tool_call_id, name=result.name,
                        output=result.output, is_error=result.is_error)
    out.duration.FromNanoseconds(int(result.duration_s * 1e9))
    return out


def _storable(request: pb.AgentRunRequest) -> pb.AgentRunRequest:
    """The request as the run store keeps it: a run's HTTP tool header values (tokens)
    are not kept."""
    if not request.config.http_tool_headers:
        return request
    kept = pb.AgentRunRequest()
    kept.CopyFrom(request)
    for key in kept.config.http_tool_headers:
        kept.config.http_tool_headers[key] = "[redacted]"
    return kept


def final_to_proto(result: RunResult) -> pb.AgentFinal:
    """The terminal event of a run (manifest added by the caller)."""
    final = pb.AgentFinal(answer=result.answer or "", stop_reason=_STOP[result.stop_reason],
                          error=result.error or "",
                          transcript=[wire.message_to_proto(m, "transcript")
                                      for m in result.transcript])
    metrics = result.metrics
    final.metrics.iterations = metrics.iterations
    final.metrics.tool_calls = metrics.tool_calls
    final.metrics.usage.CopyFrom(_usage(metrics.usage))
    for seconds in metrics.step_seconds:
        final.metrics.step_times.add().FromNanoseconds(int(seconds * 1e9))
    final.metrics.total_time.FromNanoseconds(int(metrics.total_seconds * 1e9))
    final.metrics.escalated = metrics.escalated
    final.metrics.used_model = metrics.used_model
    final.metrics.escalation_reason = metrics.escalation_reason
    final.metrics.json_repairs = metrics.json_repairs
    if result.json_valid is not None:
        final.json_valid = result.json_valid
    return final


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """Thin gRPC edge of the agent loop."""

    def __init__(self, engine: AgentEngine, store: RunStore | None = None,
                 trace_dir: Path | None = None) -> None:
        """`trace_dir` holds the JSONL traces runs ask for (none: tracing is refused)."""
        self._engine = engine
        self._store = store
        self._trace_dir = trace_dir

    async def AgentStep(self, request: pb.AgentStepRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.AgentStepResponse:
        messages = _messages(request.messages)
        try:
            step = await self._engine.step(messages, config_from_proto(request.config))
        except errors.ModelError as exc:
            mistake = _callers_mistake(exc)
            if mistake is None:
                raise
            raise mistake from exc
        response = pb.AgentStepResponse(
            new_messages=[wire.message_to_proto(m, "new_messages") for m in step.new_messages],
            tool_calls=[_tool_call(c) for c in step.tool_calls],
            tool_results=[_tool_result(r) for r in step.tool_results],
            done=step.done, final_answer=step.final_answer or "", usage=_usage(step.usage),
            model=step.model, escalate_to=step.escalate_to or "")
        if step.json_valid is not None:
            response.json_valid = step.json_valid
        return response

    async def AgentRun(self, request: pb.AgentRunRequest,
                       context: grpc.aio.ServicerContext[Any, Any],
                       ) -> AsyncIterator[pb.AgentRunResponse]:
        messages = _messages(request.messages)
        config = config_from_proto(request.config)
        clock = ManifestClock("agent", request.context, request_id=current_request_id(),
                              model=config.model or "")
        trace = self._trace(request.config.trace, clock.manifest.run_id)
        async with contextlib.AsyncExitStack() as stack:
            record = await stack.enter_async_context(
                recording(self._store, clock, _storable(request)))
            # The stream's events are stored with the run (model turns and tool I/O, timed),
            # and kept if it ends without its answer.
            recorded = record.events
            events = await stack.enter_async_context(
                contextlib.aclosing(self._engine.run(messages, config)))
            if trace is not None:
                stack.push_async_callback(trace.close)
            async for event in events:
                if isinstance(event, FinalEvent) and not recorded:
                    # Its first model call failed, nothing streamed yet: a caller's mistake
                    # (an unknown model) is the call's status, as a step's, not a "run"
                    # that failed. (Once a turn has streamed, the run's end says it.)
                    mistake = _callers_mistake(event.result.failure)
                    if mistake is not None:
                        raise mistake from event.result.failure
                if trace is not None:
                    await trace.record(event)
                if isinstance(event, FinalEvent):
                    final = final_to_proto(event.result)
                    final.manifest.CopyFrom(clock.finish(backend="agent"))
                    if trace is not None:
                        final.trace_path = str(trace.path)
                    await record.put(final.manifest, final)
                    yield pb.AgentRunResponse(final=final)
                    continue
                if isinstance(event, ModelTurnEvent):
                    turn = pb.ModelTurn(iteration=event.iteration,
                                        message=wire.message_to_proto(event.message, "message"),
                                        usage=_usage(event.usage), model=event.model)
                    turn.duration.FromNanoseconds(int(event.seconds * 1e9))
                    response = pb.AgentRunResponse(model_turn=turn)
                elif isinstance(event, ToolCallEvent):
                    response = pb.AgentRunResponse(tool_call=pb.ToolCallEvent(
                        iteration=event.iteration, tool_call=_tool_call(event.tool_call)))
                elif isinstance(event, ToolResultEvent):
                    response = pb.AgentRunResponse(tool_result=pb.ToolResultEvent(
                        iteration=event.iteration, result=_tool_result(event.result)))
                else:
                    continue
                recorded.append(response)
                yield response

    def _trace(self, wanted: bool, run_id: str) -> JsonlTrace | None:
        if not wanted:
            return None
        if self._trace_dir is None:
            raise StatusError(grpc.StatusCode.FAILED_PRECONDITION,
                              "this server keeps no run traces (no trace directory)",
                              param="config.trace")
        return JsonlTrace(self._trace_dir / f"{run_id}.jsonl", run_id)
