"""uvicorn's HTTP/1.1 protocol (httptools), its writes gathered per turn of the event loop.

uvicorn writes a response's head and then each body message the moment it gets them,
one `write` system call each: two for a JSON answer, one per event of a stream, where
the events of a stream often come several at a time. Here what a connection is given
to write during one turn of the loop leaves in one `write` when the turn ends
(`call_soon`), before the loop next waits for anything: nothing is held longer than
the turn that produced it, and a stream's events leave as soon as they exist.

Closing the connection sends what is gathered first; aborting it drops it, as aborting
a transport drops its buffer. Everything else (flow control, reading, TLS, extra info)
is the transport's own.

**Read timeout.** uvicorn sets no limit on how long a request may take to arrive: a caller
who opens connections and sends nothing, or a head or a body a few bytes at a time, holds
them (and their file descriptors) for ever. Here a request's head must come within
`read_timeout_s` of the connection's opening or of its first byte, and each piece of its
body within `read_timeout_s` of the one before, as nginx's `client_header_timeout` and
`client_body_timeout` have it; past that, a head still incomplete gets `408 Request
Timeout` and the connection is closed (an app reading the body sees the disconnect). The
wait between two requests on a kept-alive connection stays uvicorn's keep-alive timeout,
and a body the app is slow to read (flow control paused reading) is not the caller's delay.
One timer per connection, re-armed only when it fires: per request, a few timestamps.

An app that must not wait for the turn to end (a stream's head and first event, when
more events are ready behind them) calls the `scillm.flush` ASGI extension in its scope,
`scope["extensions"]["scillm.flush"]["flush"]()` (an ASGI extension's value is a dict):
what the connection has gathered leaves at once, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HttpProtocol", "InvalidRequestThrottle"]


class InvalidRequestThrottle(logging.Filter):
    """On uvicorn's logger: "Invalid HTTP request received." (a warning per malformed
    request, so any caller could fill the log a line per connection) at most once per
    `every_s`, the next one saying how many were left out since."""

    MESSAGE = "Invalid HTTP request received."

    def __init__(self, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._every_s = every_s
        self._clock = clock
        self._next = 0.0
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.MESSAGE:
            return True
        now = self._clock()
        if now < self._next:
            self._left_out += 1
            return False
        if self._left_out:
            record.msg = f"{self.MESSAGE} ({self._left_out} more since the last one said)"
            self._left_out = 0
        self._next = now + self._every_s
        return True

    @classmethod
    def install(cls, logger: logging.Logger) -> None:
        """Add one to `logger`, unless it has one (one per process)."""
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


class _GatheredWrites:
    """A transport whose writes of one loop turn go out together (see the module)."""

    __slots__ = ("_gathered", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._gathered: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._gathered:
            self._loop.call_soon(self.flush)
        self._gathered.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is gathered: at the end of the turn, or sooner when an app asks (the
        turn's callback then finds nothing)."""
        gathered = self._gathered
        if not gathered:
            return
        self._gathered = []
        if not self._transport.is_closing():
            self._transport.write(gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._gathered = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._gathered))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


_TIMED_OUT_BODY = b"the request took too long to come"
_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
              b"content-length: %d\r\nconnection: close\r\n\r\n%s"
              % (len(_TIMED_OUT_BODY), _TIMED_OUT_BODY))


class HttpProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=HttpProtocol)`: httptools, writes gathered per loop turn, and a
    read timeout (see the module; `with_read_timeout` sets it)."""

    #: Seconds a request's head may take, and each piece of its body after the last.
    read_timeout_s: float = 60.0

    @classmethod
    def with_read_timeout(cls, seconds: float) -> type[HttpProtocol]:
        """This protocol with `read_timeout_s` = `seconds` (uvicorn takes a class)."""
        return type(cls.__name__, (cls,), {"read_timeout_s": seconds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        gathered = _GatheredWrites(transport, loop)
        #: The scope's `extensions`, one dict per connection (read, never written, by apps).
        flush: dict[object, object] = {"flush": gathered.flush}
        self._extensions = {"scillm.flush": flush}
        super().connection_made(gathered)  # type: ignore[arg-type]
        #: When the next bytes of the request being read are due; None between requests.
        self._read_by: float | None = loop.time() + self.read_timeout_s
        self._read_timer: asyncio.TimerHandle | None = loop.call_at(self._read_by,
                                                                   self._read_timed_out)

    def _expect_bytes(self) -> None:
        """The request is being read: its next bytes are due within `read_timeout_s`."""
        self._read_by = self.loop.time() + self.read_timeout_s
        if self._read_timer is None:
            self._read_timer = self.loop.call_at(self._read_by, self._read_timed_out)

    def _read_timed_out(self) -> None:
        self._read_timer = None
        due = self._read_by
        if due is None or self.transport.is_closing():
            return  # not reading a request now: armed again when one begins
        now = self.loop.time()
        if now < due or self.flow.read_paused:  # progress since, or the app's own delay
            self._read_by = max(due, now + self.read_timeout_s) if self.flow.read_paused else due
            self._read_timer = self.loop.call_at(self._read_by, self._read_timed_out)
            return
        if self.cycle is None or self.cycle.response_complete:  # the head never came whole
            self.transport.write(_TIMED_OUT)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self._extensions
        self._expect_bytes()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._expect_bytes()  # the body, if one follows

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._expect_bytes()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._read_by = None
