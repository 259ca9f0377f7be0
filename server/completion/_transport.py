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
  With other exchanges under way, the read bodies of the requests one turn of the loop
  starts are written together at the turn's end (`send`); an exchange alone, at once.
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
- `exchange(request, payload, timeout)` is the same exchange for a caller that has the
  request's bytes ready and wants the whole reply at once: status, raw headers and the
  body as received (buffered whole; not decoded), with no httpx response or body stream;
  `open(...)` gives status, raw headers and the body stream instead. `OpenAIProvider`
  sends its calls this way.
- TLS verifies against httpx's CA bundle (`httpx.create_ssl_context()`) for `verify=True`,
  uses a given `ssl.SSLContext` as is, or does not verify for `verify=False`; the server
  name (SNI and the name checked) is the URL's host.

The pool is here; each connection, its parser and the response body stream are in
_connection.py. The transport is created outside an event loop and binds to the loop of its
first request; `aclose()` closes every connection, failing the exchanges under way (the pool
may be used again afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections import deque

import httpx

from ._connection import Connection, Origin, ResponseStream, expire, request_head

__all__ = ["MAX_REPLY_BYTES", "PooledTransport", "ReplyTooLarge"]

#: The most bytes a provider's reply (a whole unary body, decoded, or one streamed event)
#: may take; past it the call fails with UpstreamError instead of filling the memory.
MAX_REPLY_BYTES = 64 * 1024 * 1024


class ReplyTooLarge(httpx.HTTPError):
    """A provider's reply passed MAX_REPLY_BYTES (a broken upstream: a completion is far
    smaller). An httpx error, so that every provider reports it as a transport failure."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_NO_TIMEOUTS: dict[str, float | None] = {}
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
        self._connections: set[Connection] = set()  # open or opening
        self._idle: dict[Origin, dict[Connection, None]] = {}  # oldest first
        self._waiters: deque[asyncio.Future[bool]] = deque()  # for a slot, first come first
        self._sweeper: asyncio.TimerHandle | None = None  # closes expired idle connections
        self._outbox: list[tuple[Connection, bytes]] = []  # written at the turn's end

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin, timeout = self._target(request)
        head = request_head(request)
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
        connection = await self._send(origin, request, timeout, payload, stream, chunked)
        return httpx.Response(
            connection.status, headers=connection.headers,
            stream=ResponseStream(connection, read), request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason})

    async def exchange(self, request: httpx.Request, payload: bytes,
                       timeout: float | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """`request` sent as `payload`, answered in full: status, raw headers and body.

        The lean road of a small unary call (`OpenAIProvider.complete`): no httpx response,
        header normalisation or body stream (`bench/transport_bench.py` measures it).
        `payload` is the request's head and whole body, ready to write (the head through
        `request_head`); `request` gives the origin, the method and the errors' context,
        and `timeout` applies as all four httpx timeouts. The body is returned as received
        (content decoding is the caller's, as with httpx); the rest of the contract holds.
        """
        connection = await self._start(request, payload, timeout)
        chunks: list[bytes] = []
        size = 0
        try:  # the connection's reads, without a body stream around them
            while data := await connection.read(timeout):
                chunks.append(data)
                size += len(data)
                if size > MAX_REPLY_BYTES:
                    raise ReplyTooLarge(f"the reply is over {MAX_REPLY_BYTES} bytes")
        except BaseException:
            connection.close()
            raise
        status, headers = connection.status, connection.headers
        connection.release()
        return status, headers, chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def open(self, request: httpx.Request, payload: bytes, timeout: float | None,
                   ) -> tuple[int, list[tuple[bytes, bytes]], ResponseStream]:
        """As `exchange`, with the body left to read as it arrives (a stream's road): the
        returned `ResponseStream` must be closed; closed before its end, it drops the
        connection."""
        connection = await self._start(request, payload, timeout)
        return connection.status, connection.headers, ResponseStream(connection, timeout)

    async def _start(self, request: httpx.Request, payload: bytes,
                     timeout: float | None) -> Connection:
        """`_send` for `exchange` and `open`: `timeout` as all four httpx timeouts."""
        limits = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        origin, _ = self._target(request)
        return await self._send(origin, request, limits, payload, None, False)

    def _target(self, request: httpx.Request) -> tuple[Origin, dict[str, float | None]]:
        """Where `request` goes and its timeouts (binding the pool to the running loop)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        url = request.url
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
        if port is None:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}",
                                            request=request)
        return (url.scheme, url.raw_host, port), request.extensions.get("timeout") or _NO_TIMEOUTS

    async def _send(self, origin: Origin, request: httpx.Request,
                    timeout: dict[str, float | None], payload: bytes,
                    stream: httpx.AsyncByteStream | None, chunked: bool) -> Connection:
        """A connection that sent `request` and received its response head."""
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
        return connection

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._connections):
            connection.close(abort=True)
        await asyncio.sleep(0)  # the transports' connection_lost runs: sockets closed

    # --- the pool ---

    async def _checkout(self, origin: Origin, request: httpx.Request,
                        timeout: dict[str, float | None], *, fresh: bool) -> Connection:
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
        timer = None if deadline == math.inf else loop.call_at(deadline, expire, waiter)
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

    async def _connect(self, origin: Origin, request: httpx.Request,
                       timeout: float | None) -> Connection:
        loop = self._loop
        assert loop is not None
        scheme, raw_host, port = origin
        host = raw_host.decode("ascii")
        tls = scheme == "https"
        connection = Connection(self, loop, origin)
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

    def keep_idle(self, connection: Connection) -> None:
        """`connection` is idle: keep it for the next request to its origin (Owner)."""
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

    def send(self, connection: Connection, payload: bytes) -> None:
        """Write a request's bytes at the end of this turn of the loop, together with the
        other requests the turn started (Owner).

        Under load a turn of the loop starts many exchanges. Written one by one as each
        was ready, every write found a co-located upstream (a local model server; the
        bench's nginx) asleep and woke it for that one request, a wake-up paid inside the
        write's system call; written together, the upstream wakes once for all of them
        (bench/README.md has the figures). The only exchange under way has nothing to
        wait for: its bytes go out at once.
        """
        outbox = self._outbox
        if not outbox:
            if len(self._connections) - sum(map(len, self._idle.values())) <= 1:
                connection.write(payload)  # alone (one request at a time: c=1)
                return
            loop = self._loop
            assert loop is not None
            loop.call_soon(self._flush)
        outbox.append((connection, payload))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        for connection, payload in outbox:
            connection.write(payload)

    def drop(self, connection: Connection) -> None:
        """`connection` is closed: forget it and free its slot (Owner)."""
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
