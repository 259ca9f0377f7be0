"""Anthropic Messages API, translated natively to and from OpenAI's wire format.

System messages become `system`; assistant `tool_calls` become `tool_use` blocks and
`tool` messages `tool_result` blocks; stop reasons map to finish reasons; streaming
events (message_start, content_block_*, message_delta, message_stop) become chunks.

A reply's lone UTF-16 surrogates (JSON's `"\\ud800"`) are read as U+FFFD (`_http.load_json`);
in a stream, a pair cut between two events is joined: in a tool call's JSON here
(`_mended_event`), in the text by the engine (`_engine._join_halves`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from ._http import (
    ClientPool,
    Halves,
    api_key,
    error_from_response,
    load_json,
    mended,
    parse_json,
    read_reply,
    sse_events,
    transport_error,
)
from ._provider import ProviderCall, text_of, without_secret
from ._usage import count
from .errors import InvalidRequest, UpstreamError

__all__ = ["AnthropicProvider", "to_anthropic"]

DEFAULT_BASE = "https://api.anthropic.com"
VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
_CONTEXT_MARKERS = ("prompt is too long",)
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "tool_use": "tool_calls", "pause_turn": "stop", "refusal": "content_filter"}


class AnthropicProvider:
    """POSTs `/v1/messages` with `x-api-key` and `anthropic-version`."""

    name = "anthropic"

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._pool = ClientPool(transport)

    def _build(self, call: ProviderCall, stream: bool) -> tuple[httpx.AsyncClient, httpx.Request]:
        dep = call.deployment
        base = dep.api_base or DEFAULT_BASE
        url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        headers = {"content-type": "application/json", "anthropic-version": VERSION}
        key = api_key(dep)
        if key:
            headers["x-api-key"] = key
        headers.update(dep.headers)
        body = to_anthropic(call)
        if stream:
            body["stream"] = True
        client = self._pool.get(base)
        return client, client.build_request(
            "POST", self._pool.url(url), headers=headers, timeout=httpx.Timeout(call.timeout_s),
            content=json.dumps(body, separators=(",", ":")).encode())

    async def complete(self, call: ProviderCall) -> dict[str, Any]:
        client, request = self._build(call, stream=False)
        try:
            response = await read_reply(await client.send(request, stream=True))
            raw = response.content
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        if response.status_code >= 400:
            raise error_from_response(response, call, _CONTEXT_MARKERS)
        try:
            data = load_json(raw)
        except ValueError:
            raise UpstreamError(f"{call.deployment.id}: invalid JSON in the reply") from None
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise UpstreamError(f"{call.deployment.id}: the reply is not an Anthropic message")
        try:
            return from_anthropic(data)
        except _MISSHAPEN as exc:
            raise _misshapen(call, exc) from None

    async def stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        client, request = self._build(call, stream=True)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        try:
            if response.status_code >= 400:
                raise error_from_response(await read_reply(response), call, _CONTEXT_MARKERS)
            state = _StreamState()
            halves: Halves[int] = Halves()  # of tool_use blocks' JSON, by block index
            async for event, data in sse_events(response):
                try:
                    payload, unsure = parse_json(data)
                except ValueError:
                    raise UpstreamError(f"{call.deployment.id}: malformed SSE data") from None
                if not isinstance(payload, dict):
                    raise UpstreamError(f"{call.deployment.id}: SSE data is not an object")
                if unsure or halves.held:  # a lone surrogate maybe, or a half waiting
                    try:
                        payload = _mended_event(payload, halves)
                    except RecursionError:
                        raise UpstreamError(f"{call.deployment.id}: SSE data nested too "
                                            "deeply") from None
                kind = event or str(payload.get("type", ""))
                if kind == "error":
                    err = payload.get("error") or {}
                    status = 529 if err.get("type") == "overloaded_error" else None
                    raise UpstreamError(without_secret(
                        f"{call.deployment.id}: {err.get('message', err)}", call.deployment),
                        status=status)
                try:
                    chunks = state.feed(kind, payload)
                    if halves.held and kind in ("content_block_stop", "message_delta"):
                        # A block's JSON ended with a half alone: U+FFFD, before the end.
                        chunks = _ended_halves(state, halves, kind, payload) + chunks
                except _MISSHAPEN as exc:
                    raise _misshapen(call, exc) from None
                for chunk in chunks:
                    yield chunk
                if kind == "message_stop":
                    return
            raise UpstreamError(f"{call.deployment.id}: the stream ended before message_stop")
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self._pool.close()


def to_anthropic(call: ProviderCall) -> dict[str, Any]:
    """An OpenAI chat request as an Anthropic Messages request."""
    src = call.body
    if (src.get("n") or 1) != 1:
        raise InvalidRequest("anthropic models return one choice: n must be 1", param="n")
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for m in src.get("messages") or ():
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(text_of(m.get("content")))
            continue
        if role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""),
                     "content": text_of(m.get("content"))}
            _append(messages, "user", [block])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = text_of(m.get("content"))
            if text:
                blocks.append({"type": "text", "text": text})
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") or {}
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except (ValueError, RecursionError):
                    raise InvalidRequest("tool call arguments must be JSON",
                                         param="messages") from None
                blocks.append({"type": "tool_use", "id": tc.get("id", ""),
                               "name": fn.get("name", ""), "input": args})
            _append(messages, "assistant", blocks)
        else:
            _append(messages, "user", _user_blocks(m.get("content")))
    fmt = src.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        schema = (fmt.get("json_schema") or {}).get("schema")
        system.append("Reply with a single JSON object and nothing else." + (
            f" It must match this JSON schema: {json.dumps(schema)}"
            if schema else ""))
    body: dict[str, Any] = {
        "model": call.model, "messages": messages,
        "max_tokens": src.get("max_completion_tokens") or src.get("max_tokens")
        or call.deployment.max_tokens_default or DEFAULT_MAX_TOKENS,
    }
    if system:
        body["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p", "top_k"):
        if src.get(key) is not None:
            body[key] = src[key]
    stop = src.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if src.get("tools"):
        body["tools"] = [{"name": t["function"]["name"],
                          "description": t["function"].get("description", ""),
                          "input_schema": t["function"].get("parameters")
                          or {"type": "object", "properties": {}}}
                         for t in src["tools"] if t.get("type") == "function"]
    choice = src.get("tool_choice")
    if choice is not None:
        body["tool_choice"] = _tool_choice(choice)
    if src.get("user"):
        body["metadata"] = {"user_id": str(src["user"])}
    return body


def _tool_choice(choice: Any) -> dict[str, Any]:
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict):
        return {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    return {"type": str(choice)}  # "auto" or "none"


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return [{"type": "text", "text": content or ""}]
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url", ""))
            if url.startswith("data:"):
                media, _, data = url[5:].partition(";base64,")
                blocks.append({"type": "image", "source": {
                    "type": "base64", "media_type": media, "data": data}})
            else:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
    return blocks


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if messages and messages[-1]["role"] == role:  # Anthropic wants roles to alternate
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _usage(usage: dict[str, Any]) -> dict[str, Any] | None:
    """Anthropic's usage as OpenAI's; None when a count is not one (see `_usage.count`)."""
    parts = [count(usage.get(k)) for k in ("input_tokens", "cache_read_input_tokens",
                                           "cache_creation_input_tokens", "output_tokens")]
    if any(p is None for p in parts):
        return None
    *inputs, completion = (p or 0 for p in parts)
    prompt = sum(inputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


#: What reading a reply of another shape than Anthropic's raises.
_MISSHAPEN = (TypeError, AttributeError, ValueError, KeyError)


def _misshapen(call: ProviderCall, exc: Exception) -> UpstreamError:
    return UpstreamError(f"{call.deployment.id}: the reply does not fit Anthropic's shape: "
                         f"{type(exc).__name__}: {exc}")


def from_anthropic(data: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic message as an OpenAI `chat.completion`."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data["content"]:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id", ""), "type": "function", "function": {
                "name": block.get("name", ""), "arguments": json.dumps(block.get("input", {}))}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        message["tool_calls"] = calls
    return {"id": data.get("id", ""), "object": "chat.completion", "created": int(time.time()),
            "model": data.get("model", ""),
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _FINISH.get(str(data.get("stop_reason")), "stop")}],
            "usage": _usage(data.get("usage") or {})}


class _StreamState:
    """Turns Anthropic stream events into OpenAI chunks."""

    def __init__(self) -> None:
        self.base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk",
                                     "created": int(time.time()), "model": ""}
        self.usage: dict[str, Any] = {}
        self.tools: dict[int, int] = {}  # content block index -> tool call index

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, kind: str, p: dict[str, Any]) -> list[dict[str, Any]]:
        if kind == "message_start":
            message = p.get("message") or {}
            self.base["id"], self.base["model"] = message.get("id", ""), message.get("model", "")
            self.usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = p.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.tools[int(p.get("index", 0))] = len(self.tools)
                return [self._chunk({"tool_calls": [{
                    "index": index, "id": block.get("id", ""), "type": "function",
                    "function": {"name": block.get("name", ""), "arguments": ""}}]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = p.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self.tools.get(int(p.get("index", 0)), 0)
                return [self._chunk({"tool_calls": [{"index": index, "function": {
                    "arguments": delta.get("partial_json", "")}}]})]
            return []
        if kind == "message_delta":
            self.usage.update(p.get("usage") or {})
            reason = (p.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, _FINISH.get(str(reason), "stop"))] if reason else []
        if kind == "message_stop":
            usage = _usage(self.usage)
            return [] if usage is None else [{**self.base, "choices": [], "usage": usage}]
        return []  # ping, content_block_stop, thinking deltas


def _mended_event(payload: dict[str, Any], halves: Halves[int]) -> dict[str, Any]:
    """A stream event with each lone surrogate as U+FFFD (`_http.mended`), but for the
    texts of its `delta` or `content_block` (they become content, whose halves the engine
    joins: `_engine._join_halves`) and the JSON of a tool_use block's `input_json_delta`,
    joined here across events by block index (`halves`; `_ended_halves`)."""
    index = payload.get("index", 0)
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key not in ("delta", "content_block") or not isinstance(value, dict):
            out[mended(key)] = mended(value)
            continue
        part: dict[str, Any] = {}
        for name, item in value.items():
            if name == "text" and isinstance(item, str):
                part[name] = item
            elif name == "partial_json" and isinstance(item, str) and type(index) is int:
                part[name] = halves.join(index, item)
            else:
                part[mended(name)] = mended(item)
        out[key] = part
    return out


def _ended_halves(state: _StreamState, halves: Halves[int], kind: str,
                  payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks of the halves still waiting when their block stopped (`kind`
    content_block_stop: that block's) or the message finished (message_delta: every
    block's): U+FFFD each, as the tool call's last arguments."""
    index = payload.get("index", 0)
    ended = [at for at in halves.held if kind == "message_delta" or at == index]
    return [chunk for at in ended for chunk in state.feed("content_block_delta", {
        "index": at, "delta": {"type": "input_json_delta", "partial_json": halves.end(at)}})]
