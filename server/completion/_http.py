"""Shared HTTP plumbing of the HTTP providers: pooled clients, SSE, error mapping, and
replies read as JSON with their lone surrogates mended.

A reply's JSON may hold a lone UTF-16 surrogate: `"\\ud800"` is a valid escape, and
`json` reads it as half of a character, which no protobuf string (nor UTF-8) holds, so
Completion answered such a reply UNAVAILABLE. Each half alone is read as U+FFFD, as a
UTF-8 decoder with errors="replace" reads what it cannot decode (`load_json`, `mended`);
a pair an upstream cut between two chunks of a stream is joined (`Halves`). orjson refuses
every lone half (and any byte that is not UTF-8), so only JSON it leaves to `json` is
looked at: a reply orjson reads costs nothing more.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Hashable
from typing import Any, Generic, TypeVar

import httpx
import orjson

from ..bounded import decoded_response, read_bounded
from ..egress import proxy_for, unusable
from ._provider import ProviderCall, without_secret
from ._retry import parse_retry_after
from ._settings import DeploymentSettings
from ._transport import MAX_REPLY_BYTES, PooledTransport, ReplyTooLarge
from .errors import (
    AuthenticationError,
    CompletionError,
    ContextWindowExceeded,
    ProviderUnavailable,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)

__all__ = ["ClientPool", "Halves", "api_key", "error_from_response", "load_json", "mended",
           "parse_json", "read_body", "read_reply", "sse_events", "transport_error"]

# Enough connections for thousands of concurrent streams per base URL (each holds one
# open; past it a stream waits for one to be free).
_MAX_CONNECTIONS = 4096
_KEEPALIVE_EXPIRY_S = 30.0


class _NoCookies(httpx.Cookies):
    """A jar that stays empty: `extract_cookies` costs ~10 % of a request's client CPU."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class _Client(httpx.AsyncClient):
    """An `httpx.AsyncClient` that keeps no cookies.

    The mesh is a stateless proxy for many callers: an upstream's cookie must not be
    carried from one caller's request to the next.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        pass


_NO_COOKIES = _NoCookies()


class ClientPool:
    """One pooled `httpx.AsyncClient` per base URL, created on first use.

    Each client sends over its own `PooledTransport` (one connection pool per base URL)
    unless a transport is injected, which all clients then share. `send` hands a request
    to the transport of its base URL's client directly (see there).
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._transports: dict[str, httpx.AsyncBaseTransport] = {}
        self._lean: dict[str, PooledTransport | None] = {}
        self._urls: dict[str, httpx.URL] = {}

    def url(self, url: str) -> httpx.URL:
        """`url` parsed once: parsing costs more than the rest of building a request."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 1024:  # deployments are few; bound it anyway
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    def get(self, base_url: str) -> httpx.AsyncClient:
        client = self._clients.get(base_url)
        if client is None:
            transport = self._transport or _transport_for(base_url)
            client = _Client(transport=transport, timeout=httpx.Timeout(60.0),
                             trust_env=False)
            traced = self._transport is None and _trace(client)  # wraps the transport
            self._clients[base_url] = client                     # object: `send` keeps spans
            self._transports[base_url] = transport
            self._lean[base_url] = (transport if isinstance(transport, PooledTransport)
                                    and not traced else None)
        return client

    def lean(self, base_url: str) -> PooledTransport | None:
        """The base URL's `PooledTransport` when a call may take its lean road
        (`PooledTransport.exchange`, no httpx request or response): not when the transport
        is of another kind (tests' fakes speak httpx only), nor when tracing wraps it (its
        spans are made around `handle_async_request`)."""
        if base_url not in self._lean:
            self.get(base_url)
        return self._lean[base_url]

    async def send(self, base_url: str, request: httpx.Request) -> httpx.Response:
        """`self.get(base_url).send(request, stream=True)` for less.

        The clients follow no redirects and have no auth, cookies or event hooks, so
        `AsyncClient.send` adds only its layers around the transport call (about a fifth
        of an upstream call's CPU): here the transport answers, and the response gets its
        request as the client would give it. The body is read with `read_body`.
        """
        transport = self._transports.get(base_url)
        if transport is None:
            self.get(base_url)
            transport = self._transports[base_url]
        response = await transport.handle_async_request(request)
        response.request = request
        return response

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        self._transports = {}
        self._lean = {}
        for client in clients:
            await client.aclose()


def _transport_for(base_url: str) -> httpx.AsyncBaseTransport:
    """A `PooledTransport`, unless the environment sends `base_url` through an egress
    proxy (`server/egress.py`): then httpx's own transport through it (a call to such a
    base takes httpx's road, `ClientPool.lean`)."""
    proxy = proxy_for(base_url)
    if proxy is None:
        return PooledTransport(max_connections=_MAX_CONNECTIONS,
                               keepalive_expiry_s=_KEEPALIVE_EXPIRY_S)
    try:
        return httpx.AsyncHTTPTransport(proxy=proxy, limits=httpx.Limits(
            max_connections=_MAX_CONNECTIONS, keepalive_expiry=_KEEPALIVE_EXPIRY_S))
    except (ImportError, ValueError) as exc:  # socks:// without socksio, a bad URL
        raise ProviderUnavailable(f"{base_url}: {unusable(proxy, exc)}") from None


def _trace(client: httpx.AsyncClient) -> bool:
    """Client spans for upstream calls when tracing is on; whether it is.

    `HTTPXClientInstrumentor().instrument()` (see `server.telemetry`) wraps only httpx's
    own transports, class-wide; a `PooledTransport` is wrapped client by client.
    """
    module = sys.modules.get("opentelemetry.instrumentation.httpx")  # imported if tracing
    if module is None:
        return False
    instrumentor = module.HTTPXClientInstrumentor
    if instrumentor().is_instrumented_by_opentelemetry:
        instrumentor.instrument_client(client)
        return True
    return False


async def read_body(response: httpx.Response) -> bytes:
    """The whole body of a streamed `response`, which is closed after.

    `Response.aread` passes every chunk through a decoder, a chunker and a byte count;
    a body without a content encoding needs none of them, so it is joined as it comes.
    """
    try:  # decoded, when it has an encoding
        return await read_bounded(_body_chunks(response), MAX_REPLY_BYTES, lambda: ReplyTooLarge(
            f"the reply is over {MAX_REPLY_BYTES} bytes"))
    finally:
        await response.aclose()


async def read_reply(response: httpx.Response) -> httpx.Response:
    """`response` with its body read (decoded, at most MAX_REPLY_BYTES, as `read_body`),
    for what reads `.content` or `.text` (an error reply); the stream is closed."""
    return decoded_response(response, await read_body(response))


def api_key(dep: DeploymentSettings) -> str | None:
    """The deployment's API key; ProviderUnavailable if its variable is unset."""
    secret = dep.api_key
    if secret is None:
        return None
    if secret.value is None:
        raise ProviderUnavailable(
            f"deployment {dep.id} ({dep.model}) needs an API key: set the environment "
            f"variable {secret.env or '?'}")
    return secret.value


def transport_error(exc: httpx.HTTPError, call: ProviderCall) -> UpstreamError:
    """A connection-level failure as an UpstreamError (status None) or UpstreamTimeout."""
    where = call.deployment.id
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{where}: timed out after {call.timeout_s:g}s "
                               f"({type(exc).__name__})")
    return UpstreamError(f"{where}: {type(exc).__name__}: {exc}")


