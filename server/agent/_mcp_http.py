"""The HTTP client of a streamable-HTTP MCP server, whose replies are read up to a limit.

The MCP SDK reads a JSON reply whole, however long (one that never ends, until the memory
runs out), and fails an SSE event past its own limit as a lost connection. Each HTTP
request goes through `BoundedTransport` instead: the reply to a JSON-RPC request (its JSON
body, or its whole SSE stream, notifications included) is read, decoded, up to `limit`
bytes. Past it, what the SDK gets in its place is a JSON-RPC error answering the same
request id, naming the server and the limit (as `_mcp_guard.py` does for a stdio server):
that call fails and the session goes on. Another body past the limit (the server's GET
stream aside, whose events the SDK bounds itself) fails its request.

A client with its own transport reads no proxy from the environment (`HTTP_PROXY`, ...):
the transport is given the one the environment names for the server's URL, as the
provider calls are (`server/egress.py`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx2

from ..egress import proxy_for, unusable

__all__ = ["BoundedTransport", "ReplyTooLarge", "bounded_client"]

#: The SDK's default client's timeouts: 30 s, but 300 s between reads of a stream.
_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
#: JSON-RPC's "internal error", as the stdio line guard answers an oversized line.
_INTERNAL_ERROR = -32603
#: Where an event ends in an SSE stream whose line ends are made "\n".
_EVENT_END = b"\n\n"


class ReplyTooLarge(httpx2.TransportError):
    """A body that answers no JSON-RPC request passed the limit."""


def bounded_client(server: str, limit: int, url: str) -> httpx2.AsyncClient:
    """An HTTP client for MCP server `server` at `url`, with the SDK's default timeouts."""
    proxy = proxy_for(url)
    try:
        transport = httpx2.AsyncHTTPTransport(proxy=proxy)
    except (ImportError, ValueError) as exc:  # socks:// without socksio, a bad URL
        assert proxy is not None  # a transport without a proxy takes no URL to refuse
        raise ValueError(unusable(proxy, exc)) from None
    return httpx2.AsyncClient(
        transport=BoundedTransport(server, limit, transport),
        timeout=_TIMEOUT)


class BoundedTransport(httpx2.AsyncBaseTransport):
    """`inner`, with each response body read (decoded) no further than `limit` bytes."""

    def __init__(self, server: str, limit: int, inner: httpx2.AsyncBaseTransport) -> None:
        self._server = server
        self._limit = limit
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        response.request = request
        # The body is handed on decoded: the limit is on what the SDK would hold.
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in ("content-encoding", "content-length")]
        request_id = _request_id(request)
        sse = response.headers.get("content-type", "").partition(";")[0].strip().lower() \
            == "text/event-stream"
        if sse and request_id is None:  # the GET stream: the SDK bounds each event
            body: httpx2.AsyncByteStream = _Decoded(response)
        else:
            body = _Reply(response, request_id, sse=sse, limit=self._limit,
                          too_large=f"MCP server {self._server!r} sent a reply over "
                                    f"{self._limit} bytes")
        return httpx2.Response(response.status_code, headers=headers, stream=body,
                               extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _request_id(request: httpx2.Request) -> bytes | None:
    """The JSON-RPC id (as JSON) of the request `request` carries; None if it carries none."""
    if request.method != "POST":
        return None
    try:
        message = json.loads(request.content)
    except (ValueError, httpx2.RequestNotRead):
        return None
    if not isinstance(message, dict) or "method" not in message \
            or not isinstance(message.get("id"), int | str):
        return None
    return json.dumps(message["id"]).encode()


class _Decoded(httpx2.AsyncByteStream):
    """A response's body, decoded."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.aiter_bytes():
            yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class _Reply(_Decoded):
    """A body no longer than `limit` bytes, decoded. A JSON body is passed on whole, an SSE
    stream an event at a time, so that past the limit a JSON-RPC error answering
    `request_id` takes the place of the rest (with no id: ReplyTooLarge)."""

    def __init__(self, response: httpx2.Response, request_id: bytes | None, *, sse: bool,
                 limit: int, too_large: str) -> None:
        super().__init__(response)
        self._request_id = request_id
        self._sse = sse
        self._limit = limit
        self._too_large = too_large

    async def __aiter__(self) -> AsyncIterator[bytes]:
        held = bytearray()  # the event in progress; the whole body if not SSE
        size = 0
        cr = False  # the last chunk ended in "\r" (held back: "\r\n" may be split)
        async for chunk in self._response.aiter_bytes():
            size += len(chunk)
            if size > self._limit:
                await self._response.aclose()  # the rest is not read
                if self._request_id is None:
                    raise ReplyTooLarge(self._too_large)
                yield self._error()
                return
            if not self._sse:
                held += chunk
                continue
            # An SSE line ends in "\r\n", "\n" or "\r": made "\n", an event ends in "\n\n".
            text = (b"\r" if cr else b"") + chunk
            cr = text.endswith(b"\r")
            text = (text[:-1] if cr else text).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            searched = max(0, len(held) - 1)
            held += text
            end = held.rfind(_EVENT_END, searched)
            if end >= 0:
                yield bytes(held[:end + len(_EVENT_END)])
                del held[:end + len(_EVENT_END)]
        if held or cr:
            yield bytes(held) + (b"\n" if cr else b"")

    def _error(self) -> bytes:
        assert self._request_id is not None
        error = json.dumps({"code": _INTERNAL_ERROR, "message": self._too_large}).encode()
        message = b'{"jsonrpc":"2.0","id":' + self._request_id + b',"error":' + error + b"}"
        return b"event: message\ndata: " + message + b"\n\n" if self._sse else message
