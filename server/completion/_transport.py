"""An `httpx.AsyncBaseTransport` over one `aiohttp.ClientSession` (a TCPConnector pool).

httpx stays the API the providers use; aiohttp does the connection work. httpcore's pool
scans every connection on each request and release (~1 ms CPU per request at 64 open
connections); aiohttp's connector keeps idle connections per host in a queue.

Contract kept from httpcore:

- the response body is streamed as it arrives (`iter_any`), never buffered;
- `aclose()` before the body's end closes the connection at once, so the upstream sees
  the disconnect (a cancelled consumer closes its response in a `finally`);
- the request's httpx timeouts apply: `connect` to connecting, `read` to every read;
- aiohttp's errors become the httpx exceptions the providers catch (`ConnectError`,
  `ConnectTimeout`, `ReadTimeout`, `RemoteProtocolError`, ...).

Content decoding is left to httpx (`auto_decompress=False`), redirects are not followed
(as with httpx's default), and no cookies are kept.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
from yarl import URL

__all__ = ["AiohttpTransport"]


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp connection pool, created lazily inside the running event loop."""

    def __init__(self, *, max_connections: int = 1024, keepalive_expiry_s: float = 30.0,
                 verify: ssl.SSLContext | bool = True) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        verify = self._verify
        # The same CA bundle as httpx (certifi), not the system store.
        context = httpx.create_ssl_context() if verify is True else verify
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry_s, ssl=context)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        timeout = request.extensions.get("timeout") or {}
        connect, read = timeout.get("connect"), timeout.get("read")
        pool = timeout.get("pool")
        try:
            data: bytes | AsyncIterator[bytes] = request.content
        except httpx.RequestNotRead:
            data = _body(request)
        try:
            response = await session.request(
                request.method, URL(str(request.url), encoded=True),
                headers=[(k.decode("latin-1"), v.decode("latin-1"))
                         for k, v in request.headers.raw], data=data, allow_redirects=False,
                compress=None, chunked=None,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=pool, sock_connect=connect, sock_read=read))
        except aiohttp.ClientError as exc:
            raise _map_error(exc, request, connecting=True) from exc
        except TimeoutError as exc:  # not cancellation: aiohttp's own timer
            raise httpx.ConnectTimeout(str(exc) or "timed out", request=request) from exc
        return httpx.Response(
            response.status, headers=response.raw_headers,
            stream=_ResponseStream(response, request), request=request,
            extensions={"http_version": b"HTTP/1.1",
                        "reason_phrase": (response.reason or "").encode("latin-1", "replace")})

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class _ResponseStream(httpx.AsyncByteStream):
    """The body as it arrives; closing it early closes the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except aiohttp.ClientError as exc:
            raise _map_error(exc, self._request, connecting=False) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out", request=self._request) from exc

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()  # back to the pool
        else:
            response.close()  # unread body: drop the connection now


async def _body(request: httpx.Request) -> AsyncIterator[bytes]:
    assert isinstance(request.stream, httpx.AsyncByteStream)
    async for chunk in request.stream:
        yield chunk


def _map_error(exc: aiohttp.ClientError, request: httpx.Request, *,
               connecting: bool) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    error: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        error = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        error = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        error = httpx.ConnectError
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                    | aiohttp.ClientResponseError):
        error = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientOSError):
        error = httpx.WriteError if connecting else httpx.ReadError
    else:
        error = httpx.ConnectError if connecting else httpx.ReadError
    return error(message, request=request)
