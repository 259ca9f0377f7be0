"""OpenAI-compatible upstreams (OpenAI, vLLM, llama.cpp server, ...) over pooled httpx.

A call to a deployment served by a `PooledTransport` takes the lean road,
`PooledTransport.exchange` (unary) or `open` (streams): the request's head is made once
per deployment and the reply comes back as status, raw headers and bytes or a body stream,
with no httpx request, response or header normalisation per call: 51 -> 16 µs of CPU per
unary call with 64 in flight, 74 -> 45 µs one at a time (`bench/transport_bench.py`, the
upstream leg table). A reply with an error status or a Content-Encoding is wrapped in an
httpx response (for `error_from_response` and httpx's decoders). Transports of another
kind (tests' fakes) and traced clients take httpx's road; both roads answer alike
(tests/server/completion/test_openai_roads.py).

A reply's lone UTF-16 surrogates (JSON's `"\\ud800"`) are read as U+FFFD (`_http.load_json`);
in a stream, a pair cut between two chunks is joined: in a tool call's arguments here
(`_mended_chunk`), in the texts by their readers (`_engine._join_halves`,
`_text.StreamReader`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any, NamedTuple

import httpx
import orjson

from ._connection import ResponseStream, request_head
from ._http import (
    ClientPool,
    Halves,
    api_key,
    error_from_response,
    load_json,
    mended,
    parse_json,
    read_body,
    read_reply,
    sse_events,
    transport_error,
)
from ._provider import ProviderCall, without_secret
from ._settings import DeploymentSettings
from ._transport import PooledTransport
from .errors import UpstreamError

__all__ = ["OpenAIProvider"]

DEFAULT_BASE = "https://api.openai.com/v1"


class _Prepared(NamedTuple):
    """A deployment's request headers, ready but for `Content-Length` (see `_prepare`)."""

    deployment: DeploymentSettings
    client: httpx.AsyncClient
    #: The request without a body: its URL and headers (`Host` first, no Content-Length);
    #: the context of the lean road's errors.
    stub: httpx.Request
    add_length: bool
    #: The lean road's head (request line and headers, without Content-Length and the
    #: blank line); None when the deployment's headers set a length or encoding of their
    #: own, or cannot be sent.
    head: bytes | None


