"""An `httpx.AsyncBaseTransport` written on asyncio: one `asyncio.Protocol` per HTTP/1.1
connection, responses parsed by `httptools` (llhttp, uvicorn's parser).

httpx stays the API the providers use; this module does the connection work. httpcore's
pool scans every connection on each request and release (~1 ms CPU per request at 64 open
connections) and aiohttp under httpx costs ~200 µs per request; here a request is one
`transport.write` and one wait for the response head, and a pooled connection is taken and
given back with one dict operation each (`bench/transport_bench.py` measures it against
the aiohttp transport it replaced).

Contract:

- HTTP/1.1 with keep-alive. Idle connections are kept per (scheme, host, port) and reused
  newest first; at most `max_connections` are open or opening (when all are taken, an idle
  connection to another origin is closed to make room); waiting for a slot is bounded by
  the `pool` timeout (`PoolTimeout`). Idle connections are closed after
  `keepalive_expiry_s`; one the server closed, or that received bytes while idle, is never
  reused.
- A request with an idempotent method (GET, HEAD, OPTIONS, PUT, DELETE, TRACE: RFC 9110
  §9.2.2) on a reused connection that meets EOF or a reset before any response byte is sent
  once more on a new connection (the server closed the idle connection as the request went
  out). Any other request (POST, PATCH: the upstream may have acted on it, e.g. run and
  billed a completion) fails instead, as does one with a streamed body (it cannot be
  replayed); whether to retry those is the caller's decision.
- The request goes out as given: method, `url.raw_path`, `headers.raw` (httpx adds Host and
  Content-Length or Transfer-Encoding). A read body is written with the head in one
  `transport.write`; a streamed body as it comes, chunked when it has no Content-Length.
  A CR or LF inside the head is refused (`LocalProtocolError`).
- The response body is streamed as it arrives, never buffered whole: reading pauses while
  more than 256 KiB is unread. Content-Length, chunked and read-until-close bodies (only
  the server's close ends the last one: closed on this side, e.g. by `aclose()`, the read
  fails); HEAD, 1xx, 204 and 304 responses have none (informational 1xx responses are
  skipped). Content decoding is left to httpx, as are redirects (not followed by default)
  and cookies.
- `aclose()` of the response before the body's end closes the connection at once, so the
  upstream sees the disconnect; so does a cancelled or timed-out read. A response read to
  its end gives its connection back to the pool unless the server asked to close it (or
  the request was HEAD: the connection is then closed).
- The request's httpx timeouts apply: `connect` to connecting (TCP and TLS), `read` to
  every wait for response bytes, `write` to every wait for a streamed body to drain,
  `pool` to waiting for a connection slot.
- Failures are the httpx exceptions the providers catch: `ConnectError`, `ConnectTimeout`,
  `ReadTimeout`, `ReadError` (reset), `WriteTimeout`, `RemoteProtocolError` (malformed
  reply, disconnect before or inside the response), `PoolTimeout`.
- TLS verifies against httpx's CA bundle (`httpx.create_ssl_context()`) for `verify=True`,
  uses a given `ssl.SSLContext` as is, or does not verify for `verify=False`; the server
  name (SNI and the name checked) is the URL's host.

The transport is created outside an event loop and binds to the loop of its first request;
`aclose()` closes every connection, failing the exchanges under way (the pool may be used
again afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections import deque
from typing import Any, cast

import httptools
import httpx

__all__ = ["PooledTransport"]

_Origin = tuple[str, bytes, int]  # scheme, host (IDNA), port

_DEFAULT_PORTS = {"http": 80, "https": 443}
_NO_TIMEOUTS: dict[str, float | None] = {}
_HIGH_WATER = 256 * 1024  # unread response bytes above which reading pauses
_UNCONNECTED = asyncio.Transport()  # a connection's transport until connection_made
# Methods whose request may be sent twice (RFC 9110 §9.2.2): the only ones retried.
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))


class PooledTransport(httpx.AsyncBaseTransport):
    """Pooled HTTP/1.1 connections, bound lazily to the running event loop."""

    def __init__(self, *, max_connections: int = 1024, keepalive_expiry_s: float = 30.0,
                 verify: ssl.SSLContext | bool = True) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        self._verify = verify
        self._ssl_context: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[_Connection] = set()  # open or opening
        self._idle: dict[_Origin, dict[_Connection, None]] = {}  # oldest first
        self._waiters: deque[asyncio.Future[bool]] = deque()  # for a slot, first come first
        self._sweeper: asyncio.TimerHandle | None = None  # closes expired idle connections

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        timeout = request.extensions.get("timeout") or _NO_TIMEOUTS
        url = request.url
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
        if port is None:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}",
                                            request=request)
        origin = (url.scheme, url.raw_host, port)
        head = _head(request)
        stream: httpx.AsyncByteStream | None = None
        chunked = False
        try:
            payload = b"".join((head, b"\r\n\r\n", request.content))
        except httpx.RequestNotRead:
            assert isinstance(request.stream, httpx.AsyncByteStream)
            stream = request.stream
            chunked = "content-length" not in request.headers
            extra = (b"Transfer-Encoding: chunked\r\n"
                     if chunked and "transfer-encoding" not in request.headers else b"")
            payload = b"".join((head, b"\r\n", extra, b"\r\n"))
        read = timeout.get("read")
        connection = await self._checkout(origin, request, timeout, fresh=False)
        try:
            if stream is None:
                connection.start(request, payload)
            else:
                await connection.start_streaming(request, payload, stream, chunked,
                                                 timeout.get("write"))
            await connection.receive_head(read)
        except httpx.TransportError:
            connection.close()
            if (stream is not None or request.method not in _IDEMPOTENT
                    or not connection.closed_before_reply_on_reuse()):
                raise
            # The server closed the idle connection as the request went out: once more.
            connection = await self._checkout(origin, request, timeout, fresh=True)
            connection.start(request, payload)
            await connection.receive_head(read)
        except BaseException:
            connection.close()
            raise
        return httpx.Response(
            connection.status, headers=connection.headers,
            stream=_ResponseStream(connection, read), request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason})

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._connections):
            connection.close(abort=True)
        await asyncio.sleep(0)  # the transports' connection_lost runs: sockets closed

    # --- the pool ---

    async def _checkout(self, origin: _Origin, request: httpx.Request,
                        timeout: dict[str, float | None], *, fresh: bool) -> _Connection:
        """An idle connection to `origin` (unless `fresh`), else a new one once a slot frees."""
        loop = self._loop
        assert loop is not None
        deadline: float | None = None
        while True:
            idle = None if fresh else self._idle.get(origin)
            while idle:
                connection = idle.popitem()[0]  # the newest
                if not connection.transport.is_closing():
                    return connection
                connection.close()
            if len(self._connections) < self._max_connections or self._evict():
                return await self._connect(origin, request, timeout.get("connect"))
            if deadline is None:
                pool = timeout.get("pool")
                deadline = math.inf if pool is None else loop.time() + pool
            if not await self._wait_for_slot(loop, deadline):
                raise httpx.PoolTimeout("no connection slot free in time", request=request)

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop, deadline: float) -> bool:
        """Wait until a connection is closed or pooled; False once `deadline` has passed."""
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if deadline == math.inf else loop.call_at(deadline, _expire, waiter)
        try:
            woken = await waiter
        except asyncio.CancelledError:
            if waiter.cancelled() or not waiter.result():
                self._forget(waiter)
            else:
                self._wake()  # woken, then cancelled: pass the turn on
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not woken:
            self._forget(waiter)
        return woken

    def _forget(self, waiter: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return

    def _evict(self) -> bool:
        """Close an idle connection (the oldest of its origin) to free a slot."""
        for idle in self._idle.values():
            if idle:
                next(iter(idle)).close()
                return True
        return False

    async def _connect(self, origin: _Origin, request: httpx.Request,
                       timeout: float | None) -> _Connection:
        loop = self._loop
        assert loop is not None
        scheme, raw_host, port = origin
        host = raw_host.decode("ascii")
        tls = scheme == "https"
        connection = _Connection(self, loop, origin)
        self._connections.add(connection)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: connection, host, port, ssl=self._tls() if tls else None,
                    server_hostname=host if tls else None)
        except TimeoutError as exc:
            connection.close()
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out",
                                       request=request) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            connection.close()
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        except BaseException:
            connection.close()
            raise
        if connection.closed:  # the transport was closed while connecting
            connection.transport.close()
            raise httpx.ConnectError("the transport was closed", request=request)
        return connection

    def _tls(self) -> ssl.SSLContext:
        context = self._ssl_context
        if context is None:
            verify = self._verify
            context = self._ssl_context = (
                verify if isinstance(verify, ssl.SSLContext)
                else httpx.create_ssl_context(verify=verify))
        return context

    def _pool(self, connection: _Connection) -> None:
        """`connection` is idle: keep it for the next request to its origin."""
        loop = self._loop
        assert loop is not None
        connection.idle_since = now = loop.time()
        idle = self._idle.get(connection.origin)
        if idle is None:
            idle = self._idle[connection.origin] = {}
        idle[connection] = None
        if self._sweeper is None:
            self._sweeper = loop.call_at(now + self._keepalive_expiry_s, self._sweep)
        if self._waiters:
            self._wake()

    def _drop(self, connection: _Connection) -> None:
        """`connection` is closed: forget it and free its slot."""
        self._connections.discard(connection)
        idle = self._idle.get(connection.origin)
        if idle:
            idle.pop(connection, None)
        if self._waiters:
            self._wake()

    def _sweep(self) -> None:
        """Close the idle connections that expired; come back when the next one will."""
        loop = self._loop
        assert loop is not None
        self._sweeper = None
        now, expiry = loop.time(), self._keepalive_expiry_s
        next_at = math.inf
        for idle in self._idle.values():
            for connection in list(idle):  # oldest first
                expires_at = connection.idle_since + expiry
                if expires_at > now:
                    next_at = min(next_at, expires_at)
                    break
                connection.close()
        if next_at < math.inf:
            self._sweeper = loop.call_at(next_at, self._sweep)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request and response at a time.

    The response is parsed as bytes arrive (httptools callbacks): the head, then body
    chunks queued for `read`. Whoever waits for bytes waits on `_waiter`.
    """

    __slots__ = (
        "_body", "_buffered", "_chunked_or_sized", "_error", "_exchanges", "_head_only",
        "_keep_alive", "_loop", "_lost", "_lost_exc", "_paused", "_pool", "_received",
        "_request", "_waiter", "_write_paused", "closed", "complete", "head_done",
        "headers", "idle_since", "origin", "parser", "reason", "status", "transport")

    def __init__(self, pool: PooledTransport, loop: asyncio.AbstractEventLoop,
                 origin: _Origin) -> None:
        self._pool = pool
        self._loop = loop
        self.origin = origin
        self.transport: asyncio.Transport = _UNCONNECTED
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False  # by us or the peer: never reused
        self.idle_since = 0.0
        self._lost = False  # connection_lost seen
        self._lost_exc: Exception | None = None
        self._error: Exception | None = None  # a malformed response
        self._waiter: asyncio.Future[bool] | None = None
        self._write_paused = False
        self._exchanges = 0
        # The exchange under way (reset by `_begin`, the message by `on_message_begin`).
        self._request: httpx.Request | None = None
        self._head_only = False
        self._received = False  # any response byte
        self.head_done = False  # the final (non-1xx) response head
        self.complete = False  # the final response's end
        self._keep_alive = False
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunked_or_sized = False  # else the body runs until the connection closes
        self._body: list[bytes] = []
        self._buffered = 0
        self._paused = False

    # --- the exchange, driven by the request's task ---

    def start(self, request: httpx.Request, payload: bytes) -> None:
        """Send `request` (head and body in `payload`)."""
        self._begin(request)
        self.transport.write(payload)

    async def start_streaming(self, request: httpx.Request, head: bytes,
                              stream: httpx.AsyncByteStream, chunked: bool,
                              timeout: float | None) -> None:
        """Send `request`'s head, then its body as `stream` yields it."""
        self._begin(request)
        write = self.transport.write
        write(head)
        async for chunk in stream:
            if self.closed:
                return  # the response, or its absence, tells what happened
            if chunk:
                write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                while self._write_paused and not self.closed:
                    await self._wait(timeout, httpx.WriteTimeout)
        if chunked and not self.closed:
            write(b"0\r\n\r\n")

    def _begin(self, request: httpx.Request) -> None:
        self._request = request
        self._head_only = request.method == "HEAD"
        self._exchanges += 1
        self._received = self.head_done = self.complete = self._keep_alive = False

    async def receive_head(self, timeout: float | None) -> None:
        """Wait for the final response head; on failure the connection is closed."""
        while not self.head_done:
            if self.closed:
                raise self._failure()
            await self._wait(timeout, httpx.ReadTimeout)

    def closed_before_reply_on_reuse(self) -> bool:
        """The peer closed this reused connection before any byte of the response."""
        return (self._lost and self._exchanges > 1 and not self._received
                and self._error is None)

    async def read(self, timeout: float | None) -> bytes:
        """The body bytes received since the last read, waiting for some; b"" at the end."""
        while True:
            body = self._body
            if body:
                data = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    if not self.closed:
                        self.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self.closed:
                raise self._failure()
            await self._wait(timeout, httpx.ReadTimeout)

    def release(self) -> None:
        """The response is done with: pool the connection if it may be kept, else close it."""
        self._request = None
        if self.complete and self._keep_alive and not self.closed:
            self._body.clear()
            self._buffered = 0
            if self._paused:
                self._paused = False
                self.transport.resume_reading()
            self._pool._pool(self)
        else:
            self.close()

    def close(self, *, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self._pool._drop(self)
            if self.transport is not _UNCONNECTED:  # else `_connect` closes it on arrival
                if abort:
                    self.transport.abort()
                else:
                    self.transport.close()
            self._wake()

    async def _wait(self, timeout: float | None, error: type[httpx.TimeoutException]) -> None:
        """Wait for the next event (bytes, EOF, drained); `error` after `timeout` seconds.

        A timeout or a cancellation abandons the exchange: the connection is closed.
        """
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            arrived = await waiter
        except asyncio.CancelledError:
            self.close()
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if not arrived:
            self.close()
            raise error("timed out", request=self._request)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _failure(self) -> httpx.TransportError:
        """Why the connection closed under the exchange."""
        request = self._request
        if self._error is not None:
            return httpx.RemoteProtocolError(f"malformed response: {self._error}",
                                             request=request)
        if self._lost_exc is not None:
            return httpx.ReadError(str(self._lost_exc) or type(self._lost_exc).__name__,
                                   request=request)
        where = "inside the response body" if self.head_done else "before a response"
        return httpx.RemoteProtocolError(f"the connection closed {where}", request=request)

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self._request is None:  # idle: nothing is due
            self.close()
            return
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # 101: what follows is another protocol
            self._keep_alive = False
        except httptools.HttpParserError as exc:
            self._error = exc
            self.close()
        if self._buffered > _HIGH_WATER and not self._paused and not self.closed:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._lost_exc = exc
        if self.head_done and not self._chunked_or_sized and exc is None and not self.closed:
            self.complete = True  # a body read until the server closes the connection
        self.close()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        if self.head_done:
            raise RuntimeError("a second response to one request")
        self.headers = []
        self.reason = b""
        self._chunked_or_sized = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(name) == 14 or len(name) == 17:
            name = name.lower()
            if name == b"content-length" or (
                    name == b"transfer-encoding" and b"chunked" in value.lower()):
                self._chunked_or_sized = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            return  # informational: the final response follows
        self.status = status
        self.head_done = True
        if self._head_only:  # llhttp cannot be told the body is absent: close after
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if not self.complete:  # (a HEAD response's body is not one)
            self._body.append(body)
            self._buffered += len(body)

    def on_message_complete(self) -> None:
        if self.head_done and not self.complete:
            self.complete = True
            self._keep_alive = self.parser.should_keep_alive()


class _ResponseStream(httpx.AsyncByteStream):
    """The body as it arrives; closing it before its end drops the connection."""

    def __init__(self, connection: _Connection, timeout: float | None) -> None:
        self._connection: _Connection | None = connection
        self._timeout = timeout

    def __aiter__(self) -> _ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        if connection is not None:
            data = await connection.read(self._timeout)
            if data:
                return data
        raise StopAsyncIteration

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.release()


def _head(request: httpx.Request) -> bytes:
    """The request line and header lines, CRLF between them (not after the last)."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [b"%s: %s" % header for header in request.headers.raw]
    head = b"\r\n".join(lines)
    breaks = len(lines) - 1
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
        raise httpx.LocalProtocolError("CR or LF inside a request header", request=request)
    return head


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(False)