def error_from_response(response: httpx.Response, call: ProviderCall,
                        context_markers: tuple[str, ...] = ()) -> CompletionError:
    """An error status as the matching CompletionError.

    A context-window overflow is recognised by OpenAI's structured error code
    `context_length_exceeded`, or by a provider's documented message prefixes.
    """
    status = response.status_code
    raw = response.text[:2000]
    # Read before the secret is blanked out of the text: it could be part of a code.
    error = _error_object(raw)
    code = _token(error.get("code"))
    text = without_secret(raw, call.deployment)
    retry_after = parse_retry_after(response.headers)
    message = without_secret(str(error.get("message") or raw[:200]), call.deployment)
    where = f"{call.deployment.id}: HTTP {status}: {message}"
    if status in (401, 403):
        return AuthenticationError(where, status=status)
    if status == 429:
        return RateLimited(where, status=status, retry_after_s=retry_after, body=text,
                           upstream_code=code)
    if status == 408:
        return UpstreamTimeout(where, status=status, retry_after_s=retry_after, body=text)
    if status in (400, 413) and (code == "context_length_exceeded" or any(
            message.startswith(m) for m in context_markers)):
        return ContextWindowExceeded(where, status=status, body=text, upstream_code=code)
    if status in (400, 422):
        return UpstreamRejected(where, status=status, body=text, upstream_code=code,
                                param=_token(error.get("param")) or None)
    return UpstreamError(where, status=status, retry_after_s=retry_after, body=text,
                         upstream_code=code)


def _token(value: Any) -> str:
    """An upstream's `code` or `param`: a short printable name, else ""."""
    text = value if isinstance(value, str) else ""
    return text if len(text) <= 128 and text.isprintable() else ""


def _error_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