class OpenAIProvider:
    """POSTs `/chat/completions`; streams by SSE with usage requested in the last chunk;
    embeds with `/embeddings`; completes text with `/completions`, streamed or not."""

    name = "openai"

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._pool = ClientPool(transport)
        self._prepared: dict[tuple[int, bool], _Prepared] = {}
        #: `_prepared` of the other paths (embeddings, text completions), by (deployment,
        #: path, stream).
        self._other_heads: dict[tuple[int, str, bool], _Prepared] = {}

    def _prepare(self, dep: DeploymentSettings, client: httpx.AsyncClient, url: httpx.URL,
                 stream: bool) -> _Prepared:
        """The headers `client.build_request` would send but `Content-Length`, once.

        Merging the client's headers, then normalising every header twice, costs more
        than the rest of building a request, and gives the same list each time for one
        deployment. An entry names the deployment and client it was made for, so a
        recycled `id()` or a new client never reuses it.
        """
        prepared = self._prepared.get((id(dep), stream))
        if prepared is not None and prepared.deployment is dep and prepared.client is client:
            return prepared
        prepared = _head(dep, client, url, stream)
        if len(self._prepared) >= 1024:  # deployments are few; bound it anyway
            self._prepared.clear()
        self._prepared[(id(dep), stream)] = prepared
        return prepared

    def _prepared_for(self, call: ProviderCall, stream: bool) -> tuple[str, _Prepared]:
        """The base URL whose client sends `call`, and its deployment's prepared headers."""
        dep = call.deployment
        base = dep.api_base or DEFAULT_BASE
        client = self._pool.get(base)
        url = self._pool.url(f"{base}/chat/completions")
        return base, self._prepare(dep, client, url, stream)

    def _prepared_at(self, dep: DeploymentSettings, path: str,
                     stream: bool = False) -> tuple[str, _Prepared]:
        """`_prepared_for` of `{api_base}{path}` for a call other than chat's (its own
        heads, made once per deployment, path and streaming)."""
        base = dep.api_base or DEFAULT_BASE
        client = self._pool.get(base)
        prepared = self._other_heads.get((id(dep), path, stream))
        if prepared is None or prepared.deployment is not dep or prepared.client is not client:
            prepared = _head(dep, client, self._pool.url(f"{base}{path}"), stream)
            if len(self._other_heads) >= 1024:
                self._other_heads.clear()
            self._other_heads[(id(dep), path, stream)] = prepared
        return base, prepared

    async def _post_json(self, call: ProviderCall, path: str, body: dict[str, Any],
                         what: str) -> Any:
        """POST `body` to `{api_base}{path}` (either road); the reply's JSON, whatever it
        is (the caller reads it strictly); UpstreamError naming `what` when it is none."""
        base, prepared = self._prepared_at(call.deployment, path)
        lean, content = self._pool.lean(base), _dumps(body)
        if lean is not None and prepared.head is not None:
            status, raw = await self._exchange(lean, prepared, call, content)
        else:
            status, raw = await self._send(base, prepared, call, content)
        try:
            return load_json(raw)
        except ValueError:
            raise UpstreamError(f"{call.deployment.id}: the {what} reply (HTTP {status}) is "
                                "not JSON") from None

    @staticmethod
    def _build(prepared: _Prepared, content: bytes, timeout: float) -> httpx.Request:
        """httpx's road: the whole request, `prepared` and the body `content`."""
        headers = prepared.stub.headers.raw
        if prepared.add_length:
            headers = [*headers, (b"Content-Length", str(len(content)).encode())]
        # The request `client.build_request(..., content=content, timeout=timeout_s)` makes
        # (the client has no base_url, params or cookies to merge), built for less.
        request = httpx.Request(
            "POST", prepared.stub.url, headers=headers, stream=httpx.ByteStream(content),
            extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout,
                                    "pool": timeout}})
        request.read()
        return request

    async def complete(self, call: ProviderCall) -> dict[str, Any]:
        base, prepared = self._prepared_for(call, stream=False)
        lean = self._pool.lean(base)
        content = _content(call, stream=False)
        if lean is not None and prepared.head is not None:
            status, raw = await self._exchange(lean, prepared, call, content)
        else:
            status, raw = await self._send(base, prepared, call, content)
        try:
            data = load_json(raw)
        except ValueError:
            raise UpstreamError(f"{call.deployment.id}: invalid JSON in the reply "
                                f"(HTTP {status})", body=raw[:2000].decode(
                                    "utf-8", "replace")) from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError(f"{call.deployment.id}: the reply is not a chat.completion")
        return data

    async def embed(self, call: ProviderCall) -> Any:
        """POST `{api_base}/embeddings`, asking for base64 vectors; the reply's JSON,
        whatever it is (`_embeddings` reads it: base64, or floats from an upstream that
        ignores `encoding_format`).

        Base64 (what the openai SDK asks for too) is 2/5 of the floats' JSON: 2048 inputs
        of 3,072 numbers (text-embedding-3-large's batch) are ~33 MB, where the floats'
        ~85 MB passed MAX_REPLY_BYTES and a batch OpenAI serves failed here."""
        return await self._post_json(call, "/embeddings", {
            **call.body, "model": call.model, "encoding_format": "base64"}, "embeddings")

    async def _exchange(self, transport: PooledTransport, prepared: _Prepared,
                        call: ProviderCall, content: bytes) -> tuple[int, bytes]:
        """The lean road: status and decoded body of a successful reply."""
        payload = _payload(prepared, content)
        try:
            status, headers, raw = await transport.exchange(prepared.stub, payload,
                                                            call.timeout_s)
            if status >= 400 or _encoded(headers):  # through httpx: its errors, its decoders
                response = await read_reply(httpx.Response(
                    status, headers=headers, request=prepared.stub,
                    stream=httpx.ByteStream(raw)))
                if status >= 400:
                    raise error_from_response(response, call)
                raw = response.content
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        return status, raw

    async def _send(self, base: str, prepared: _Prepared, call: ProviderCall,
                    content: bytes) -> tuple[int, bytes]:
        """httpx's road: status and decoded body of a successful reply."""
        try:
            response = await self._pool.send(base, self._build(prepared, content,
                                                               call.timeout_s))
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        try:
            if response.status_code >= 400:
                raise error_from_response(await read_reply(response), call)
            raw = await read_body(response)
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        return response.status_code, raw

    def stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        """POST `/chat/completions` with `"stream": true`; its chunks (`_events`)."""
        return self._events(call, None)

    def text_stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        """POST `{api_base}/completions` (OpenAI's legacy text completions) with `"stream":
        true` and usage asked for in the last chunk; its `text_completion` chunks as they
        come (`_events`; `_text.StreamReader` reads them strictly)."""
        return self._events(call, "/completions")

    async def _events(self, call: ProviderCall,
                      path: str | None) -> AsyncGenerator[dict[str, Any], None]:
        """The SSE chunks of a streamed call to `{api_base}{path}`, or of a chat completion
        when `path` is None: each an object whose `choices` are objects, an in-band error
        raised as UpstreamError, and some choice finished before `[DONE]`."""
        if path is None:
            base, prepared = self._prepared_for(call, stream=True)
            content = _content(call, stream=True)
        else:
            base, prepared = self._prepared_at(call.deployment, path, stream=True)
            content = _dumps({**call.body, "model": call.model, "stream": True,
                              "stream_options": {"include_usage": True}})
        lean = self._pool.lean(base)
        source: httpx.Response | ResponseStream
        try:
            if lean is not None and prepared.head is not None:
                payload = _payload(prepared, content)
                status, headers, body = await lean.open(prepared.stub, payload, call.timeout_s)
                source = body
                if status >= 400 or _encoded(headers):  # through httpx, as `complete`
                    source = httpx.Response(status, headers=headers, request=prepared.stub,
                                            stream=body)
            else:
                source = await self._pool.send(base, self._build(
                    prepared, content, call.timeout_s))
                status = source.status_code
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        try:
            if status >= 400:
                assert isinstance(source, httpx.Response)
                raise error_from_response(await read_reply(source), call)
            finished = False
            halves: _CallHalves = Halves()
            async for _, data in sse_events(source):
                if data == "[DONE]":
                    return
                try:
                    chunk, unsure = parse_json(data)
                except ValueError:
                    raise UpstreamError(f"{call.deployment.id}: malformed SSE data: "
                                        f"{data[:100]!r}") from None
                if not isinstance(chunk, dict):
                    raise UpstreamError(f"{call.deployment.id}: SSE data is not an object")
                if unsure or halves.held:  # a lone surrogate maybe, or a half waiting
                    try:
                        chunk = _mended_chunk(chunk, halves, path is not None)
                    except RecursionError:
                        raise UpstreamError(f"{call.deployment.id}: SSE data nested too "
                                            "deeply") from None
                if "error" in chunk:
                    err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                    raise UpstreamError(without_secret(
                        f"{call.deployment.id}: in-band error: "
                        f"{err.get('message', chunk['error'])}", call.deployment))
                choices = chunk.get("choices") or []
                if not isinstance(choices, list) or not all(isinstance(c, dict)
                                                            for c in choices):
                    raise UpstreamError(f"{call.deployment.id}: a chunk's choices are not a "
                                        "list of objects")
                finished = finished or any(c.get("finish_reason") for c in choices)
                yield chunk
            if not finished:
                raise UpstreamError(f"{call.deployment.id}: the stream ended before it finished")
        except httpx.HTTPError as exc:
            raise transport_error(exc, call) from None
        finally:
            await source.aclose()

    async def text_complete(self, call: ProviderCall) -> Any:
        """POST `{api_base}/completions` (OpenAI's legacy text completions); the reply's
        JSON, whatever it is (`_text` reads it strictly)."""
        return await self._post_json(call, "/completions",
                                     {**call.body, "model": call.model}, "text completion")

    async def close(self) -> None:
        await self._pool.close()


