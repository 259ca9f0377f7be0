"""Answers, OpenAI JSON <-> protos: responses, stream chunks, usage, logprobs, and the
`Routing` record as the HTTP door's `scillm.routing`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2 as pb

from ._messages import _fill_message, message_from_proto
from ._values import _FINISH_NAMES, _ROLE_NAMES, FINISH_REASONS, ROLES, add_extras, extras_text


def usage_to_proto(usage: Mapping[str, Any] | None) -> common_pb2.Usage:
    """OpenAI's usage object as `Usage`."""
    out = common_pb2.Usage()
    _fill_usage(out, usage)
    return out


def _fill_usage(out: common_pb2.Usage, usage: Mapping[str, Any] | None) -> None:
    """`usage_to_proto` into `out`, which is marked present even when `usage` is empty."""
    out.SetInParent()
    if not usage:
        return
    out.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    out.completion_tokens = int(usage.get("completion_tokens") or 0)
    out.total_tokens = int(usage.get("total_tokens") or 0)
    for key, field in _USAGE_DETAILS:
        details = usage.get(key)
        if details:
            setattr(out, field, int(details.get(field) or 0))
    if not usage.keys() <= _USAGE_KEYS:
        out.extra_json = extras_text(usage, _USAGE_KEYS, None)


#: The usage counts `Usage` types at its top level; the rest travel in its `extra_json`.
_USAGE_KEYS = frozenset({"prompt_tokens", "completion_tokens", "total_tokens"})
#: Where OpenAI puts the counts `Usage` types besides those: (object, count).
_USAGE_DETAILS = (("prompt_tokens_details", "cached_tokens"),
                  ("completion_tokens_details", "reasoning_tokens"))


def usage_from_proto(usage: common_pb2.Usage) -> dict[str, Any]:
    """`Usage` as OpenAI's usage object."""
    out: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens,
                           "completion_tokens": usage.completion_tokens,
                           "total_tokens": usage.total_tokens}
    if usage.extra_json:
        add_extras(out, usage.extra_json)
    for key, field in _USAGE_DETAILS:
        value = getattr(usage, field)
        details = out.get(key)
        if isinstance(details, dict) and (value or field in details):
            out[key] = {**details, field: value}
        elif value:
            out[key] = {field: value}
    return out


def _logprobs_to_proto(logprobs: Any) -> pb.Logprobs | None:
    if not isinstance(logprobs, dict) or not (logprobs.get("content") or logprobs.get("refusal")):
        return None
    out = pb.Logprobs()
    for tokens, entries in ((logprobs.get("content"), out.content),
                            (logprobs.get("refusal"), out.refusal)):
        for tok in tokens or ():
            entry = entries.add(token=str(tok.get("token", "")),
                                logprob=float(tok.get("logprob", 0.0)),
                                bytes=bytes(tok.get("bytes") or []))
            for top in tok.get("top_logprobs") or []:
                entry.top_logprobs.add(token=str(top.get("token", "")),
                                       logprob=float(top.get("logprob", 0.0)),
                                       bytes=bytes(top.get("bytes") or []))
    return out


def _tokens_from_proto(tokens: Any) -> list[dict[str, Any]]:
    return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes),
             "top_logprobs": [{"token": p.token, "logprob": p.logprob, "bytes": list(p.bytes)}
                              for p in t.top_logprobs]}
            for t in tokens]


def _logprobs_from_proto(logprobs: pb.Logprobs) -> dict[str, Any]:
    """OpenAI's logprobs object: both lists, the one of a refusal null unless it refused
    (and that of the content null when only a refusal has tokens)."""
    refusal = logprobs.refusal
    return {"content": _tokens_from_proto(logprobs.content)
            if logprobs.content or not refusal else None,
            "refusal": _tokens_from_proto(refusal) if refusal else None}


_ASSISTANT: Mapping[str, Any] = {"role": "assistant"}


def response_to_proto(body: Mapping[str, Any]) -> pb.CompletionResponse:
    """An OpenAI `chat.completion` object as a `CompletionResponse` (routing left empty)."""
    out = pb.CompletionResponse(
        id=str(body.get("id", "")), model=str(body.get("model", "")),
        created=int(body.get("created") or 0),
        system_fingerprint=str(body.get("system_fingerprint") or ""))
    _fill_usage(out.usage, body.get("usage"))
    for i, choice in enumerate(body.get("choices") or []):
        message = choice.get("message") or _ASSISTANT
        if "role" not in message:
            message = {**message, "role": "assistant"}
        entry = out.choices.add(index=int(choice.get("index", i)),
                                finish_reason=FINISH_REASONS.get(  # type: ignore[arg-type]
                                    choice.get("finish_reason") or "", 0))
        _fill_message(entry.message, message, f"choices[{i}].message", upstream=True)
        logprobs = _logprobs_to_proto(choice.get("logprobs"))
        if logprobs is not None:
            entry.logprobs.CopyFrom(logprobs)
    if not body.keys() <= _RESPONSE_KEYS:
        out.extra_json = extras_text(body, _RESPONSE_KEYS, None)
    return out


#: The fields of a `chat.completion` (and of a chunk) the protos type; the rest travel in
#: their `extra_json`.
_RESPONSE_KEYS = frozenset({"id", "object", "created", "model", "choices", "usage",
                            "system_fingerprint"})
