"""The HTTP door's protocol (server/http_protocol.py): uvicorn on a real socket, with what
a connection writes in one turn of the loop leaving in one `write`, nothing held past
the turn that wrote it, and no connection held by a request that does not come."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
import uvloop

from scillm.server.http_protocol import HttpProtocol, InvalidRequestThrottle

Send = Callable[[dict[str, Any]], Any]


class _Counted:
    """The real transport, counting the `write` calls that reach it."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@asynccontextmanager
async def _server(app: Any, read_timeout_s: float = 60.0,
                  ) -> AsyncIterator[tuple[int, list[bytes]]]:
    writes: list[bytes] = []

    class Counting(HttpProtocol.with_read_timeout(read_timeout_s)):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_Counted(transport, writes))  # type: ignore[arg-type]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, http=Counting, lifespan="off",
                                           log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # uvicorn says when it listens by this flag only
        if task.done():
            await task  # it failed to start: say why
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1], writes
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def _exchange(port: int, requests: list[tuple[bytes, bytes]]) -> list[bytes]:
    """On one connection, send each request and read until its `until` mark arrives (or
    EOF); the replies, in order."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        for request, until in requests:
            conn.sendall(request)
            data = b""
            while until not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            replies.append(data)
    return replies


def _post(path: str = "/", close: bool = False) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n{}").encode()


def test_a_head_and_body_sent_in_one_turn_leave_in_one_write() -> None:
    async def app(scope: Any, receive: Any, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"9")]})
        for part in (b"one", b"two", b"six"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def go() -> tuple[list[bytes], list[bytes]]:
        async with _server(app) as (port, writes):
            # Two on one connection: the first reply must arrive while it stays open.
            replies = await asyncio.to_thread(_exchange, port, [(_post(), b"onetwosix")] * 2)
            return replies, writes

    replies, writes = uvloop.run(go())
    for reply in replies:
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
        assert reply.endswith(b"\r\n\r\nonetwosix")
    assert writes == replies  # one write per response


def test_nothing_waits_past_its_turn() -> None:
    """Each event reaches the client while the app still waits for it to arrive there."""
    arrived = threading.Event()

    async def app(scope: Any, receive: Any, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"first", b"second"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            assert await asyncio.to_thread(arrived.wait, 10), "the event was held back"
            arrived.clear()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(_post())
            data = b""
            for mark in (b"first", b"second", b"0\r\n\r\n"):
                while mark not in data:
                    chunk = conn.recv(65536)
                    assert chunk, f"the connection closed before {mark!r}"
                    data += chunk
                arrived.set()
            return data

    async def go() -> tuple[bytes, list[bytes]]:
        async with _server(app) as (port, writes):
            return await asyncio.to_thread(client, port), writes

    data, writes = uvloop.run(go())
    assert data.endswith(b"6\r\nsecond\r\n0\r\n\r\n")
    assert len(writes) == 3  # head with the first event, the second, the end


def test_connection_close_sends_the_whole_response_before_closing() -> None:
    async def app(scope: Any, receive: Any, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})

    async def go() -> bytes:
        async with _server(app) as (port, _):
            return (await asyncio.to_thread(_exchange, port, [(_post(close=True), b"\0")]))[0]

    reply = uvloop.run(go())  # read to EOF: the server closed after writing
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"\r\n\r\nhello")
    assert b"connection: close" in reply.lower()


def test_the_flush_extension_sends_what_is_gathered_before_the_app_yields() -> None:
    """`scope["extensions"]["scillm.flush"]["flush"]`: a stream's head and first event leave at
    once, while the app has not yet given the loop a turn (more events ready behind)."""
    seen: list[int] = []
    written: list[list[bytes]] = []  # the server's count of writes, once it runs

    async def app(scope: Any, receive: Any, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        seen.append(len(written[0]))  # nothing written yet: gathered for the turn
        scope["extensions"]["scillm.flush"]["flush"]()
        seen.append(len(written[0]))  # the head and first event, written now
        await send({"type": "http.response.body", "body": b"second", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def go() -> tuple[bytes, list[bytes]]:
        async with _server(app) as (port, writes):
            written.append(writes)
            reply = (await asyncio.to_thread(_exchange, port, [(_post(), b"0\r\n\r\n")]))[0]
            return reply, writes

    reply, writes = uvloop.run(go())
    assert seen == [0, 1]
    assert reply.endswith(b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n")
    assert len(writes) == 2  # the head with the first event; the rest together


def _until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


async def _echo_body(scope: Any, receive: Any, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            _seen.append("disconnect")
            return
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


_seen: list[str] = []


def test_a_connection_that_sends_nothing_or_half_a_head_gets_408_and_is_closed() -> None:
    def client(port: int, first: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(first)
            return _until_closed(conn)

    async def go() -> list[bytes]:
        async with _server(_echo_body, read_timeout_s=0.3) as (port, _):
            return [await asyncio.to_thread(client, port, first)
                    for first in (b"", b"POST / HTTP/1.1\r\nHost: x\r\n")]

    for reply in uvloop.run(go()):
        assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply
        assert reply.endswith(b"\r\n\r\nthe request took too long to come")


def test_a_body_that_stops_coming_closes_the_connection_and_the_app_sees_it() -> None:
    _seen.clear()

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            return _until_closed(conn)

    async def go() -> bytes:
        async with _server(_echo_body, read_timeout_s=0.3) as (port, _):
            return await asyncio.to_thread(client, port)

    assert uvloop.run(go()) == b""  # the app had not answered: nothing is invented
    assert _seen == ["disconnect"]


def test_a_slow_but_steady_request_and_a_slow_reading_app_are_not_cut_off() -> None:
    """The timeout is between pieces, not for the whole request; and a body waiting for
    the app to read it (flow control paused reading) is not the caller's delay."""
    big = b"x" * (256 * 1024)

    async def slow_reader(scope: Any, receive: Any, send: Send) -> None:
        await asyncio.sleep(1.5)  # five timeouts: reading is paused meanwhile
        await _echo_body(scope, receive, send)

    def steady(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                         b"Connection: close\r\n\r\n")
            for piece in (b"01", b"23", b"45", b"67", b"89"):
                time.sleep(0.4)  # in all 2 s, over the 1.5 s timeout
                conn.sendall(piece)
            return _until_closed(conn)

    def at_once(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(big), big))
            return _until_closed(conn)

    async def go() -> tuple[bytes, bytes]:
        async with _server(_echo_body, read_timeout_s=1.5) as (port, _):
            first = await asyncio.to_thread(steady, port)
        async with _server(slow_reader, read_timeout_s=0.3) as (port, _):
            second = await asyncio.to_thread(at_once, port)
        return first, second

    steady_reply, slow_reply = uvloop.run(go())
    assert steady_reply.startswith(b"HTTP/1.1 200 OK") and steady_reply.endswith(b"0123456789")
    assert slow_reply.startswith(b"HTTP/1.1 200 OK") and slow_reply.endswith(big)


def test_the_throttle_says_how_many_it_left_out() -> None:
    now = [0.0]
    throttle = InvalidRequestThrottle(every_s=60, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, None, None)

    first = record(InvalidRequestThrottle.MESSAGE)
    assert throttle.filter(first) and first.getMessage() == InvalidRequestThrottle.MESSAGE
    assert not any(throttle.filter(record(InvalidRequestThrottle.MESSAGE)) for _ in range(5))
    assert throttle.filter(record("something else"))  # other messages pass as they are
    now[0] = 61.0
    later = record(InvalidRequestThrottle.MESSAGE)
    assert throttle.filter(later)
    assert later.getMessage() == "Invalid HTTP request received. (5 more since the last one said)"
    logger = logging.getLogger("scillm.test.throttle")
    InvalidRequestThrottle.install(logger)
    InvalidRequestThrottle.install(logger)
    assert sum(isinstance(f, InvalidRequestThrottle) for f in logger.filters) == 1
