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

An app that must not wait for the turn to end (a stream's head and first event, when
more events are ready behind them) calls the `scillm.flush` ASGI extension in its scope,
`scope["extensions"]["scillm.flush"]["flush"]()` (an ASGI extension's value is a dict):
what the connection has gathered leaves at once, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HttpProtocol"]


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


class HttpProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=HttpProtocol)`: httptools, writes gathered per loop turn."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        gathered = _GatheredWrites(transport, asyncio.get_running_loop())
        #: The scope's `extensions`, one dict per connection (read, never written, by apps).
        flush: dict[object, object] = {"flush": gathered.flush}
        self._extensions = {"scillm.flush": flush}
        super().connection_made(gathered)  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = self._extensions