_CHUNK_KEYS = frozenset({"id", "object", "created", "model", "choices", "usage"})


def response_from_proto(resp: pb.CompletionResponse) -> dict[str, Any]:
    """A `CompletionResponse` as OpenAI's `chat.completion` object."""
    choices = []
    for c in resp.choices:
        message = message_from_proto(c.message)
        message.setdefault("content", None)
        message.setdefault("refusal", None)  # OpenAI's schema requires it; null when none
        choice: dict[str, Any] = {"index": c.index, "message": message,
                                  "finish_reason": _FINISH_NAMES.get(c.finish_reason),
                                  "logprobs": None}
        if c.HasField("logprobs"):
            choice["logprobs"] = _logprobs_from_proto(c.logprobs)
        choices.append(choice)
    out: dict[str, Any] = {"id": resp.id, "object": "chat.completion", "created": resp.created,
                           "model": resp.model, "choices": choices,
                           "usage": usage_from_proto(resp.usage)}
    if resp.system_fingerprint:
        out["system_fingerprint"] = resp.system_fingerprint
    if resp.extra_json:
        add_extras(out, resp.extra_json)
    return out


def chunk_to_proto(chunk: Mapping[str, Any]) -> pb.CompletionChunk:
    """An OpenAI `chat.completion.chunk` as a `CompletionChunk`."""
    out = pb.CompletionChunk(id=str(chunk.get("id", "")), model=str(chunk.get("model", "")),
                             created=int(chunk.get("created") or 0))
    for i, choice in enumerate(chunk.get("choices") or []):
        delta = choice.get("delta") or {}
        entry = out.choices.add(index=int(choice.get("index", i)),
                                finish_reason=FINISH_REASONS.get(  # type: ignore[arg-type]
                                    choice.get("finish_reason") or "", 0))
        d = entry.delta  # filled in place, present even when empty
        d.SetInParent()
        role = delta.get("role")
        if role:
            d.role = ROLES.get(role, 0)  # type: ignore[assignment]
        for key in ("content", "refusal", "reasoning_content"):
            value = delta.get(key)
            if value:
                setattr(d, key, value)
        for j, call in enumerate(delta.get("tool_calls") or []):
            fn = call.get("function") or {}
            d.tool_calls.add(index=int(call.get("index", j)), id=call.get("id") or "",
                             name=fn.get("name") or "", arguments=fn.get("arguments") or "")
        logprobs = _logprobs_to_proto(choice.get("logprobs"))
        if logprobs is not None:
            entry.logprobs.CopyFrom(logprobs)
    if not chunk.keys() <= _CHUNK_KEYS:
        out.extra_json = extras_text(chunk, _CHUNK_KEYS, None)
    return out


def chunk_from_proto(chunk: pb.CompletionChunk) -> dict[str, Any]:
    """A `CompletionChunk` as OpenAI's `chat.completion.chunk`."""
    choices = []
    for c in chunk.choices:
        delta: dict[str, Any] = {}
        if c.delta.role:
            delta["role"] = _ROLE_NAMES[c.delta.role]
        if c.delta.content:
            delta["content"] = c.delta.content
        if c.delta.refusal:
            delta["refusal"] = c.delta.refusal
        if c.delta.reasoning_content:
            delta["reasoning_content"] = c.delta.reasoning_content
        if c.delta.tool_calls:
            calls = []
            for t in c.delta.tool_calls:
                call: dict[str, Any] = {"index": t.index, "function": {"arguments": t.arguments}}
                if t.id:
                    call["id"] = t.id
                    call["type"] = "function"
                if t.name:
                    call["function"]["name"] = t.name
                calls.append(call)
            delta["tool_calls"] = calls
        entry: dict[str, Any] = {"index": c.index, "delta": delta,
                                 "finish_reason": _FINISH_NAMES.get(c.finish_reason)}
        if c.HasField("logprobs"):
            entry["logprobs"] = _logprobs_from_proto(c.logprobs)
        choices.append(entry)
    out = {"id": chunk.id, "object": "chat.completion.chunk", "created": chunk.created,
           "model": chunk.model, "choices": choices}
    if chunk.extra_json:
        add_extras(out, chunk.extra_json)
    return out


def _ms(duration: Any) -> float:
    return float(duration.seconds * 1000 + duration.nanos / 1e6)


def routing_from_proto(r: pb.Routing) -> dict[str, Any]:
    """A `Routing` record as the JSON the HTTP door returns under `scillm.routing`
    (durations in milliseconds; `retry_stats` only when the provider reported them)."""
    out: dict[str, Any] = {
        "deployment": r.deployment, "provider": r.provider, "fallback_used": r.fallback_used,
        "fallback_model": r.fallback_model, "attempts": r.attempts,
        "total_sleep_ms": _ms(r.total_sleep),
        "last_retry_after_ms": _ms(r.last_retry_after) if r.HasField("last_retry_after")
        else None,
        "strategy": r.strategy, "cache_hit": r.cache_hit}
    if r.HasField("retry_stats"):
        s = r.retry_stats
        out["retry_stats"] = {
            "attempts": s.attempts, "failures": s.failures,
            "total_sleep_ms": _ms(s.total_sleep), "final_status": s.final_status,
            "first_failure_status": s.first_failure_status
            if s.HasField("first_failure_status") else None,
            "statuses": list(s.statuses)}
    return out
