"""A small real MCP server for the tests: `python mcp_server.py [stdio | http PORT]`."""

from __future__ import annotations

import asyncio
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

app = MCPServer("demo")


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


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        asyncio.run(app.run_streamable_http_async(host="127.0.0.1", port=int(sys.argv[2])))
    else:
        app.run()
