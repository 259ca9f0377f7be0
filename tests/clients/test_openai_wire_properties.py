"""Hypothesis properties of the OpenAI JSON <-> protobuf translation (clients/openai_wire.py).

For every generated request, response and chunk, `*_from_proto(*_to_proto(x))` equals
`x` normalized. The normalizations (what the proto cannot or need not tell apart):

requests
- `stop` "s" -> ["s"]; an empty `stop`, `tools`, `metadata`, `tool_calls` list is dropped;
- handled keys set to null are dropped; `stream` and `stream_options` are dropped (the
  stream RPC carries them);
- numbers inside a Struct (`parameters`, `json_schema.schema`, extra keys) become floats;
  integer fields given as integral floats become ints;
- a tool gets `"type": "function"`; a named `tool_choice` gets `"type": "function"`;
- `json_schema.name` "" or missing -> "response"; empty `description` dropped;
- message `content`: [] -> null, a single text part -> its string, an image_url string
  -> {"url": ...}; `refusal` on a non-assistant message becomes a trailing refusal
  part; on an assistant message every refusal part is joined into `refusal` (dropped
  when that is empty);
- a tool call's object `arguments` is JSON-encoded; every tool call gets `"type"`;
- `scillm.timeout_s` / `cache.ttl_s` keep whole milliseconds; `deterministic: false`,
  empty `fallbacks` / `namespace` are dropped; `cache.bypass` / `no_store` always appear;
  `scillm.session_id` / `track` go to `CompletionRequest.context`, not back to the dict.

responses and chunks
- `finish_reason` "function_call" -> "tool_calls", an unknown one -> null;
- usage comes back as it went (its details whole, zeros included); empty logprobs and
  empty `system_fingerprint` are dropped, and logprobs' `content` is null when only a
  refusal has tokens (`refusal` null unless one has);
- a chunk's empty delta strings are dropped; a tool-call delta always has `arguments`.

Invalid input of any shape raises InvalidRequestError, never another exception.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scillm.clients import InvalidRequestError, openai_wire

settings.register_profile("wire", max_examples=150, deadline=None, derandomize=True,
                          database=None, suppress_health_check=[HealthCheck.too_slow])
PROPS = settings.get_profile("wire")

text = st.text(max_size=6)
word = st.text(min_size=1, max_size=6)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
int32 = st.integers(-(2**31), 2**31 - 1)
json_scalar = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite | text
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(text, inner, max_size=3), max_leaves=8)
json_object = st.dictionaries(text, json_value, max_size=4)


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


# --------------------------------------------------------------------------- strategies

content_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, text),
    st.builds(lambda u, d: {"type": "image_url", "image_url": {"url": u, **d}},
              text, _optional(detail=word)),
    st.builds(lambda u: {"type": "image_url", "image_url": u}, text),
    st.builds(lambda d, f: {"type": "input_audio", "input_audio": {"data": d, "format": f}},
              text, text),
    st.builds(lambda f: {"type": "file", "file": f},
              _optional(file_id=word, file_data=word, filename=word)),
    st.builds(lambda r: {"type": "refusal", "refusal": r}, text),
)
tool_call = st.builds(
    lambda i, n, a, typed: {"id": i, **({"type": "function"} if typed else {}),
                            "function": {"name": n, "arguments": a}},
    text, text, text | json_object, st.booleans())


@st.composite
def message(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(sorted(openai_wire.ROLES)))
    out: dict[str, Any] = {"role": role,
                           "content": draw(st.none() | text
                                           | st.lists(content_part, max_size=3))}
    out.update(draw(_optional(name=word, tool_call_id=word, reasoning_content=word,
                              refusal=word)))
    if role == "assistant":
        out.update(draw(_optional(tool_calls=st.lists(tool_call, min_size=1, max_size=2))))
    return out


tool = st.builds(
    lambda typed, name, fn: {**({"type": "function"} if typed else {}),
                             "function": {"name": name, **fn}},
    st.booleans(), text,
    _optional(description=word, parameters=json_object, strict=st.booleans()))
tool_choice = st.sampled_from(["auto", "none", "required"]) | st.builds(
    lambda name, typed: {**({"type": "function"} if typed else {}),
                         "function": {"name": name}}, text, st.booleans())
response_format = st.sampled_from([{"type": "text"}, {"type": "json_object"}]) | st.builds(
    lambda js: {"type": "json_schema", "json_schema": js},
    _optional(name=text, description=text, schema=json_object, strict=st.booleans()))
millis = st.integers(1, 10**9).map(lambda ms: ms / 1000)
scillm_options = _optional(
    fallbacks=st.lists(word, max_size=2), timeout_s=millis, num_retries=int32,
    deterministic=st.booleans(), session_id=text, track=text,
    cache=_optional(bypass=st.booleans(), no_store=st.booleans(), ttl_s=millis,
                    namespace=text, max_age_s=millis | st.just(0.0), enabled=st.booleans()))
_HANDLED = openai_wire._values._HANDLED
extra = st.dictionaries(text.filter(lambda k: k not in _HANDLED), json_value, max_size=2)


@st.composite
def request(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": draw(word),
                            "messages": draw(st.lists(message(), min_size=1, max_size=3))}
    body.update(draw(_optional(
        tools=st.lists(tool, max_size=2), tool_choice=tool_choice,
        response_format=response_format,
        n=int32 | int32.map(float), stop=text | st.lists(text, max_size=2),
        seed=st.integers(-(2**63), 2**63 - 1), temperature=finite | int32,
        top_p=finite, max_completion_tokens=int32, max_tokens=int32, logprobs=st.booleans(),
        top_logprobs=int32, reasoning_effort=text, user=text,
        metadata=st.dictionaries(text, text, max_size=2), presence_penalty=finite,
        frequency_penalty=finite, parallel_tool_calls=st.booleans(), stream=st.booleans(),
        stream_options=st.just({"include_usage": True}), scillm=scillm_options)))
    for key in draw(st.sets(st.sampled_from(["tools", "stop", "n", "user", "metadata"]))):
        body[key] = None
    body.update(draw(extra))
    return body


# --------------------------------------------------------------------------- normalization


def _floats(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_floats(v) for v in value]
    return {k: _floats(v) for k, v in value.items()}


def _norm_part(part: dict[str, Any]) -> dict[str, Any]:
    if part["type"] == "image_url" and isinstance(part["image_url"], str):
        return {"type": "image_url", "image_url": {"url": part["image_url"]}}
    return part


def norm_message(m: dict[str, Any]) -> dict[str, Any]:
    content = m.get("content")
    parts = ([{"type": "text", "text": content}] if isinstance(content, str)
             else [_norm_part(p) for p in content or []])
    if m.get("refusal"):
        parts.append({"type": "refusal", "refusal": m["refusal"]})
    refusals = [p["refusal"] for p in parts if p["type"] == "refusal"]
    if m["role"] == "assistant":
        parts = [p for p in parts if p["type"] != "refusal"]
    out: dict[str, Any] = {"role": m["role"], "content": (
        None if not parts else parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text"
        else parts)}
    if m.get("name"):
        out["name"] = m["name"]
    if m.get("tool_calls"):
        out["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
            "name": c["function"]["name"],
            "arguments": c["function"]["arguments"] if isinstance(c["function"]["arguments"], str)
            else openai_wire.json_dumps(c["function"]["arguments"])}} for c in m["tool_calls"]]
    for key in ("tool_call_id", "reasoning_content"):
        if m.get(key):
            out[key] = m[key]
    if m["role"] == "assistant" and "".join(refusals):
        out["refusal"] = "".join(refusals)
    return out


def _ms(seconds: float) -> float:
    return int(seconds * 1000) / 1000


def norm_request(x: dict[str, Any]) -> dict[str, Any]:
    x = {k: v for k, v in x.items() if k not in _HANDLED
         or (v is not None and k not in ("stream", "stream_options"))}
    out: dict[str, Any] = {"model": x["model"],
                           "messages": [norm_message(m) for m in x["messages"]]}
    for key in openai_wire._values._OPTIONAL_NUMBERS:
        if key in x:
            out[key] = x[key]
    for key in ("logprobs", "parallel_tool_calls"):
        if key in x:
            out[key] = x[key]
    if x.get("stop") not in (None, []):
        out["stop"] = [x["stop"]] if isinstance(x["stop"], str) else x["stop"]
    if x.get("tools"):
        out["tools"] = [{"type": "function", "function": {
            k: _floats(v) if k == "parameters" else v
            for k, v in t["function"].items() if v != ""}} for t in x["tools"]]
        for t, src in zip(out["tools"], x["tools"], strict=True):
            t["function"]["name"] = src["function"]["name"]
    if "tool_choice" in x:
        c = x["tool_choice"]
        out["tool_choice"] = c if isinstance(c, str) else {"type": "function",
                                                           "function": c["function"]}
    if "response_format" in x:
        fmt = x["response_format"]
        out["response_format"] = {"type": fmt["type"]}
        if fmt["type"] == "json_schema":
            js = fmt["json_schema"]
            schema: dict[str, Any] = {"name": js.get("name") or "response"}
            if js.get("description"):
                schema["description"] = js["description"]
            if "schema" in js:
                schema["schema"] = _floats(js["schema"])
            if "strict" in js:
                schema["strict"] = js["strict"]
            out["response_format"]["json_schema"] = schema
    for key in ("reasoning_effort", "user", "metadata"):
        if x.get(key):
            out[key] = x[key]
    for key, value in x.items():
        if key not in _HANDLED:
            out.setdefault(key, _floats(value))
    if "scillm" in x:
        s = x["scillm"]
        routing: dict[str, Any] = {}
        if s.get("fallbacks"):
            routing["fallbacks"] = s["fallbacks"]
        if "timeout_s" in s:
            routing["timeout_s"] = _ms(s["timeout_s"])
        if "num_retries" in s:
            routing["num_retries"] = s["num_retries"]
        if s.get("deterministic"):
            routing["deterministic"] = True
        if "cache" in s:
            c = s["cache"]
            cache = {"bypass": c.get("bypass", False), "no_store": c.get("no_store", False)}
            if c.get("namespace"):
                cache["namespace"] = c["namespace"]
            if "ttl_s" in c:
                cache["ttl_s"] = _ms(c["ttl_s"])
            if "max_age_s" in c:
                cache["max_age_s"] = _ms(c["max_age_s"])
            if "enabled" in c:
                cache["enabled"] = c["enabled"]
            routing["cache"] = cache
        out["scillm"] = routing
    return out


# --------------------------------------------------------------------------- requests


@PROPS
@given(request())
def test_request_round_trip(body: dict[str, Any]) -> None:
    proto = openai_wire.request_to_proto(copy.deepcopy(body))
    proto.SerializeToString()
    assert openai_wire.request_from_proto(proto) == norm_request(body)
    options = body.get("scillm") or {}
    assert proto.context.session_id == options.get("session_id", "")
    assert proto.context.track == options.get("track", "")


@PROPS
@given(request())
@example({"model": "0", "messages": [{"role": "assistant", "content": [
    {"type": "refusal", "refusal": ""}]}]})
def test_request_translation_is_idempotent(body: dict[str, Any]) -> None:
    once = openai_wire.request_from_proto(openai_wire.request_to_proto(body))
    twice = openai_wire.request_from_proto(openai_wire.request_to_proto(once))
    assert twice == once


junk = st.recursive(
    json_scalar | st.floats() | st.integers() | st.sampled_from(["\ud800", 10**400, -(2**64)]),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(text, inner, max_size=2),
    max_leaves=5)
_TARGETS = [(), ("messages", 0), ("messages", 0, "content", 0), ("scillm",),
            ("scillm", "cache"), ("tools", 0), ("tools", 0, "function"),
            ("response_format",), ("response_format", "json_schema"), ("tool_choice",)]
_BASE: dict[str, Any] = {
    "model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    "scillm": {"cache": {}}, "tools": [{"type": "function", "function": {"name": "f"}}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "n"}},
    "tool_choice": {"type": "function", "function": {"name": "f"}}}


@PROPS
@given(st.sampled_from(_TARGETS), st.sampled_from([
    *sorted(_HANDLED), "role", "content", "type", "text", "function", "name", "parameters",
    "json_schema", "schema", "fallbacks", "timeout_s", "num_retries", "ttl_s", "tool_calls",
    "image_url", "refusal", "bypass", "session_id", "extra"]), junk)
def test_invalid_input_raises_invalid_request_error_only(
        target: tuple[Any, ...], key: str, value: Any) -> None:
    body = copy.deepcopy(_BASE)
    node: Any = body
    for step in target:
        node = node[step]
    node[key] = value
    try:
        proto = openai_wire.request_to_proto(body)
    except InvalidRequestError:
        return
    # Whatever is accepted must serialize and translate back (the servicer does both).
    proto.SerializeToString()
    openai_wire.request_from_proto(proto)


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2**40}, "n"), ({"seed": 2**64}, "seed"), ({"temperature": 10**400}, "temperature"),
    ({"temperature": math.nan}, "temperature"), ({"top_p": math.inf}, "top_p"),
    ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    ({"response_format": {"type": []}}, "response_format.type"),
    ({"tool_choice": {"function": "f"}}, "tool_choice.function"),
    ({"scillm": {"timeout_s": math.inf}}, "scillm.timeout_s"),
    ({"scillm": {"timeout_s": 1e300}}, "scillm.timeout_s"),
    ({"scillm": {"cache": {"ttl_s": math.nan}}}, "scillm.cache.ttl_s"),
    ({"scillm": {"nope": 1}}, "scillm"), ({"scillm": {"cache": {"nope": 1}}}, "scillm.cache"),
    ({"scillm": {"fallbacks": [1]}}, "scillm.fallbacks"),
    ({"top_k": math.nan}, "extra_body"), ({"top_k": 10**400}, "extra_body"),
    ({"tools": {"f": 1}}, "tools"),
    ({"tools": [{"function": {"name": "f", "parameters": {"x": math.inf}}}]},
     "tools[0].function.parameters"),
    ({"model": "m\ud800"}, None),
])
def test_regression_invalid_requests_that_used_to_crash(body: dict[str, Any],
                                                        param: str | None) -> None:
    """Found by these properties: each raised ValueError, TypeError, AttributeError or
    OverflowError (a 500 from the shim, or a proto the servicer could not read back)."""
    full = {"model": "m", "messages": [{"role": "user", "content": "x"}], **body}
    with pytest.raises(InvalidRequestError) as err:
        openai_wire.request_to_proto(full)
    assert err.value.param == param


# --------------------------------------------------------------------------- responses

token = st.fixed_dictionaries({"token": text, "logprob": finite,
                               "bytes": st.lists(st.integers(0, 255), max_size=3)})
token_logprobs = st.lists(st.builds(lambda t, top: {**t, "top_logprobs": top}, token,
                                    st.lists(token, max_size=2)), max_size=2)
logprobs = st.none() | st.builds(lambda c, r: {"content": c, "refusal": r}, token_logprobs,
                                 st.none() | token_logprobs)
finish = st.sampled_from([*openai_wire.FINISH_REASONS, None, "weird"])


@st.composite
def assistant_message(draw: st.DrawFn) -> dict[str, Any]:
    m = draw(message())
    m["role"] = "assistant"
    m.pop("tool_call_id", None)
    return m


usage = st.builds(
    lambda p, c, t, details: {"prompt_tokens": p, "completion_tokens": c, "total_tokens": t,
                              **details},
    int32.filter(lambda v: v >= 0), int32.filter(lambda v: v >= 0),
    int32.filter(lambda v: v >= 0), _optional(
        prompt_tokens_details=st.builds(lambda v: {"cached_tokens": v}, int32),
        completion_tokens_details=st.builds(lambda v: {"reasoning_tokens": v}, int32)))
response = st.builds(
    lambda i, m, created, choices, u, fp: {
        "id": i, "object": "chat.completion", "created": created, "model": m,
        "choices": [{**c, "index": n} for n, c in enumerate(choices)], "usage": u, **fp},
    text, text, st.integers(0, 2**62),
    st.lists(st.fixed_dictionaries({"message": assistant_message(), "finish_reason": finish,
                                    "logprobs": logprobs}), max_size=2),
    usage, _optional(system_fingerprint=text))


def _norm_finish(reason: str | None) -> str | None:
    return {"function_call": "tool_calls", "weird": None}.get(reason or "", reason)


def _norm_logprobs(lp: dict[str, Any] | None) -> dict[str, Any] | None:
    if not lp or not (lp["content"] or lp["refusal"]):
        return None
    return {"content": lp["content"] if lp["content"] or not lp["refusal"] else None,
            "refusal": lp["refusal"] or None}


@PROPS
@given(response)
def test_response_round_trip(body: dict[str, Any]) -> None:
    expected = {**body, "choices": [
        {"index": c["index"], "message": {"refusal": None, **norm_message(c["message"])},
         "finish_reason": _norm_finish(c["finish_reason"]),
         "logprobs": _norm_logprobs(c["logprobs"])} for c in body["choices"]]}
    if not body.get("system_fingerprint"):
        expected.pop("system_fingerprint", None)
    assert openai_wire.response_from_proto(openai_wire.response_to_proto(body)) == expected


tool_call_delta = st.builds(
    lambda index, fields: {"index": index, **({"id": fields["id"], "type": "function"}
                                              if "id" in fields else {}),
                           "function": {k: v for k, v in fields.items() if k != "id"}},
    st.integers(0, 2**31 - 1), _optional(id=word, name=word, arguments=text))
delta = _optional(role=st.sampled_from(sorted(openai_wire.ROLES)), content=text, refusal=text,
                  reasoning_content=text, tool_calls=st.lists(tool_call_delta, max_size=2))
chunk = st.builds(
    lambda i, m, created, choices: {
        "id": i, "object": "chat.completion.chunk", "created": created, "model": m,
        "choices": [{**c, "index": n} for n, c in enumerate(choices)]},
    text, text, st.integers(0, 2**62),
    st.lists(st.builds(lambda d, f, lp: {"delta": d, "finish_reason": f, **lp}, delta, finish,
                       _optional(logprobs=logprobs)), max_size=2))


def _norm_delta(d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if v != "" and k != "tool_calls"}
    if d.get("tool_calls"):
        out["tool_calls"] = [{**c, "function": {"arguments": "", **c["function"]}}
                             for c in d["tool_calls"]]
    return out


@PROPS
@given(chunk)
def test_chunk_round_trip(body: dict[str, Any]) -> None:
    choices = []
    for c in body["choices"]:
        entry = {"index": c["index"], "delta": _norm_delta(c["delta"]),
                 "finish_reason": _norm_finish(c["finish_reason"])}
        if _norm_logprobs(c.get("logprobs")):
            entry["logprobs"] = _norm_logprobs(c["logprobs"])
        choices.append(entry)
    assert openai_wire.chunk_from_proto(openai_wire.chunk_to_proto(body)) == {
        **body, "choices": choices}
