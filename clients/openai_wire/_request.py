"""A chat-completions request, OpenAI JSON <-> `CompletionRequest` (with SciLLM's
routing options and LiteLLM's cache controls); unknown top-level keys go to `extra_body`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scillm.completion.v1 import completion_pb2 as pb

from ..errors import InvalidRequestError
from ._messages import _fill_message, message_from_proto
from ._values import (
    _CACHE_KEYS,
    _FORMAT_NAMES,
    _FORMATS,
    _HANDLED,
    _INT64,
    _LITELLM_CACHE_KEYS,
    _OPTIONAL_NUMBERS,
    _SCILLM_KEYS,
    _TOOL_CHOICE,
    _TOOL_CHOICE_NAMES,
    _duration,
    _expect,
    _number,
    _seconds,
    json_from_text,
    struct_from_json,
    struct_to_json,
    text_from_json,
)


def _routing_to_proto(options: Any) -> pb.RoutingOptions:
    _expect(options, dict, "scillm")
    unknown = set(options) - _SCILLM_KEYS
    if unknown:
        raise InvalidRequestError(f"unknown scillm option(s): {', '.join(sorted(unknown))}",
                                  param="scillm")
    out = pb.RoutingOptions(deterministic=_flag(options, "deterministic", "scillm"))
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
        out.cache.bypass = _flag(cache, "bypass", "scillm.cache")
        out.cache.no_store = _flag(cache, "no_store", "scillm.cache")
        if cache.get("namespace") is not None:
            out.cache.namespace = _expect(cache["namespace"], str, "scillm.cache.namespace")
        if cache.get("ttl_s") is not None:
            out.cache.ttl.FromMilliseconds(_seconds(cache["ttl_s"], "scillm.cache.ttl_s"))
        if cache.get("max_age_s") is not None:
            out.cache.max_age.FromMilliseconds(
                _seconds(cache["max_age_s"], "scillm.cache.max_age_s"))
        if cache.get("enabled") is not None:
            out.cache.enabled = _expect(cache["enabled"], bool, "scillm.cache.enabled")
    return out


def _text(options: Mapping[str, Any], key: str, where: str) -> str:
    """`options[key]` as a JSON string, "" when absent or null (never the text "None")."""
    value = options.get(key)
    return "" if value is None else str(_expect(value, str, f"{where}.{key}"))


def stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """`stream` and `stream_options.include_usage` of a chat-completions body, each a JSON
    boolean or absent (false); `stream_options` an object or absent. Raises
    InvalidRequestError naming the parameter: "stream": "yes" is refused, as OpenAI does,
    rather than answered in one piece."""
    stream = _flag(body, "stream", "")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    return stream, _flag(_expect(options, dict, "stream_options"), "include_usage",
                         "stream_options")


def _flag(options: Mapping[str, Any], key: str, where: str) -> bool:
    """`options[key]` as a JSON boolean, False when absent or null: a string such as
    "false" is refused rather than read as true."""
    value = options.get(key)
    param = f"{where}.{key}" if where else key
    return False if value is None else bool(_expect(value, bool, param))


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
        req.parallel_tool_calls = _expect(body["parallel_tool_calls"], bool,
                                          "parallel_tool_calls")
    stop = body.get("stop")
    if stop is not None:
        req.stop.extend([stop] if isinstance(stop, str) else
                        [_expect(s, str, "stop") for s in _expect(stop, list, "stop")])
    for i, tool in enumerate(_expect(body.get("tools") or [], list, "tools")):
        _expect(tool, dict, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            raise InvalidRequestError(f"tool type {tool.get('type')!r} is not supported: only "
                                      "function tools are", param=f"tools[{i}].type")
        fn = _expect(tool.get("function"), dict, f"tools[{i}].function")
        definition = pb.FunctionDefinition(
            name=_expect(fn.get("name"), str, f"tools[{i}].function.name"),
            description=str(fn.get("description") or ""))
        if fn.get("parameters") is not None:
            definition.parameters_json = text_from_json(fn["parameters"],
                                                        f"tools[{i}].function.parameters")
        if fn.get("strict") is not None:
            definition.strict = _expect(fn["strict"], bool, f"tools[{i}].function.strict")
        req.tools.append(pb.Tool(function=definition))
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE:
            raise InvalidRequestError(f"unknown tool_choice {choice!r}", param="tool_choice")
        req.tool_choice.mode = _TOOL_CHOICE[choice]  # type: ignore[assignment]
    elif isinstance(choice, dict):
        if choice.get("type", "function") != "function":  # allowed_tools, custom
            raise InvalidRequestError(f"tool_choice type {choice.get('type')!r} is not "
                                      "supported: name a function ({\"type\": \"function\", "
                                      "\"function\": {\"name\": ...}}) or a mode",
                                      param="tool_choice.type")
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
            req.response_format.json_schema.name = _text(js, "name",
                                                         "response_format.json_schema")
            req.response_format.json_schema.description = _text(
                js, "description", "response_format.json_schema")
            if js.get("schema") is not None:
                req.response_format.json_schema.schema_json = text_from_json(
                    js["schema"], "response_format.json_schema.schema")
            if js.get("strict") is not None:
                req.response_format.json_schema.strict = _expect(
                    js["strict"], bool, "response_format.json_schema.strict")
    if body.get("reasoning_effort") is not None:
        req.reasoning_effort = _expect(body["reasoning_effort"], str, "reasoning_effort")
    if body.get("user") is not None:
        req.user = _expect(body["user"], str, "user")
    if body.get("metadata") is not None:
        for k, v in _expect(body["metadata"], dict, "metadata").items():
            # OpenAI's metadata values are strings: 2 became "2", null the text "None".
            req.metadata[str(k)] = _expect(v, str, f"metadata.{k}")
    if body.get("scillm") is not None:
        req.routing.CopyFrom(_routing_to_proto(body["scillm"]))
        ctx = body["scillm"]
        req.context.session_id = _text(ctx, "session_id", "scillm")
        req.context.track = _text(ctx, "track", "scillm")
    if body.get("cache") is not None or body.get("caching") is not None:
        _litellm_cache_to_proto(body, req.routing.cache)
    extra = {k: v for k, v in body.items() if k not in _HANDLED}
    if extra:
        req.extra_body.CopyFrom(struct_from_json(extra, "extra_body"))
    return req


#: What `extra_body` may not carry, and why. `scillm` is the mesh's own routing options:
#: read from there, its fallbacks passed the key check, which reads `routing` (a key
#: limited to one model was answered by any model it named); a stream is its own RPC.
_NOT_EXTRA = {
    "scillm": "SciLLM's routing options go in `routing`, not in `extra_body.scillm`",
    "stream": "a stream is the CompletionStream call, not `extra_body.stream`",
    "stream_options": "usage at a stream's end is CompletionStreamRequest.include_usage, "
                      "not `extra_body.stream_options`",
    # How many answers, and how long: what a key's reservation is counted from, read from
    # the typed fields only (n in extra_body reached the upstream as n answers while the
    # key reserved one).
    "n": "the number of answers is the request's own `n`, not `extra_body.n`",
    "max_tokens": "an answer's length is the request's own `max_tokens`, not "
                  "`extra_body.max_tokens`",
    "max_completion_tokens": "an answer's length is the request's own "
                             "`max_completion_tokens`, not `extra_body.max_completion_tokens`",
}


def request_from_proto(req: pb.CompletionRequest) -> dict[str, Any]:
    """A `CompletionRequest` as an OpenAI request dict (routing options under `scillm`)."""
    body: dict[str, Any] = {"model": req.model,
                            "messages": [message_from_proto(m, f"messages[{i}]")
                                         for i, m in enumerate(req.messages)]}
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
        for i, tool in enumerate(req.tools):
            fn: dict[str, Any] = {"name": tool.function.name}
            if tool.function.description:
                fn["description"] = tool.function.description
            if tool.function.parameters_json:
                fn["parameters"] = json_from_text(tool.function.parameters_json,
                                                  f"tools[{i}].function.parameters_json")
            elif tool.function.HasField("parameters"):
                fn["parameters"] = struct_to_json(tool.function.parameters,
                                                  f"tools[{i}].function.parameters")
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
            if js.schema_json:
                schema["schema"] = json_from_text(js.schema_json,
                                                  "response_format.json_schema.schema_json")
            elif js.HasField("schema"):
                schema["schema"] = struct_to_json(js.schema, "response_format.json_schema.schema")
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
    options_from_proto(req, body)
    return body


def required_model(body: Mapping[str, Any]) -> str:
    """A request's `model`; InvalidRequestError unless it is a non-empty string."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required and must be a non-empty string",
                                  param="model")
    return model


