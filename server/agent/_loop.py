"""The tool-use loop: one step (a model turn and its tool calls) and a whole run.

A step runs at most `max_tool_calls_per_turn` of the tool calls its model turn asks for;
each one past them is answered with an error, not run. A step that ends without tool
calls is a final answer, except that it asks for the one JSON repair round (a JSON
response format the answer fails) or hands over to the escalation model (the model gave
up). A run also escalates once when its turn or token
budget runs out: the escalation model then gets `escalation_iterations` more turns and
`max_total_tokens` more tokens; the time budget stays one for the whole run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..codeworld.sandbox import utf8_safe
from ._code import PROFILES
from ._escalation import escalation_note, gave_up
from ._history import estimate_tokens, find_code_block, prune_history
from ._json_mode import is_json_mode, is_repair_request, json_problem, repair_request
from ._records import (
    AgentEvent,
    FinalEvent,
    Message,
    Metrics,
    ModelTurnEvent,
    RunResult,
    StepResult,
    StopReason,
    ToolCall,
    ToolCallEvent,
    ToolResult,
    ToolResultEvent,
    Usage,
    usage_from,
)
from ._settings import Resolved
from ._tools import Toolbox
from .errors import ModelError, TooManyToolCallsError

__all__ = ["CompleteFn", "LoopContext", "run_events", "step_events"]

#: The model: an OpenAI chat-completions request dict in, a `chat.completion` dict out.
CompleteFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

@dataclass(frozen=True)
class LoopContext:
    """What a step needs: the model, the tools offered, and the resolved options."""

    complete: CompleteFn
    toolbox: Toolbox
    options: Resolved
    history_token_budget: int
    #: Tool servers skipped as they did not answer: name -> why (kept in the RunResult).
    skipped: Mapping[str, str] = field(default_factory=dict)


class OutOfTime(Exception):
    """The run's wall-clock budget ran out during a model call (internal)."""


def build_request(ctx: LoopContext, messages: Sequence[Message],
                  model: str | None = None) -> dict[str, Any]:
    """The chat-completions request for `messages` (already pruned) to `model`."""
    o = ctx.options
    request: dict[str, Any] = {"model": model or o.model,
                               "messages": [dict(m) for m in messages]}
    specs = ctx.toolbox.specs() if o.use_tools else []
    if specs:
        request["tools"] = specs
        request["tool_choice"] = "auto"
    optional = {"response_format": dict(o.response_format) if o.response_format else None,
                "reasoning_effort": o.reasoning_effort, "seed": o.seed,
                "temperature": o.temperature, "top_p": o.top_p, "max_tokens": o.max_tokens,
                "stop": list(o.stop) if o.stop else None,
                "presence_penalty": o.presence_penalty,
                "frequency_penalty": o.frequency_penalty}
    request.update({k: v for k, v in optional.items() if v is not None})
    return request


def _assistant(response: Mapping[str, Any], iteration: int) -> tuple[Message, list[ToolCall]]:
    """The normalised assistant message and its tool calls (ids derived when missing)."""
    try:
        raw = response["choices"][0]["message"]
        if not isinstance(raw, Mapping):
            raise TypeError("message is not an object")
    except (KeyError, IndexError, TypeError) as exc:
        raise ModelError(f"the model's reply is not a chat.completion: {exc!r}") from exc
    content = raw.get("content")
    if isinstance(content, str):  # a model server's JSON "\ud800" is a lone surrogate
        content = utf8_safe(content)
    calls: list[ToolCall] = []
    wire: list[dict[str, Any]] = []
    for index, raw_item in enumerate(raw.get("tool_calls") or ()):
        item: Mapping[str, Any] = raw_item if isinstance(raw_item, Mapping) else {}
        function = item.get("function")
        function = function if isinstance(function, Mapping) else {}
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, sort_keys=True)
        call_id = item.get("id")
        call = ToolCall(id=utf8_safe(str(call_id or f"call_{iteration}_{index}")),
                        name=utf8_safe(str(function.get("name") or "")),
                        arguments=utf8_safe(arguments))
        calls.append(call)
        wire.append({"id": call.id, "type": "function",
                     "function": {"name": call.name, "arguments": call.arguments}})
    message: Message = {"role": "assistant", "content": content if content is not None else ""}
    if wire:
        message["tool_calls"] = wire
    return message, calls


async def _call_model(ctx: LoopContext, request: dict[str, Any],
                      deadline: float | None) -> dict[str, Any]:
    try:
        if deadline is None:
            return await ctx.complete(request)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OutOfTime
        async with asyncio.timeout(remaining):
            return await ctx.complete(request)
    except TimeoutError as exc:
        raise OutOfTime from exc
    except (ModelError, OutOfTime):
        raise
    except Exception as exc:  # whatever the injected model raises ends the run as an error
        raise ModelError(f"the model call failed: {type(exc).__name__}: {exc}") from exc


