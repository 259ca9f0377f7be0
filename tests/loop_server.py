"""Stopping a test server that runs an asyncio server on a loop of its own thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Self

__all__ = ["LoopServer", "stop_serving"]


async def _end_connections(server: asyncio.Server | None) -> None:
    if server is not None:
        server.close()
    handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


def stop_serving(loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                 server: asyncio.Server | None) -> None:
    """Close the listener, end every connection's handler on its loop, then stop and close
    the loop. A handler left pending (a client's kept-alive connection) was destroyed with
    the loop at exit: "Task was destroyed but it is pending", "Event loop is closed"."""
    if not thread.is_alive():
        return
    asyncio.run_coroutine_threadsafe(_end_connections(server), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


class LoopServer:
    """An asyncio server on 127.0.0.1:0 on a loop of its own thread: `start()` serves each
    connection with `_handle`, `stop()` ends them (`stop_serving`); `port` once started."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> Self:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        stop_serving(self._loop, self._thread, self._server)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