def options_to_proto(req: Any, body: Mapping[str, Any], handled: frozenset[str]) -> None:
    """A request's `scillm` as `req`'s routing and run context, and its keys not `handled`
    as `req.extra_body` (an embedding's or a text completion's; chat's are inline)."""
    options = body.get("scillm")
    if options is not None:
        req.routing.CopyFrom(_routing_to_proto(options))
        req.context.session_id = _text(options, "session_id", "scillm")
        req.context.track = _text(options, "track", "scillm")
    extra = {k: v for k, v in body.items() if k not in handled}
    if extra:
        req.extra_body.CopyFrom(struct_from_json(extra, "extra_body"))


def options_from_proto(req: Any, body: dict[str, Any]) -> None:
    """`req.extra_body`'s keys into the engine's `body` (those of `_NOT_EXTRA` refused,
    naming them), then its routing options as `scillm`: a completion's, an embedding's, a
    text completion's."""
    if req.HasField("extra_body"):
        for key, value in struct_to_json(req.extra_body, "extra_body").items():
            if key in _NOT_EXTRA:
                raise InvalidRequestError(_NOT_EXTRA[key], param=f"extra_body.{key}")
            body.setdefault(key, value)
    if req.HasField("routing"):  # cache and deterministic too, for the engine to refuse
        body["scillm"] = routing_options_from_proto(req.routing)


def routing_options_from_proto(r: pb.RoutingOptions) -> dict[str, Any]:
    """`RoutingOptions` as the request's `scillm` object."""
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
    return routing
