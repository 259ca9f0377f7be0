"""Anthropic Messages API translation against a loopback upstream speaking its wire format."""

from __future__ import annotations

import json
from typing import Any

import pytest
from completion_upstream import (
    EngineFactory,
    Upstream,
    anthropic,
    send_json,
    sse_event,
    sse_head,
    status,
)

from scillm.server.completion import ContextWindowExceeded, StreamChunk, StreamEnd, UpstreamError

MSG = [{"role": "user", "content": "hello"}]


def config(up: Upstream) -> dict[str, Any]:
    return {"model_list": [{"model_name": "claude", "litellm_params": {
        "model": "anthropic/claude-x", "api_base": up.url, "api_key": "sk-ant"}}]}


REQUEST = {"model": "claude", "max_tokens": 50, "stop": "END", "messages": [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function",
     "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
    {"role": "tool", "tool_call_id": "t1", "content": "found"},
    {"role": "user", "content": "and now?"}],
    "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}],
    "tool_choice": "required"}


async def test_request_and_reply_translation(upstream: Upstream,
                                             make_engine: EngineFactory) -> None:
    upstream.plan("claude-x", anthropic(tool=True))
    engine = await make_engine(config(upstream))
    done = await engine.complete(REQUEST)
    path, headers, body = upstream.requests[0]
    assert path == "/v1/messages" and headers["x-api-key"] == "sk-ant"
    assert headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == "be brief" and body["max_tokens"] == 50
    assert body["stop_sequences"] == ["END"] and body["tool_choice"] == {"type": "any"}
    assert body["tools"][0]["input_schema"]["properties"] == {"q": {"type": "string"}}
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][0] == {"type": "tool_use", "id": "t1",
                                                 "name": "lookup", "input": {"q": "x"}}
    assert body["messages"][2]["content"][0]["type"] == "tool_result"
    choice = done.response["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "and now?"
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "toolu_1" and json.loads(call["function"]["arguments"]) == {"q": "x"}
    assert done.response["usage"] == {"prompt_tokens": 7, "completion_tokens": 3,
                                      "total_tokens": 10}
    assert done.routing.provider == "anthropic"


async def test_stream_events_become_chunks(upstream: Upstream,
                                           make_engine: EngineFactory) -> None:
    upstream.plan("claude-x", anthropic(tool=True))
    engine = await make_engine(config(upstream))
    events = [e async for e in engine.stream({**REQUEST, "stream": True})]
    chunks = [e.chunk for e in events if isinstance(e, StreamChunk)]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Hello there"
    args = "".join(tc["function"]["arguments"] for c in chunks
                   for tc in c["choices"][0]["delta"].get("tool_calls") or ())
    assert json.loads(args) == {"q": "x"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


async def test_prompt_too_long(upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("claude-x", status(400, body={"type": "error", "error": {
        "type": "invalid_request_error", "message": "prompt is too long: 300000 tokens"}}))
    engine = await make_engine(config(upstream))
    try:
        await engine.complete({"model": "claude", "messages": [{"role": "user", "content": "x"}]})
    except ContextWindowExceeded as exc:
        assert exc.status == 400
    else:
        raise AssertionError("expected ContextWindowExceeded")


def _message_of_another_shape(kind: str) -> Any:
    """An Anthropic upstream whose message (or stream event) is not of Anthropic's shape."""
    async def act(up: Upstream, req: dict[str, Any], r: Any, w: Any) -> bool:
        if not req.get("stream"):
            content: Any = [None] if kind == "block" else [{"type": "text", "text": 5}]
            send_json(w, 200, {"id": "m", "type": "message", "role": "assistant",
                               "model": "claude-x", "content": content,
                               "usage": {"input_tokens": 1, "output_tokens": 1}})
            return True
        sse_head(w)
        sse_event(w, json.dumps(["not", "an", "event"]) if kind == "block" else
                  json.dumps({"type": "message_start", "message": "m"}), "message_start")
        w.write(b"0\r\n\r\n")
        return True
    return act


@pytest.mark.parametrize("kind", ["block", "field"])
async def test_a_reply_of_another_shape_is_an_upstream_error(
        upstream: Upstream, make_engine: EngineFactory, kind: str) -> None:
    """A null content block or a message that is a string raised AttributeError or
    TypeError inside the provider: an INTERNAL error. It is the upstream's fault."""
    upstream.plan("claude-x", _message_of_another_shape(kind))
    engine = await make_engine(config(upstream))
    with pytest.raises(UpstreamError, match=r"shape|not an object"):
        await engine.complete({"model": "claude", "max_tokens": 5, "messages": MSG})
    with pytest.raises(UpstreamError, match=r"shape|not an object"):
        [e async for e in engine.stream({"model": "claude", "max_tokens": 5,
                                         "messages": MSG})]


async def test_tool_call_arguments_nested_past_any_reader_are_the_callers_400(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    """json.loads raises RecursionError, not ValueError, for arguments 100,000 deep: the
    call was INTERNAL. It is the caller's invalid request, as arguments that are not JSON."""
    from scillm.server.completion import InvalidRequest

    engine = await make_engine(config(upstream))
    deep = json.loads(json.dumps(REQUEST))
    deep["messages"][2]["tool_calls"][0]["function"]["arguments"] = "[" * 100_000 + "]" * 100_000
    with pytest.raises(InvalidRequest) as info:
        await engine.complete(deep)
    assert info.value.param == "messages"
    assert not upstream.requests
