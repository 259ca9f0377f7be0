"""One pooled HTTP/1.1 connection of `PooledTransport` (see _transport.py for the
contract): an `asyncio.Protocol` whose response is parsed by httptools as bytes arrive,
one request and response at a time, and the response body as an httpx byte stream."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast

import httptools
import httpx

__all__ = ["Connection", "Origin", "Owner", "ResponseStream", "expire", "request_head"]

Origin = tuple[str, bytes, int]  # scheme, host (IDNA), port

_HIGH_WATER = 256 * 1024  # unread response bytes above which reading pauses
UNCONNECTED = asyncio.Transport()  # a connection's transport until connection_made


class Owner(Protocol):
    """The pool a connection reports to."""

    def keep_idle(self, connection: Connection) -> None:
        """`connection` finished an exchange and may be reused."""

    def drop(self, connection: Connection) -> None:
        """`connection` is closed."""

    def send(self, connection: Connection, payload: bytes) -> None:
        """Write `payload` on `connection` (`Connection.write`), now or soon."""


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request and response at a time.

    The response is parsed as bytes arrive (httptools callbacks): the head, then body
    chunks queued for `read`. Whoever waits for bytes waits on `_waiter`.
    """

    __slots__ = (
        "_body", "_buffered", "_chunked_or_sized", "_error", "_exchanges", "_head_only",
        "_keep_alive", "_loop", "_lost", "_lost_exc", "_paused", "_pool", "_received",
        "_request", "_waiter", "_write_paused", "closed", "complete", "head_done",
        "headers", "idle_since", "origin", "parser", "reason", "status", "transport")

    def __init__(self, pool: Owner, loop: asyncio.AbstractEventLoop,
                 origin: Origin) -> None:
        self._pool = pool
        self._loop = loop
        self.origin = origin
        self.transport: asyncio.Transport = UNCONNECTED
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
        """Send `request` (head and body in `payload`), through the pool (`Owner.send`)."""
        self._begin(request)
        self._pool.send(self, payload)

    def write(self, payload: bytes) -> None:
        """The request's bytes, unless its exchange ended (closed) before they went out."""
        if not self.closed:
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
            self._pool.keep_idle(self)
        else:
            self.close()

    def close(self, *, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self._pool.drop(self)
            if self.transport is not UNCONNECTED:  # else `_connect` closes it on arrival
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
        timer = None if timeout is None else loop.call_later(timeout, expire, waiter)
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


class ResponseStream(httpx.AsyncByteStream):
    """The body as it arrives; closing it before its end drops the connection."""

    def __init__(self, connection: Connection, timeout: float | None) -> None:
        self._connection: Connection | None = connection
        self._timeout = timeout

    def __aiter__(self) -> ResponseStream:
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


def request_head(request: httpx.Request) -> bytes:
    """The request line and header lines, CRLF between them (not after the last)."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [b"%s: %s" % header for header in request.headers.raw]
    head = b"\r\n".join(lines)
    breaks = len(lines) - 1
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
        raise httpx.LocalProtocolError("CR or LF inside a request header", request=request)
    return head


def expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(False)
