"""The one Server-Sent Events encoder of the shim, and the response that streams it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

__all__ = ["DONE", "EventStream", "event"]

#: The terminal event of an OpenAI stream.
DONE = b"data: [DONE]\n\n"

#: The head of every event stream (as Starlette's StreamingResponse would write it).
_HEADERS = [(b"cache-control", b"no-cache"),
            (b"content-type", b"text/event-stream; charset=utf-8")]


def event(payload: Any) -> bytes:
    """One `data:` event carrying `payload` as compact JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class EventStream:
    """An ASGI `text/event-stream` response: each chunk of `events` is sent as it comes.

    The chunks are sent from the request's own task. One watcher task waits for the
    caller to hang up; then it cancels the request's task, whose `CancelledError` closes
    `events` where it waits (and so the call behind it), and the response ends quietly,
    as Starlette's `StreamingResponse` ends. (That one runs every response in an anyio
    task group, which cost about a sixth of a streamed completion's CPU and a task
    switch before the first byte.) A cancellation from elsewhere (shutdown) goes through.

    The head and the first event leave at once when the server offers the `scillm.flush`
    extension (`scillm.server.http_protocol`): a server that gathers the writes of one turn
    of the event loop would otherwise hold them until every event ready behind them (an
    upstream's whole stream in one read) had been made.
    """

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        flush = ((scope.get("extensions") or {}).get("scillm.flush") or {}).get("flush")
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if flush is not None:
                    flush()
                    flush = None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone or task.uncancel() > 0:
                raise  # cancelled from outside too (shutdown): let it through
        finally:
            watcher.cancel()