def _left(deadline: float | None) -> float | None:
    """Seconds left before `deadline` (None: no deadline)."""
    return None if deadline is None else deadline - time.monotonic()


def _repair_note(failed: Sequence[ToolResult], not_run: int, cap: int) -> Message:
    """The user's note after failed calls: only the mesh's own words and the calls'
    names and ids, quoted (the model chose them). The errors stay in the tool messages:
    a tool server's "SYSTEM: ..." quoted here spoke with the user's authority. The calls
    past the turn's cap (`not_run`) are counted, not named: they may be thousands."""
    parts: list[str] = []
    if failed:
        lines = [f"- {json.dumps(r.name[:_NAMED])} (call {json.dumps(r.tool_call_id[:_NAMED])})"
                 for r in failed]
        parts.append("The following tool call(s) failed:\n" + "\n".join(lines)
                     + "\nRead each error in its tool message above, fix the arguments or the "
                       "code, and call the tool again; or answer without it.")
    if not_run:
        parts.append(f"{not_run} tool call(s) after the first {cap} of your last turn were not "
                     f"run: at most {cap} run in one turn. Call again those still needed.")
    return {"role": "user", "content": "\n".join(parts)}


#: How much of a model-chosen tool name or call id the repair note quotes.
_NAMED = 80


async def step_events(ctx: LoopContext, history: Sequence[Message], iteration: int,
                      deadline: float | None = None, model: str | None = None
                      ) -> AsyncIterator[ModelTurnEvent | ToolCallEvent | ToolResultEvent
                                         | StepResult]:
    """One step as it happens: the model turn, each call and result, then the StepResult.

    Raises ModelError (the model failed) or OutOfTime (the deadline passed mid-call).
    """
    o = ctx.options
    model = model or o.model
    pruned = prune_history(history, ctx.history_token_budget,
                           max_messages=o.max_history_messages, max_chars=o.max_history_chars)
    request = build_request(ctx, pruned, model)
    started = time.monotonic()
    response = await _call_model(ctx, request, deadline)
    model_seconds = time.monotonic() - started
    message, calls = _assistant(response, iteration)
    usage = usage_from(response) or Usage(
        sum(estimate_tokens(m) for m in pruned), estimate_tokens(message),
        sum(estimate_tokens(m) for m in pruned) + estimate_tokens(message))
    yield ModelTurnEvent(iteration, message, usage, model_seconds, model)
    new: list[Message] = [message]
    results: list[ToolResult] = []
    if not calls and ctx.options.auto_run_code:
        auto = _auto_call(ctx, str(message.get("content") or ""), iteration)
        if auto is not None:
            yield ToolCallEvent(iteration, auto)
            result = await ctx.toolbox.dispatch(auto, _left(deadline))
            yield ToolResultEvent(iteration, result)
            new.append({"role": "user", "content": f"Output of the code block ({auto.name}):\n"
                                                    f"{result.output}"})
            yield StepResult(tuple(new), (auto,), (result,), False, None, usage,
                             model_seconds=model_seconds, model=model)
            return
    # A turn runs at most `cap` calls: one asking for thousands had each run in turn. A
    # call past them is answered with an error, not run, as one past the time budget is:
    # every tool_call_id keeps its tool message, and the model may ask again.
    cap = o.max_tool_calls_per_turn
    for index, call in enumerate(calls):
        yield ToolCallEvent(iteration, call)
        if index < cap:
            # The run's time budget holds while tools run too: a turn of calls to a tool
            # that hangs held the run for a tool timeout each.
            result = await ctx.toolbox.dispatch(call, _left(deadline))
        else:
            result = ctx.toolbox.refuse(call, TooManyToolCallsError(
                f"tool {call.name!r} not run: the turn asked for {len(calls)} tool calls, "
                f"and at most {cap} run in one turn", tool=call.name))
        results.append(result)
        new.append({"role": "tool", "tool_call_id": call.id, "content": result.output})
        yield ToolResultEvent(iteration, result)
    if calls:
        failed = [r for r in results[:cap] if r.is_error]
        not_run = max(0, len(calls) - cap)
        if (failed or not_run) and ctx.options.enable_repair:
            new.append(_repair_note(failed, not_run, cap))
        yield StepResult(tuple(new), tuple(calls), tuple(results), False, None, usage,
                         model_seconds=model_seconds, model=model)
        return
    answer = str(message.get("content") or "")
    if o.escalation_model and model != o.escalation_model and gave_up(answer, o.give_up_markers):
        new.append(escalation_note(o.escalation_model, "gave_up"))
        yield StepResult(tuple(new), (), (), False, None, usage, model_seconds=model_seconds,
                         model=model, escalate_to=o.escalation_model)
        return
    problem = json_problem(o.response_format, answer)
    json_valid = problem is None if is_json_mode(o.response_format) else None
    if problem is not None and not is_repair_request(history[-1] if history else None):
        new.append(repair_request(problem))
        yield StepResult(tuple(new), (), (), False, None, usage, json_valid,
                         model_seconds=model_seconds, model=model, json_repair=True)
        return
    yield StepResult(tuple(new), (), (), True, answer, usage, json_valid,
                     model_seconds=model_seconds, model=model)


