"""Stopping a test server that runs an asyncio server on a loop of its own thread."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["stop_serving"]


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
