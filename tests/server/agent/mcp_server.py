"""A small real MCP server for the tests: `python mcp_server.py [stdio | http PORT [json]]`.

Over HTTP the SDK's own streamable-HTTP app serves it (SSE replies, or JSON ones with
`json`), behind one hostile layer: a call of `endless` is answered with a reply that never
ends (a JSON body that never closes, or SSE notifications without end), as a broken or
hostile server may send.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

app = MCPServer("demo")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.tool()
def crash() -> str:
    """A tool that takes the whole server down."""
    import os

    os._exit(3)


@app.tool()
def flood(mib: int = 20) -> str:
    """A result of `mib` MiB."""
    return "x" * (mib << 20)


@app.tool()
def fail(reason: str = "it always fails") -> str:
    """A tool that always fails."""
    raise ToolError(f"fail: {reason}")


@app.tool()
async def hang() -> str:
    """A tool that never returns."""
    await asyncio.sleep(3600)
    return "unreachable"


@app.tool()
async def endless() -> str:
    """A reply that never ends (over HTTP; over stdio it only hangs)."""
    await asyncio.sleep(3600)
    return "unreachable"


#: What the endless reply sends at a time, and how often: 16 MiB/s, so that a client
#: without a bound holds a few hundred MiB before its call times out, not gigabytes.
_PIECE, _EVERY_S = 64 << 10, 0.004


def endless_replies(inner: Asgi, *, json_response: bool) -> Asgi:
    """`inner` (the SDK's app), except that a `tools/call` of `endless` is answered here."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        messages = [await receive()]
        while messages[-1].get("more_body"):
            messages.append(await receive())
        try:
            request = json.loads(b"".join(m.get("body", b"") for m in messages))
        except ValueError:
            request = None
        if isinstance(request, dict) and request.get("method") == "tools/call" \
                and (request.get("params") or {}).get("name") == "endless":
            streaming = asyncio.ensure_future(
                _endless(request["id"], send, json_response=json_response))
            while (await receive())["type"] != "http.disconnect":
                pass
            streaming.cancel()  # the client left (uvicorn would go on sending to no one)
            return
        replay = iter(messages)

        async def again() -> MutableMapping[str, Any]:
            return next(replay, None) or await receive()

        await inner(scope, again, send)

    return serve


async def _endless(request_id: object, send: Send, *, json_response: bool) -> None:
    kind = b"application/json" if json_response else b"text/event-stream"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind)]})
    if json_response:  # one result whose text never ends
        head = json.dumps({"jsonrpc": "2.0", "id": request_id, "result": {"content": [
            {"type": "text", "text": ""}]}})
        await send({"type": "http.response.body", "more_body": True,
                    "body": head[:head.index('"text": "') + 9].encode()})
        piece = b"x" * _PIECE
    else:  # log notifications without end, none of them the reply
        note = json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                           "params": {"level": "info", "data": "x" * _PIECE}})
        piece = f"event: message\ndata: {note}\n\n".encode()
    while True:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
        await asyncio.sleep(_EVERY_S)


def serve_http(port: int, *, json_response: bool) -> None:
    import uvicorn

    starlette = app.streamable_http_app(json_response=json_response)
    server = uvicorn.Server(uvicorn.Config(
        endless_replies(starlette, json_response=json_response),
        host="127.0.0.1", port=port, log_level="warning", lifespan="on",
        timeout_graceful_shutdown=2))
    asyncio.run(server.serve())


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        serve_http(int(sys.argv[2]), json_response=sys.argv[3:] == ["json"])
    else:
        app.run()