def _auto_call(ctx: LoopContext, text: str, iteration: int) -> ToolCall | None:
    tags = {tag: lang for lang in ctx.options.languages
            if ctx.toolbox.get(PROFILES[lang].tool_name) is not None
            for tag in PROFILES[lang].fence_tags}
    found = find_code_block(text, tags)
    if found is None:
        return None
    language, source = found
    return ToolCall(id=f"auto_{iteration}", name=PROFILES[language].tool_name,
                    arguments=json.dumps({"code": source}), auto=True)


@dataclass
class _Allowance:
    """What the current model may still use: turns up to `turns`, tokens past `floor`."""

    model: str
    turns: int
    token_floor: int = 0
    escalated: bool = False
    reason: str = ""

    def exhausted(self, o: Resolved, iterations: int, usage: Usage) -> StopReason | None:
        if iterations >= self.turns:
            return StopReason.MAX_ITERATIONS
        if usage.total_tokens - self.token_floor >= o.max_total_tokens:
            return StopReason.BUDGET
        return None

    def can_escalate(self, o: Resolved) -> bool:
        return bool(o.escalation_model) and not self.escalated \
            and self.model != o.escalation_model

    def escalate(self, o: Resolved, reason: str, iterations: int, usage: Usage) -> None:
        self.model, self.escalated, self.reason = o.escalation_model, True, reason
        self.turns = iterations + o.escalation_iterations
        self.token_floor = usage.total_tokens


async def run_events(ctx: LoopContext, messages: Sequence[Message]
                     ) -> AsyncGenerator[AgentEvent, None]:
    """A whole run: steps until a final answer, a budget or max_iterations (escalating
    once when configured); then FinalEvent."""
    o = ctx.options
    started = time.monotonic()
    deadline = started + o.max_total_seconds
    transcript: list[Message] = [dict(m) for m in messages]
    usage, iterations, calls, repairs = Usage(), 0, 0, 0
    step_seconds: list[float] = []
    tool_io: list[tuple[ToolCall, ToolResult]] = []
    stop, answer, error, json_valid = StopReason.MAX_ITERATIONS, "", None, None
    failure: ModelError | None = None
    allowance = _Allowance(o.model, o.max_iterations)
    used_model = o.model
    while True:
        exhausted = allowance.exhausted(o, iterations, usage)
        if exhausted is not None:
            if not allowance.can_escalate(o):
                stop = exhausted
                break
            reason = "max_iterations" if exhausted is StopReason.MAX_ITERATIONS else "budget"
            allowance.escalate(o, reason, iterations, usage)
            transcript.append(escalation_note(o.escalation_model, reason))
        if time.monotonic() >= deadline:
            stop = StopReason.BUDGET
            break
        iterations += 1
        step_started = time.monotonic()
        step: StepResult | None = None
        try:
            async for item in step_events(ctx, transcript, iterations, deadline,
                                          allowance.model):
                if isinstance(item, StepResult):
                    step = item
                else:
                    yield item
        except OutOfTime:
            stop = StopReason.BUDGET
            break
        except ModelError as exc:
            stop, error, failure = StopReason.ERROR, utf8_safe(str(exc)), exc
            break
        assert step is not None
        step_seconds.append(time.monotonic() - step_started)
        transcript.extend(step.new_messages)
        usage += step.usage
        calls += len(step.tool_calls)
        repairs += step.json_repair
        used_model = step.model
        tool_io.extend(zip(step.tool_calls, step.tool_results, strict=True))
        if step.json_valid is not None:
            json_valid = step.json_valid
        if step.escalate_to:
            allowance.escalate(o, "gave_up", iterations, usage)
        if step.done:
            stop, answer = StopReason.SUCCESS, step.final_answer or ""
            break
    if stop is not StopReason.SUCCESS:
        answer = next((str(m.get("content") or "") for m in reversed(transcript)
                       if m.get("role") == "assistant"), "")
    metrics = Metrics(iterations, calls, usage, tuple(step_seconds), time.monotonic() - started,
                      escalated=allowance.escalated, escalation_reason=allowance.reason,
                      used_model=used_model, json_repairs=repairs)
    yield FinalEvent(RunResult(answer, stop, metrics, tuple(transcript), tuple(tool_io),
                               error, json_valid, initial_count=len(messages),
                               skipped_servers=dict(ctx.skipped), failure=failure))
