"""Translation between OpenAI's chat-completions JSON and the CompletionService protos.

One module for both directions and both doors: the HTTP shim turns OpenAI JSON into a
`CompletionRequest` and the response back into JSON; the Completion servicer turns the
request into the OpenAI-shaped dict its providers speak and their answer into protos.

Everything that is not in the proto is refused here with `InvalidRequestError`
(a bad field in a caller's JSON), so that no layer invents a field the contract lacks.
Unknown top-level request keys travel in `extra_body` to the provider unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2

from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2 as pb

from .errors import InvalidRequestError
from .structs import whole_numbers

__all__ = [
    "FINISH_REASONS",
    "ROLES",
    "chunk_from_proto",
    "chunk_to_proto",
    "request_from_proto",
    "request_to_proto",
    "response_from_proto",
    "response_to_proto",
    "routing_from_proto",
    "usage_from_proto",
    "usage_to_proto",
]

ROLES: dict[str, int] = {
    "system": pb.ROLE_SYSTEM,
    "developer": pb.ROLE_DEVELOPER,
    "user": pb.ROLE_USER,
    "assistant": pb.ROLE_ASSISTANT,
    "tool": pb.ROLE_TOOL,
}
_ROLE_NAMES = {v: k for k, v in ROLES.items()}

FINISH_REASONS: dict[str, int] = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "function_call": pb.FINISH_REASON_TOOL_CALLS,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
}
_FINISH_NAMES = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
    pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
}
_TOOL_CHOICE = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}
_TOOL_CHOICE_NAMES = {v: k for k, v in _TOOL_CHOICE.items()}
_FORMATS = {
    "text": pb.RESPONSE_FORMAT_TYPE_TEXT,
    "json_object": pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
    "json_schema": pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
}
_FORMAT_NAMES = {v: k for k, v in _FORMATS.items()}

# Request keys handled explicitly; anything else goes to extra_body.
_OPTIONAL_NUMBERS = {
    "n": int,
    "seed": int,
    "temperature": float,
    "top_p": float,
    "max_completion_tokens": int,
    "max_tokens": int,
    "top_logprobs": int,
    "presence_penalty": float,
    "frequency_penalty": float,
}
#: Integer fields wider than int32.
_INT64 = {"seed"}
_INT_BOUNDS = {32: 2**31, 64: 2**63}
#: The `scillm` routing options (and `cache` keys) the proto carries; others are refused.
_SCILLM_KEYS = frozenset({"fallbacks", "timeout_s", "num_retries", "deterministic", "cache",
                          "session_id", "track"})
_CACHE_KEYS = frozenset({"bypass", "no_store", "ttl_s", "namespace", "max_age_s", "enabled"})
#: LiteLLM's per-request cache controls (the top-level `cache` object), each a CacheOptions
#: field: no-cache → bypass, no-store → no_store, ttl, s-maxage → max_age, namespace,
#: use-cache → enabled (as is the top-level `caching` flag).
_LITELLM_CACHE_KEYS = frozenset({"no-cache", "no-store", "ttl", "s-maxage", "s-max-age",
                                 "namespace", "use-cache"})
#: google.protobuf.Duration's range, in seconds.
_MAX_DURATION_S = 315_576_000_000
_HANDLED = {
    "model", "messages", "tools", "tool_choice", "response_format", "stop", "logprobs",
    "reasoning_effort", "user", "metadata", "parallel_tool_calls", "stream",
    "stream_options", "scillm", "cache", "caching", *_OPTIONAL_NUMBERS,
}


# --------------------------------------------------------------------------- helpers


def _check_json(value: Any, param: str) -> None:
    """Refuse what a `Struct` cannot hold: NaN, infinities, integers beyond a double."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequestError(f"'{param}' holds a non-finite number", param=param)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            raise InvalidRequestError(f"'{param}' holds a number too large for a double",
                                      param=param) from None
    if isinstance(value, Mapping):
        for item in value.values():
            _check_json(item, param)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json(item, param)