async def sse_events(response: httpx.Response | AsyncIterable[bytes],
                     ) -> AsyncGenerator[tuple[str, str], None]:
    """Server-sent events as (event, data) pairs; `event` is "" when not named.

    `response` is an httpx response, or an unencoded body as it arrives (the lean road's
    `ResponseStream`).

    Lines end with LF, CRLF or CR (as `Response.aiter_lines` splits them) and are decoded
    as UTF-8, the encoding the SSE format prescribes, one whole line at a time. An
    unencoded body is read as it comes: httpx's text decoding (which parses the
    Content-Type's charset per response) and line splitting cost more than the rest of
    a streamed chunk's way through the mesh.
    """
    parser = _EventParser()
    pending = b""
    async for chunk in _body_chunks(response):
        if len(pending) + len(chunk) > MAX_REPLY_BYTES or parser.size > MAX_REPLY_BYTES:
            raise ReplyTooLarge(f"a streamed event is over {MAX_REPLY_BYTES} bytes")
        text = pending + chunk
        held = b"\r" if text.endswith(b"\r") else b""  # maybe the first half of a CRLF
        lines = text[:len(text) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        complete = lines.split(b"\n")
        pending = complete.pop() + held  # what follows the last line end (if any)
        for line in complete:
            done = parser.line(line)
            if done is not None:
                yield done
    if pending:
        done = parser.line(pending.rstrip(b"\r"))
        if done is not None:
            yield done
    done = parser.line(b"")  # the end of the body ends the last event
    if done is not None:
        yield done


class _EventParser:
    """The fields of the event being read, line by line."""

    __slots__ = ("data", "event", "size")

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []
        #: Characters of `data` so far (an event never ended must not grow for ever).
        self.size = 0

    def line(self, raw: bytes) -> tuple[str, str] | None:
        """Take one line (without its end); the event it completes, if any."""
        if not raw:
            if not self.data:
                self.event = ""
                return None
            done = self.event, "\n".join(self.data)
            self.event, self.data, self.size = "", [], 0
            return done
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self.data.append(value)
            self.size += len(value)
        elif name == "event":
            self.event = value
        return None


async def _body_chunks(response: httpx.Response | AsyncIterable[bytes],
                       ) -> AsyncIterator[bytes]:
    """The response body as it arrives: decoded by httpx when it has a content encoding,
    else the transport's chunks as they are."""
    if not isinstance(response, httpx.Response):
        async for chunk in response:
            yield chunk
        return
    if "content-encoding" in response.headers:
        async for chunk in response.aiter_bytes():
            yield chunk
        return
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    async for chunk in stream:
        yield chunk


#: A UTF-16 surrogate: half of a character, which no protobuf string (nor UTF-8) holds.
_SURROGATE = re.compile("[\ud800-\udfff]")
#: What a half alone is read as: the replacement character, as UTF-8's errors="replace".
_REPLACEMENT = "\ufffd"


def parse_json(raw: bytes | str) -> tuple[Any, bool]:
    """`json.loads(raw)`, by orjson when it can (NaN, huge integers, ... fall back to
    json), and whether its texts may hold a lone surrogate: orjson refuses those, so only
    what `json` read may (see the module docstring). ValueError when `raw` is no JSON."""
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw), True
        except RecursionError:  # orjson refused it for its depth too: a ValueError as it
            raise ValueError("JSON nested too deeply to read") from None


def load_json(raw: bytes | str) -> Any:
    """`parse_json(raw)`'s value, each lone surrogate in it as U+FFFD (`mended`): a whole
    reply, in which no pair can be cut."""
    value, unsure = parse_json(raw)
    if not unsure:
        return value
    try:
        return mended(value)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def mended(value: Any) -> Any:
    """`value` (JSON as `json` reads it) with each lone surrogate of its texts, keys
    included, as U+FFFD, and each pair as its character."""
    if isinstance(value, str):
        return value if value.isascii() or not _SURROGATE.search(value) else _mend(value)
    if isinstance(value, dict):
        return {mended(k): mended(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mended(v) for v in value]
    return value


def _mend(text: str) -> str:
    """`text` with each surrogate pair as its character, each half alone as U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


_K = TypeVar("_K", bound=Hashable)


class Halves(Generic[_K]):
    """The high halves of surrogate pairs a stream cut, each waiting for its other half
    in the next text of the same place (a key of the reader's: a tool call's arguments, a
    content block's JSON)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: dict[_K, str] = {}

    def join(self, key: _K, text: str) -> str:
        """`text` after the half `key`'s last text ended with, up to a high half it ends
        with (kept for `key`'s next text); a half alone as U+FFFD."""
        text = self.held.pop(key, "") + text
        if text and "\ud800" <= text[-1] <= "\udbff":
            self.held[key] = text[-1]
            text = text[:-1]
        return text if text.isascii() or not _SURROGATE.search(text) else _mend(text)

    def end(self, key: _K) -> str:
        """U+FFFD when a half of `key` was waiting (its text has ended without its other
        half), else ""."""
        return _REPLACEMENT if self.held.pop(key, None) is not None else ""
