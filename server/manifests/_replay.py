"""Replay a stored run: execute its stored request again and report what differs.

Volatile fields (ids, times, durations, timings, the manifest itself) are left out of
the comparison; everything else (verdicts, outputs, rankings, transcripts) must match.

CodeWorld metrics derived from wall time (the rubric's ``speed``, and whatever the
request's ``Scoring.volatile_metrics`` names; the summary lists them in
``volatile_metrics``) differ from one execution to the next, and so do the scores and
ranks built on them: two correct strategies of equal length can swap places on timing
alone. Replay therefore compares each ranking as strategy → deterministic metrics
(correctness, brevity, ...), and reports ranks, scores and volatile metrics apart, as
``volatile``: a rank can only change without a deterministic metric changing when timing
moved it, so a replay whose deterministic metrics match is identical, and a real change
(a wrong result, a failed test, a longer source) still differs.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from scillm.clients import ScillmClient
from scillm.completion.v1 import completion_pb2

from ._made import StreamSoFar
from ._store import StoredRun, run_state

__all__ = ["comparable", "differences", "replay", "split"]

# `session` is the session's history, not an outcome of the inputs: a replay runs outside
# the session (it must not count as one more run of it) and is not compared on it; nor is
# `routing` (how a completion was served: a replay may be a cache hit).
_VOLATILE = {"manifest", "session", "routing", "duration", "timings", "step_times",
             "total_time", "id", "created", "run_id", "request_id", "start_time", "end_time",
             "overhead", "total_sleep"}


#: CodeWorld's wall-time metric, for summaries stored before they listed their own.
_TIMING_METRICS = ("speed",)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def split(message: Message) -> tuple[Any, Any]:
    """The message as a dict without its volatile fields, and its volatile outcomes
    (CodeWorld's ranks, scores and wall-time metrics) apart."""
    data = _strip(json_format.MessageToDict(message, preserving_proto_field_name=True))
    volatile: dict[str, Any] = {}
    if isinstance(data.get("rankings"), list):
        timing = set(data.get("volatile_metrics") or _TIMING_METRICS)
        data["rankings"], volatile["rankings"] = _split_rankings(data["rankings"], timing)
    return data, volatile


def _split_rankings(rankings: list[Any], timing: set[str]
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per task: strategy → deterministic metrics; and strategy → rank, score and the
    wall-time metrics."""
    fixed: dict[str, Any] = {}
    moving: dict[str, Any] = {}
    for ranking in rankings:
        task = str(ranking.get("task_id", ""))
        fixed[task], moving[task] = {}, {}
        for entry in ranking.get("entries", []):
            name = str(entry.get("strategy", ""))
            metrics = entry.get("metrics", {})
            fixed[task][name] = {k: v for k, v in metrics.items() if k not in timing}
            moving[task][name] = {"rank": entry.get("rank"), "score": entry.get("score"),
                                  **{k: v for k, v in metrics.items() if k in timing}}
    return fixed, moving


def comparable(message: Message) -> Any:
    """The message as a dict without its volatile fields (see ``split``)."""
    return split(message)[0]


def differences(stored: Any, replayed: Any, path: str = "") -> list[str]:
    """Paths where the two values differ, each with both values."""
    if isinstance(stored, dict) and isinstance(replayed, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(replayed)):
            out += differences(stored.get(key), replayed.get(key), f"{path}.{key}".lstrip("."))
        return out
    if isinstance(stored, list) and isinstance(replayed, list) and len(stored) == len(replayed):
        out = []
        for i, (a, b) in enumerate(zip(stored, replayed, strict=True)):
            out += differences(a, b, f"{path}[{i}]")
        return out
    return [] if stored == replayed else [f"{path}: {stored!r} -> {replayed!r}"]


async def _terminal(events: Any, field: str) -> Message:
    last: Message | None = None
    async for event in events:
        if event.WhichOneof("event") == field:
            last = getattr(event, field)
    if last is None:
        raise RuntimeError(f"the replayed stream ended without its {field}")
    return last


async def _chat_made(events: Any) -> completion_pb2.CompletionResponse:
    """The chat completion a replayed stream made (joined as its run was when it was
    kept: `StreamSoFar`)."""
    so_far = StreamSoFar()
    end: completion_pb2.CompletionStreamEnd | None = None
    async for event in events:
        kind = event.WhichOneof("event")
        if kind == "chunk":
            so_far.add_chat(event.chunk)
        elif kind == "end":
            end = event.end
    if end is None:
        raise RuntimeError("the replayed stream ended without its end")
    return so_far.chat(end)


async def replay(stored: StoredRun, client: ScillmClient
                 ) -> tuple[Message, list[str], list[str]]:
    """Re-execute `stored` through `client`: the new result, the differences, and the
    differences in volatile outcomes (reported, not counted; see the module docstring).
    ValueError for a run with no result to compare with (still running, interrupted, or
    a stored call that failed)."""
    state = run_state(stored.manifest, stored.result)
    if state == "failed":  # a stored call's error (google.rpc.Status)
        error = getattr(stored.result, "message", "")
        raise ValueError(f"run {stored.manifest.run_id} failed ({error}): it has no result "
                         "to compare a replay with; send its request again to retry it")
    if state != "done":
        raise ValueError(f"run {stored.manifest.run_id} is {state}: it has no result to "
                         "compare a replay with")
    service = stored.manifest.service
    request: Any = type(stored.request)()
    request.CopyFrom(stored.request)
    # Outside the run's context: a replay is a new run, not one more of its session, nor
    # one under its caller's own run id (taken: ALREADY_EXISTS).
    if isinstance(request, completion_pb2.CompletionStreamRequest):
        request.request.ClearField("context")
    elif service in ("codeworld", "agent", "prove", "completion"):
        request.ClearField("context")
    result: Message
    if service == "codeworld":
        result = await _terminal(client.codeworld.run(request), "summary")
    elif service == "agent":
        result = await _terminal(client.agent.run(request), "final")
    elif service == "prove":
        result = await _terminal(client.prove.prove(request), "summary")
    elif service == "completion" and isinstance(request, completion_pb2.CompletionRequest):
        result = await client.completion.create(request)
    elif service == "completion" and isinstance(request, completion_pb2.EmbeddingRequest):
        result = await client.completion.embed(request)
    elif service == "completion" and isinstance(request, completion_pb2.TextCompletionRequest):
        result = await client.completion.text(request)
    elif service == "completion" and isinstance(request,
                                                completion_pb2.CompletionStreamRequest):
        # A chat stream replays as a stream, as it was asked. Kept as the completion it
        # made, it is compared as the one the replay makes; kept as its end (before), as
        # that end.
        events = client.completion.stream(request.request,
                                          include_usage=request.include_usage)
        if isinstance(stored.result, completion_pb2.CompletionResponse):
            result = await _chat_made(events)
        else:
            result = await _terminal(events, "end")
    else:
        raise ValueError(f"cannot replay a run of service {service!r} "
                         f"({stored.request.DESCRIPTOR.full_name})")
    before, before_volatile = split(stored.result)
    after, after_volatile = split(result)
    return (result, differences(before, after),
            differences(before_volatile, after_volatile))