def _struct(value: Any, param: str) -> struct_pb2.Struct:
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"'{param}' must be a JSON object", param=param)
    _check_json(value, param)
    out = struct_pb2.Struct()
    try:
        out.update(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequestError(f"'{param}' is not valid JSON: {exc}", param=param) from exc
    return out


def _from_struct(value: struct_pb2.Struct) -> dict[str, Any]:
    out: dict[str, Any] = whole_numbers(json_format.MessageToDict(value))
    return out


def _expect(value: Any, kind: type | tuple[type, ...], param: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidRequestError(f"'{param}' must be of type {names}", param=param)
    return value


def _number(value: Any, kind: type, param: str, *, bits: int = 32) -> Any:
    """A finite number; an integer (`kind` int) must fit a signed `bits`-bit field."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"'{param}' must be a number", param=param)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequestError(f"'{param}' must be a finite number", param=param)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidRequestError(f"'{param}' must be an integer", param=param)
        number = int(value)
        if not -_INT_BOUNDS[bits] <= number < _INT_BOUNDS[bits]:
            raise InvalidRequestError(f"'{param}' is out of range", param=param)
        return number
    try:
        return float(value)
    except OverflowError:
        raise InvalidRequestError(f"'{param}' is out of range", param=param) from None


def _seconds(value: Any, param: str) -> int:
    """Seconds (a finite number within a Duration's range) as whole milliseconds."""
    seconds = _number(value, float, param)
    if abs(seconds) > _MAX_DURATION_S:
        raise InvalidRequestError(f"'{param}' is out of range", param=param)
    return int(seconds * 1000)


# --------------------------------------------------------------------------- request


def _content_to_proto(content: Any, param: str) -> list[pb.ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [pb.ContentPart(text=content)]
    _expect(content, list, param)
    parts: list[pb.ContentPart] = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        _expect(part, dict, where)
        kind = part.get("type")
        if kind == "text":
            parts.append(pb.ContentPart(text=_expect(part.get("text"), str, f"{where}.text")))
        elif kind == "image_url":
            image = part.get("image_url")
            if isinstance(image, str):
                image = {"url": image}
            _expect(image, dict, f"{where}.image_url")
            parts.append(pb.ContentPart(image_url=pb.ImageUrl(
                url=str(image.get("url", "")), detail=str(image.get("detail", "")))))
        elif kind == "input_audio":
            audio = _expect(part.get("input_audio"), dict, f"{where}.input_audio")
            parts.append(pb.ContentPart(input_audio=pb.InputAudio(
                data=str(audio.get("data", "")), format=str(audio.get("format", "")))))
        elif kind == "file":
            file = _expect(part.get("file"), dict, f"{where}.file")
            parts.append(pb.ContentPart(file=pb.FileInput(
                file_id=str(file.get("file_id", "")), file_data=str(file.get("file_data", "")),
                filename=str(file.get("filename", "")))))
        elif kind == "refusal":
            parts.append(pb.ContentPart(refusal=str(part.get("refusal", ""))))
        else:
            raise InvalidRequestError(f"unknown content part type {kind!r}", param=f"{where}.type")
    return parts


def _tool_calls_to_proto(calls: Any, param: str) -> list[pb.ToolCall]:
    _expect(calls, list, param)
    out = []
    for i, call in enumerate(calls):
        _expect(call, dict, f"{param}[{i}]")
        fn = _expect(call.get("function", {}), dict, f"{param}[{i}].function")
        args = fn.get("arguments", "")
        out.append(pb.ToolCall(id=str(call.get("id", "")), function=pb.FunctionCall(
            name=str(fn.get("name", "")),
            arguments=args if isinstance(args, str) else json_dumps(args))))
    return out


def message_to_proto(message: Any, param: str = "messages[0]") -> pb.Message:
    """One OpenAI message dict as a `Message`."""
    out = pb.Message()
    _fill_message(out, message, param)
    return out


def _fill_message(out: pb.Message, message: Any, param: str) -> None:
    """`message_to_proto` into `out` (a message in place costs no copy into its parent)."""
    _expect(message, dict, param)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequestError(
            f"'{param}.role' must be one of {sorted(ROLES)}, got {role!r}", param=f"{param}.role")
    out.role = ROLES[role]  # type: ignore[assignment]
    content = message.get("content")
    if isinstance(content, str):
        out.content.add(text=content)
    elif content is not None:
        out.content.extend(_content_to_proto(content, f"{param}.content"))
    for key in ("name", "tool_call_id", "reasoning_content"):
        value = message.get(key)
        if value:
            setattr(out, key, str(value))
    if message.get("tool_calls"):
        out.tool_calls.extend(_tool_calls_to_proto(message["tool_calls"], f"{param}.tool_calls"))
    if message.get("refusal"):
        out.content.add(refusal=str(message["refusal"]))


def _routing_to_proto(options: Any) -> pb.RoutingOptions:
    _expect(options, dict, "scillm")
    unknown = set(options) - _SCILLM_KEYS
    if unknown:
        raise InvalidRequestError(f"unknown scillm option(s): {', '.join(sorted(unknown))}",
                                  param="scillm")
    out = pb.RoutingOptions(deterministic=bool(options.get("deterministic", False)))
    fallbacks = options.get("fallbacks") or []
    out.fallbacks.extend(_expect(f, str, "scillm.fallbacks")
                         for f in _expect(fallbacks, list, "scillm.fallbacks"))
    if options.get("timeout_s") is not None:
        out.timeout.FromMilliseconds(_seconds(options["timeout_s"], "scillm.timeout_s"))
    if options.get("num_retries") is not None:
        out.num_retries = _number(options["num_retries"], int, "scillm.num_retries")
    cache = options.get("cache")
    if cache is not None:
        _expect(cache, dict, "scillm.cache")
        if set(cache) - _CACHE_KEYS:
            raise InvalidRequestError(f"scillm.cache takes {', '.join(sorted(_CACHE_KEYS))}",
                                      param="scillm.cache")
        out.cache.bypass = bool(cache.get("bypass", False))
        out.cache.no_store = bool(cache.get("no_store", False))
        out.cache.namespace = str(cache.get("namespace", ""))
        if cache.get("ttl_s") is not None:
            out.cache.ttl.FromMilliseconds(_seconds(cache["ttl_s"], "scillm.cache.ttl_s"))
        if cache.get("max_age_s") is not None:
            out.cache.max_age.FromMilliseconds(
                _seconds(cache["max_age_s"], "scillm.cache.max_age_s"))
        if cache.get("enabled") is not None:
            out.cache.enabled = bool(cache["enabled"])
    return out


def _litellm_cache_to_proto(body: Mapping[str, Any], out: pb.CacheOptions) -> None:
    """LiteLLM's top-level `cache` controls and `caching` flag into `out`."""
    out.SetInParent()
    cache = body.get("cache")
    if cache is not None:
        _expect(cache, dict, "cache")
        unknown = set(cache) - _LITELLM_CACHE_KEYS
        if unknown:
            raise InvalidRequestError(
                f"unknown cache control(s) {', '.join(sorted(map(str, unknown)))}; cache takes "
                f"{', '.join(sorted(_LITELLM_CACHE_KEYS))}", param="cache")
        if cache.get("no-cache") is not None:
            out.bypass = _expect(cache["no-cache"], bool, "cache.no-cache")
        if cache.get("no-store") is not None:
            out.no_store = _expect(cache["no-store"], bool, "cache.no-store")
        if cache.get("namespace") is not None:
            out.namespace = _expect(cache["namespace"], str, "cache.namespace")
        if cache.get("use-cache") is not None:
            out.enabled = _expect(cache["use-cache"], bool, "cache.use-cache")
        if cache.get("ttl") is not None:
            out.ttl.FromMilliseconds(_duration(cache["ttl"], "cache.ttl", positive=True))
        age = "s-maxage" if cache.get("s-maxage") is not None else "s-max-age"
        if cache.get(age) is not None:
            out.max_age.FromMilliseconds(_duration(cache[age], f"cache.{age}", positive=False))
    if body.get("caching") is not None:
        out.enabled = _expect(body["caching"], bool, "caching")


def _duration(value: Any, param: str, *, positive: bool) -> int:
    ms = _seconds(value, param)
    if ms < 0 or (positive and ms == 0):
        kind = "positive" if positive else "non-negative"
        raise InvalidRequestError(f"'{param}' must be a {kind} number of seconds", param=param)
    return ms


def request_to_proto(body: Mapping[str, Any]) -> pb.CompletionRequest:
    """An OpenAI chat-completions request body as a `CompletionRequest`.

    Raises InvalidRequestError naming the offending parameter.
    """
    try:
        return _request_to_proto(body)
    except UnicodeEncodeError:
        # JSON may escape a lone surrogate ("\ud800"); proto strings must be valid UTF-8.
        raise InvalidRequestError("the request holds a string that is not valid Unicode "
                                  "(a lone surrogate)") from None


def _request_to_proto(body: Mapping[str, Any]) -> pb.CompletionRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required and must be a non-empty string",
                                  param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array", param="messages")
    req = pb.CompletionRequest(model=model)
    for i, m in enumerate(messages):
        _fill_message(req.messages.add(), m, f"messages[{i}]")
    for key, kind in _OPTIONAL_NUMBERS.items():
        value = body.get(key)
        if value is not None:
            setattr(req, key, _number(value, kind, key, bits=64 if key in _INT64 else 32))
    if body.get("logprobs") is not None:
        req.logprobs = bool(_expect(body["logprobs"], bool, "logprobs"))
    if body.get("parallel_tool_calls") is not None:
        req.parallel_tool_calls = bool(body["parallel_tool_calls"])
    stop = body.get("stop")
    if stop is not None:
        req.stop.extend([stop] if isinstance(stop, str) else
                        [_expect(s, str, "stop") for s in _expect(stop, list, "stop")])
    for i, tool in enumerate(_expect(body.get("tools") or [], list, "tools")):
        _expect(tool, dict, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            raise InvalidRequestError("only function tools are supported", param=f"tools[{i}].type")
        fn = _expect(tool.get("function"), dict, f"tools[{i}].function")
        definition = pb.FunctionDefinition(
            name=_expect(fn.get("name"), str, f"tools[{i}].function.name"),
            description=str(fn.get("description") or ""))
        if fn.get("parameters") is not None:
            definition.parameters.CopyFrom(_struct(fn["parameters"],
                                                   f"tools[{i}].function.parameters"))
        if fn.get("strict") is not None:
            definition.strict = bool(fn["strict"])
        req.tools.append(pb.Tool(function=definition))
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE:
            raise InvalidRequestError(f"unknown tool_choice {choice!r}", param="tool_choice")
        req.tool_choice.mode = _TOOL_CHOICE[choice]  # type: ignore[assignment]
    elif isinstance(choice, dict):
        fn = _expect(choice.get("function"), dict, "tool_choice.function")
        req.tool_choice.function_name = _expect(fn.get("name"), str, "tool_choice.function.name")
    elif choice is not None:
        raise InvalidRequestError("'tool_choice' must be a string or an object",
                                  param="tool_choice")
    fmt = body.get("response_format")
    if fmt is not None:
        _expect(fmt, dict, "response_format")
        if not isinstance(fmt.get("type"), str) or fmt["type"] not in _FORMATS:
            raise InvalidRequestError(f"unknown response_format type {fmt.get('type')!r}",
                                      param="response_format.type")
        req.response_format.type = _FORMATS[fmt["type"]]  # type: ignore[assignment]
        if fmt["type"] == "json_schema":
            js = _expect(fmt.get("json_schema"), dict, "response_format.json_schema")
            req.response_format.json_schema.name = str(js.get("name", ""))
            req.response_format.json_schema.description = str(js.get("description", ""))
            if js.get("schema") is not None:
                req.response_format.json_schema.schema.CopyFrom(
                    _struct(js["schema"], "response_format.json_schema.schema"))
            if js.get("strict") is not None:
                req.response_format.json_schema.strict = bool(js["strict"])
    if body.get("reasoning_effort") is not None:
        req.reasoning_effort = _expect(body["reasoning_effort"], str, "reasoning_effort")
    if body.get("user") is not None:
        req.user = _expect(body["user"], str, "user")
    if body.get("metadata") is not None:
        for k, v in _expect(body["metadata"], dict, "metadata").items():
            req.metadata[str(k)] = str(v)
    if body.get("scillm") is not None:
        req.routing.CopyFrom(_routing_to_proto(body["scillm"]))
        ctx = body["scillm"]
        req.context.session_id = str(ctx.get("session_id", ""))
        req.context.track = str(ctx.get("track", ""))
    if body.get("cache") is not None or body.get("caching") is not None:
        _litellm_cache_to_proto(body, req.routing.cache)
    extra = {k: v for k, v in body.items() if k not in _HANDLED}
    if extra:
        req.extra_body.CopyFrom(_struct(extra, "extra_body"))
    return req


def _content_from_proto(parts: Sequence[pb.ContentPart]) -> Any:
    if not parts:
        return None
    if len(parts) == 1 and parts[0].WhichOneof("part") == "text":
        return parts[0].text
    out: list[dict[str, Any]] = []
    for part in parts:
        kind = part.WhichOneof("part")
        if kind == "text":
            out.append({"type": "text", "text": part.text})
        elif kind == "image_url":
            image: dict[str, Any] = {"url": part.image_url.url}
            if part.image_url.detail:
                image["detail"] = part.image_url.detail
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_audio":
            out.append({"type": "input_audio", "input_audio": {
                "data": part.input_audio.data, "format": part.input_audio.format}})
        elif kind == "file":
            file = {k: v for k, v in (("file_id", part.file.file_id),
                                      ("file_data", part.file.file_data),
                                      ("filename", part.file.filename)) if v}
            out.append({"type": "file", "file": file})
        elif kind == "refusal":
            out.append({"type": "refusal", "refusal": part.refusal})
    return out


def message_from_proto(message: pb.Message) -> dict[str, Any]:
    """A `Message` as an OpenAI message dict."""
    parts: Sequence[pb.ContentPart] = message.content
    refusal = [p.refusal for p in parts if p.WhichOneof("part") == "refusal"] \
        if message.role == pb.ROLE_ASSISTANT else []
    if refusal:
        parts = [p for p in parts if p.WhichOneof("part") != "refusal"]
    out: dict[str, Any] = {"role": _ROLE_NAMES.get(message.role, "user"),
                           "content": _content_from_proto(parts)}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.reasoning_content:
        out["reasoning_content"] = message.reasoning_content
    if "".join(refusal):  # an empty one is dropped
        out["refusal"] = "".join(refusal)
    return out


def request_from_proto(req: pb.CompletionRequest) -> dict[str, Any]:
    """A `CompletionRequest` as an OpenAI request dict (routing options under `scillm`)."""
    body: dict[str, Any] = {"model": req.model,
                            "messages": [message_from_proto(m) for m in req.messages]}
    for key in _OPTIONAL_NUMBERS:
        if req.HasField(key):  # type: ignore[arg-type]
            body[key] = getattr(req, key)
    if req.HasField("logprobs"):
        body["logprobs"] = req.logprobs
    if req.HasField("parallel_tool_calls"):
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.stop:
        body["stop"] = list(req.stop)
    if req.tools:
        tools = []
        for tool in req.tools:
            fn: dict[str, Any] = {"name": tool.function.name}
            if tool.function.description:
                fn["description"] = tool.function.description
            if tool.function.HasField("parameters"):
                fn["parameters"] = _from_struct(tool.function.parameters)
            if tool.function.HasField("strict"):
                fn["strict"] = tool.function.strict
            tools.append({"type": "function", "function": fn})
        body["tools"] = tools
    which = req.tool_choice.WhichOneof("choice")
    if which == "mode" and req.tool_choice.mode in _TOOL_CHOICE_NAMES:
        body["tool_choice"] = _TOOL_CHOICE_NAMES[req.tool_choice.mode]
    elif which == "function_name":
        body["tool_choice"] = {"type": "function",
                               "function": {"name": req.tool_choice.function_name}}
    if req.response_format.type in _FORMAT_NAMES:
        fmt: dict[str, Any] = {"type": _FORMAT_NAMES[req.response_format.type]}
        if req.response_format.type == pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
            js = req.response_format.json_schema
            schema: dict[str, Any] = {"name": js.name or "response"}
            if js.description:
                schema["description"] = js.description
            if js.HasField("schema"):
                schema["schema"] = _from_struct(js.schema)
            if js.HasField("strict"):
                schema["strict"] = js.strict
            fmt["json_schema"] = schema
        body["response_format"] = fmt
    if req.reasoning_effort:
        body["reasoning_effort"] = req.reasoning_effort
    if req.user:
        body["user"] = req.user
    if req.metadata:
        body["metadata"] = dict(req.metadata)
    if req.HasField("extra_body"):
        for key, value in _from_struct(req.extra_body).items():
            body.setdefault(key, value)
    if req.HasField("routing"):
        r = req.routing
        routing: dict[str, Any] = {}
        if r.fallbacks:
            routing["fallbacks"] = list(r.fallbacks)
        if r.HasField("timeout"):
            routing["timeout_s"] = r.timeout.ToMilliseconds() / 1000
        if r.HasField("num_retries"):
            routing["num_retries"] = r.num_retries
        if r.deterministic:
            routing["deterministic"] = True
        if r.HasField("cache"):
            cache: dict[str, Any] = {"bypass": r.cache.bypass, "no_store": r.cache.no_store}
            if r.cache.namespace:
                cache["namespace"] = r.cache.namespace
            if r.cache.HasField("ttl"):
                cache["ttl_s"] = r.cache.ttl.ToMilliseconds() / 1000
            if r.cache.HasField("max_age"):
                cache["max_age_s"] = r.cache.max_age.ToMilliseconds() / 1000
            if r.cache.HasField("enabled"):
                cache["enabled"] = r.cache.enabled
            routing["cache"] = cache
        body["scillm"] = routing
    return body


# --------------------------------------------------------------------------- responses


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
    prompt_details = usage.get("prompt_tokens_details")
    if prompt_details:
        out.cached_tokens = int(prompt_details.get("cached_tokens") or 0)
    completion_details = usage.get("completion_tokens_details")
    if completion_details:
        out.reasoning_tokens = int(completion_details.get("reasoning_tokens") or 0)


def usage_from_proto(usage: common_pb2.Usage) -> dict[str, Any]:
    """`Usage` as OpenAI's usage object."""
    out: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens,
                           "completion_tokens": usage.completion_tokens,
                           "total_tokens": usage.total_tokens}
    if usage.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def _logprobs_to_proto(logprobs: Any) -> pb.Logprobs | None:
    if not isinstance(logprobs, dict) or not logprobs.get("content"):
        return None
    out = pb.Logprobs()
    for tok in logprobs["content"]:
        entry = out.content.add(token=str(tok.get("token", "")),
                                logprob=float(tok.get("logprob", 0.0)),
                                bytes=bytes(tok.get("bytes") or []))
        for top in tok.get("top_logprobs") or []:
            entry.top_logprobs.add(token=str(top.get("token", "")),
                                   logprob=float(top.get("logprob", 0.0)),
                                   bytes=bytes(top.get("bytes") or []))
    return out


def _logprobs_from_proto(logprobs: pb.Logprobs) -> dict[str, Any]:
    return {"content": [
        {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes),
         "top_logprobs": [{"token": p.token, "logprob": p.logprob, "bytes": list(p.bytes)}
                          for p in t.top_logprobs]}
        for t in logprobs.content]}


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
        _fill_message(entry.message, message, f"choices[{i}].message")
        logprobs = _logprobs_to_proto(choice.get("logprobs"))
        if logprobs is not None:
            entry.logprobs.CopyFrom(logprobs)
    return out


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
    return {"id": chunk.id, "object": "chat.completion.chunk", "created": chunk.created,
            "model": chunk.model, "choices": choices}


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


def json_dumps(value: Any) -> str:
    """Compact JSON, the one encoder every wire format here uses."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
