"""MCP tools: connections to configured MCP servers (stdio or streamable HTTP).

What a server's failure says reaches the caller and the model: it names the server, never
where it is (its URL, its command), which only the log is told (`McpConnection.where`).

Each connection is owned by one background task that enters the SDK's context managers
(`stdio_client` / `streamable_http_client`, then `ClientSession`) and leaves them on
`close()`: the SDK's anyio scopes must be left by the task that entered them, and the
engine's `start()` and `close()` may run in different tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import REQUEST_TIMEOUT, CallToolResult, TextContent
from mcp_types import Tool as McpToolSpec

from ._http_tools import MAX_REPLY_BYTES
from ._mcp_http import bounded_client
from ._settings import McpServerConfig
from ._tools import RemoteTool, ToolOutput
from .errors import McpServerError, McpUnavailableError, ToolExecutionError, ToolTimeoutError

__all__ = ["McpConnection", "McpTool"]

log = logging.getLogger("scillm.server")

class McpTool(RemoteTool):
    """One tool of an MCP server, offered as `<server>__<tool>`."""

    def __init__(self, connection: McpConnection, spec: McpToolSpec) -> None:
        super().__init__(connection.name, spec.name, spec.description or spec.title or "",
                         spec.input_schema)
        self._connection = connection

    async def call(self, arguments: Mapping[str, Any], *, timeout_s: float) -> ToolOutput:
        return await self._connection.call(self.remote_name, dict(arguments),
                                           timeout_s=timeout_s, tool=self._name)


class McpConnection:
    """A live session with one MCP server."""

    def __init__(self, config: McpServerConfig, *, connect_timeout_s: float) -> None:
        self.config = config
        self._connect_timeout_s = connect_timeout_s
        self._session: ClientSession | None = None
        self._owner: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._tools: tuple[McpTool, ...] = ()
        self._errlog: IO[str] | None = None
        #: The session was lost (the server died, its transport closed).
        self._lost = False
        self._restarting = asyncio.Lock()
        self._next_restart = 0.0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def where(self) -> str:
        """Where the server is (its URL, or its command without the arguments, which may
        carry a token): for the log only."""
        return self.config.url or self.config.command or ""

    def said(self, text: str) -> str:
        """`text` as the caller and the model may read it: the server's URL (or its
        host and port) and its command's path are named by the server's name."""
        if self.config.url is not None:
            url = self.config.url.rstrip("/")
            for where in (url, urlsplit(url).netloc):
                if where:
                    text = text.replace(where, self.name)
        elif self.config.command is not None and os.sep in self.config.command:
            text = text.replace(self.config.command, self.name)
        return text

    @property
    def tools(self) -> tuple[McpTool, ...]:
        """Tools listed at start."""
        return self._tools

    async def start(self) -> None:
        """Start or reach the server, initialise and list its tools.

        Raises McpUnavailableError (cannot reach / start it) or McpServerError.
        """
        ready: asyncio.Future[list[McpToolSpec]] = asyncio.get_running_loop().create_future()
        self._owner = asyncio.create_task(self._own(ready), name=f"mcp:{self.name}")
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                specs = await asyncio.shield(ready)
        except BaseException as exc:
            # No one reads `ready` now: cancelled, it is not failed by `_own` as the
            # connection closes (asyncio then logged "Future exception was never
            # retrieved" under the warning that the server was skipped).
            ready.cancel()
            await self.close()
            if isinstance(exc, TimeoutError):
                raise McpUnavailableError(
                    f"MCP server {self.name!r} did not answer within "
                    f"{self._connect_timeout_s:g} s", server=self.name) from exc
            raise
        self._tools = tuple(McpTool(self, spec) for spec in specs)

    async def _own(self, ready: asyncio.Future[list[McpToolSpec]]) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                streams = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
                await session.initialize()
                specs: list[McpToolSpec] = []
                cursor: str | None = None
                while True:
                    params = None if cursor is None else {"cursor": cursor}
                    listed = await session.list_tools(params=params)  # type: ignore[arg-type]
                    specs.extend(listed.tools)
                    cursor = listed.next_cursor
                    if not cursor:
                        break
                self._session = session
                if not ready.done():  # else start() gave up waiting
                    ready.set_result(specs)
                await self._closing.wait()
        except Exception as exc:  # reported through `ready` or on the next call
            if not ready.done():
                ready.set_exception(self._unavailable(exc))
        finally:
            self._session = None
            if not ready.done():
                ready.set_exception(McpUnavailableError(
                    f"MCP server {self.name!r}: connection cancelled", server=self.name))

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.config.command is not None:
            self._errlog = open(os.devnull, "w")
            # Behind the line guard (`_mcp_guard.py`): a reply past MAX_LINE_BYTES is an
            # error of its call, not minutes of the SDK joining it on the event loop.
            params = StdioServerParameters(
                command=sys.executable,
                args=["-I", "-S", "-c", _GUARD.read_text(encoding="utf-8"),
                      str(MAX_LINE_BYTES), self.config.command, *self.config.args],
                env=dict(self.config.env) or None)
            return stdio_client(params, errlog=self._errlog)
        assert self.config.url is not None
        return self._http_streams(self.config.url)

    @contextlib.asynccontextmanager
    async def _http_streams(self, url: str) -> AsyncIterator[Any]:
        # Through the reply bound (`_mcp_http.py`): the SDK reads a JSON reply whole, and
        # fails an SSE event past its own limit (1 MiB) as a lost connection.
        async with bounded_client(self.name, MAX_LINE_BYTES, url) as client, \
                streamable_http_client(url, http_client=client,
                                       max_sse_event_size=MAX_LINE_BYTES) as streams:
            yield streams

    def _unavailable(self, exc: BaseException) -> McpServerError:
        leaves = _leaves(exc)
        text = self.said("; ".join(f"{type(e).__name__}: {e}" for e in leaves)
                         or type(exc).__name__)
        if any(isinstance(e, OSError | ConnectionError) or "Connect" in type(e).__name__
               or isinstance(e, MCPError) for e in leaves):
            return McpUnavailableError(f"MCP server {self.name!r} is unreachable: {text}",
                                       server=self.name)
        return McpServerError(f"MCP server {self.name!r} failed: {text}", server=self.name)

    async def _live(self, tool: str) -> ClientSession:
        """The session, started again when it was lost: a tool that took its server down
        left every later call of every run "Connection closed" until the gateway
        restarted. At most one start per `_RESTART_S`, one at a time."""
        async with self._restarting:
            if self._lost and asyncio.get_running_loop().time() >= self._next_restart:
                self._next_restart = asyncio.get_running_loop().time() + _RESTART_S
                await self._stop_owner()
                self._closing = asyncio.Event()
                try:
                    await self.start()
                    self._lost = False
                except McpServerError as exc:
                    log.warning("MCP server %r at %s went away and did not come back: %s",
                                self.name, self.where, exc)
                    raise ToolExecutionError(f"MCP server {self.name!r} went away and did "
                                             f"not come back: {exc}", tool=tool) from exc
        session = self._session
        if session is None or self._lost:
            raise ToolExecutionError(f"MCP server {self.name!r} is not connected (it is "
                                     f"started again at most every {_RESTART_S:g} s)",
                                     tool=tool)
        return session

    async def call(self, remote: str, arguments: dict[str, Any], *, timeout_s: float,
                   tool: str) -> ToolOutput:
        """Call a tool; ToolTimeoutError or ToolExecutionError on failure."""
        session = await self._live(tool)
        try:
            async with asyncio.timeout(timeout_s + 0.5):
                result = await session.call_tool(remote, arguments, read_timeout_seconds=timeout_s)
        except TimeoutError as exc:
            raise ToolTimeoutError(f"MCP tool {tool!r} timed out after {timeout_s:g} s",
                                   tool=tool, timeout_s=timeout_s) from exc
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise ToolTimeoutError(f"MCP tool {tool!r} timed out after {timeout_s:g} s",
                                       tool=tool, timeout_s=timeout_s) from exc
            if exc.code == _CONNECTION_CLOSED:
                self._lost = True
            raise ToolExecutionError(f"MCP tool {tool!r}: {self.said(str(exc))}",
                                     tool=tool) from exc
        except Exception as exc:  # transport failures: the server went away
            self._lost = True
            log.warning("MCP server %r at %s failed during %r: %s: %s", self.name, self.where,
                        tool, type(exc).__name__, exc)
            raise ToolExecutionError(f"MCP server {self.name!r} failed during {tool!r}: "
                                     f"{type(exc).__name__}: {self.said(str(exc))}",
                                     tool=tool) from exc
        return ToolOutput(_text_of(result), is_error=bool(result.is_error))

    async def close(self) -> None:
        """Leave the session and stop the server process. Idempotent."""
        await self._stop_owner()

    async def _stop_owner(self) -> None:
        self._closing.set()
        owner, self._owner = self._owner, None
        if owner is not None and self._session is None and not owner.done():
            # Still starting (a server that does not answer): `_closing` is not looked at
            # before the session is up, so waiting for it only added 5 s to every skip.
            owner.cancel()
            with contextlib.suppress(BaseException):
                await owner
        elif owner is not None:
            try:
                async with asyncio.timeout(5.0):
                    await asyncio.shield(owner)
            except (TimeoutError, Exception):
                owner.cancel()
                with contextlib.suppress(BaseException):
                    await owner
        if self._errlog is not None:
            self._errlog.close()
            self._errlog = None


#: The longest line (one JSON-RPC message) read from a stdio MCP server, and the longest
#: reply read from an HTTP MCP server: the longest reply an HTTP tool server may send.
MAX_LINE_BYTES = MAX_REPLY_BYTES
_GUARD = Path(__file__).with_name("_mcp_guard.py")
#: JSON-RPC's "connection closed" (the SDK's code when the transport went away).
_CONNECTION_CLOSED = -32000
#: The least time between two starts of a lost MCP server.
_RESTART_S = 5.0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _text_of(result: CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{block.type} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, sort_keys=True))
    return "\n".join(parts)