def _head(dep: DeploymentSettings, client: httpx.AsyncClient, url: httpx.URL,
          stream: bool) -> _Prepared:
    """The headers `client.build_request` would send to `url` but `Content-Length`, made
    once per deployment (see `OpenAIProvider._prepare`)."""
    headers = {"content-type": "application/json", "accept": "application/json"}
    key = api_key(dep)
    if key:
        headers["authorization"] = f"Bearer {key}"
    headers.update(dep.headers)
    if stream:
        headers["accept"] = "text/event-stream"
    merged = httpx.Headers(client.headers)
    merged.update(headers)
    # As `Request._prepare`: Host first (unless set), Content-Length last (unless set).
    host = [] if "Host" in merged or not url.host else [(b"Host", url.netloc)]
    add_length = "Content-Length" not in merged and "Transfer-Encoding" not in merged
    stub = httpx.Request("POST", url, headers=host + merged.raw, stream=httpx.ByteStream(b""))
    head: bytes | None = None
    if add_length:
        try:
            head = request_head(stub)
        except httpx.LocalProtocolError:
            pass  # httpx's road refuses it, call by call, as the contract says
    return _Prepared(dep, client, stub, add_length, head)


def _content(call: ProviderCall, stream: bool) -> bytes:
    """The request body: the caller's, with the upstream model, the deployment's default
    cap when the caller set none (and usage asked for in a stream's last chunk)."""
    body: dict[str, Any] = {**call.body, "model": call.model}
    cap = call.deployment.max_tokens_default  # litellm_params.max_tokens: the default cap
    if cap is not None and body.get("max_tokens") is None \
            and body.get("max_completion_tokens") is None:
        body["max_tokens"] = cap
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return _dumps(body)


def _payload(prepared: _Prepared, content: bytes) -> bytes:
    """The lean road's request bytes: the prepared head, Content-Length and `content`."""
    assert prepared.head is not None
    return b"".join((prepared.head, b"\r\nContent-Length: %d\r\n\r\n" % len(content),
                     content))


def _encoded(headers: list[tuple[bytes, bytes]]) -> bool:
    """The reply has a Content-Encoding (httpx decodes it)."""
    return any(len(name) == 16 and name.lower() == b"content-encoding" for name, _ in headers)


def _dumps(body: dict[str, Any]) -> bytes:
    """Compact JSON, by orjson when it can (integers past 64 bits fall back to json)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body, separators=(",", ":")).encode()


#: A chat chunk's delta texts, passed on as they come: the engine joins their halves
#: (`_engine._join_halves`), as `_text.StreamReader` joins a text completion's `text`.
_JOINED_BY_READERS = frozenset(("content", "refusal", "reasoning_content"))
#: The halves waiting in a stream's tool calls' arguments, by (choice index, call index).
_CallHalves = Halves[tuple[int, int]]


def _mended_chunk(chunk: dict[str, Any], halves: _CallHalves,
                  text: bool) -> dict[str, Any]:
    """A streamed chunk (a chat chunk, or with `text` a text completion's) with each lone
    surrogate as U+FFFD (`_http.mended`), but for the texts its reader joins: each tool
    call's arguments joined here across chunks (`halves`: a half still waiting when its
    choice finishes comes as U+FFFD in the finishing chunk)."""
    out: dict[str, Any] = {}
    for key, value in chunk.items():
        if key == "choices" and isinstance(value, list):
            out[key] = [_mended_choice(choice, halves, text) for choice in value]
        else:
            out[mended(key)] = mended(value)
    return out


def _mended_choice(choice: Any, halves: _CallHalves, text: bool) -> Any:
    if not isinstance(choice, dict):
        return mended(choice)
    index = choice.get("index")
    where = index if type(index) is int else None  # a key of `halves`, when one
    out: dict[str, Any] = {}
    for key, value in choice.items():
        if text and key == "text" and isinstance(value, str):
            out[key] = value  # `_text.StreamReader` joins it
        elif key == "delta" and isinstance(value, dict):
            delta: dict[str, Any] = {}
            for name, part in value.items():
                if name in _JOINED_BY_READERS and isinstance(part, str):
                    delta[name] = part  # the engine joins it
                elif name == "tool_calls":
                    delta[name] = _mended_calls(part, where, halves)
                else:
                    delta[mended(name)] = mended(part)
            out[key] = delta
        else:
            out[mended(key)] = mended(value)
    if choice.get("finish_reason") and halves.held:  # its calls' last halves, alone
        ended = [{"index": call, "function": {"arguments": halves.end((at, call))}}
                 for (at, call) in list(halves.held) if at == where]
        if ended:
            finishing = out.get("delta")
            if not isinstance(finishing, dict):
                finishing = out["delta"] = {}
            calls = finishing.get("tool_calls")
            finishing["tool_calls"] = (calls if isinstance(calls, list) else []) + ended
    return out


def _mended_calls(calls: Any, where: int | None, halves: _CallHalves) -> Any:
    """A delta's tool calls, each one's arguments joined across chunks by (choice index,
    call index); the rest mended."""
    if not isinstance(calls, list):
        return mended(calls)
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(fn, dict) and isinstance(fn.get("arguments"), str)
                and where is not None and type(call.get("index")) is int):
            out.append(mended(call))
            continue
        made = {mended(k): mended(v) for k, v in call.items() if k != "function"}
        function = {mended(k): mended(v) for k, v in fn.items() if k != "arguments"}
        function["arguments"] = halves.join((where, call["index"]), fn["arguments"])
        made["function"] = function
        out.append(made)
    return out
