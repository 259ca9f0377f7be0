"""`AgentEngine`: the facade a servicer holds — tools set up once, steps and runs on demand."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any

from ._code import PROFILES, CodeExecutor, CodeTool
from ._http_tools import HttpToolServer
from ._loop import CompleteFn, LoopContext, run_events, step_events
from ._mcp import McpConnection
from ._records import AgentEvent, FinalEvent, Message, RunResult, StepResult
from ._settings import AgentSettings, RunConfig, resolve
from ._shell import CommandExecutor, ShellTool
from ._tools import Tool, Toolbox
from .errors import (
    AgentConfigError,
    CodeExecutorUnavailableError,
    HttpToolServerError,
    McpServerError,
    McpUnavailableError,
)

__all__ = ["AgentEngine"]

log = logging.getLogger("scillm.agent")


class AgentEngine:
    """Runs the agent loop with code tools and the shell tool (through `executor`), MCP
    tools and HTTP tools.

    `start()` validates the settings and connects the MCP servers (an unreachable one
    raises McpUnavailableError when `mcp_required`, else it is skipped and listed in
    `mcp_errors`); `close()` disconnects them. HTTP tool servers are listed when a run or
    step starts. `step()` and `run()` may be called concurrently; each takes a `RunConfig`
    narrowing the settings.

    A tool server that does not answer (an MCP server skipped at start, an HTTP tool
    server that cannot be listed) is skipped by a run offering every configured server:
    it is logged, with where the server is, and noted in `RunResult.skipped_servers`; the
    run goes on without its tools. A run that named it fails: McpUnavailableError or
    HttpToolServerError, naming the server, never where it is.
    """

    def __init__(self, settings: AgentSettings, complete: CompleteFn,
                 executor: CodeExecutor | None = None) -> None:
        self.settings = settings
        self._complete = complete
        self._executor = executor
        self._connections: dict[str, McpConnection] = {}
        self._mcp_errors: dict[str, str] = {}
        self._code_tools: dict[str, CodeTool] = {}
        self._http_servers: dict[str, HttpToolServer] = {}
        self._started = False

    async def start(self) -> None:
        """Validate settings, set up code tools and connect MCP servers."""
        if self._started:
            return
        self.settings.validate()
        if self._executor is not None:
            for lang in self.settings.languages:
                if self._executor.supports(lang):
                    self._code_tools[lang] = CodeTool(PROFILES[lang], self._executor,
                                                      bash_allowlist=self.settings.bash_allowlist)
        self._http_servers = {c.name: HttpToolServer(c, retries=self.settings.http_tool_retries)
                              for c in self.settings.http_tool_servers}
        connections = [McpConnection(c, connect_timeout_s=self.settings.mcp_connect_timeout_seconds)
                       for c in self.settings.mcp_servers]
        outcomes = await asyncio.gather(*(c.start() for c in connections), return_exceptions=True)
        self._started = True
        failure: BaseException | None = None
        for connection, outcome in zip(connections, outcomes, strict=True):
            if isinstance(outcome, McpServerError):
                self._mcp_errors[connection.name] = str(outcome)
                # Where it is goes to the log only: the error (for callers) names it.
                log.warning("%s (at %s); skipped: its tools are not offered", outcome,
                            connection.where)
                failure = failure or outcome
            elif isinstance(outcome, BaseException):
                failure = failure or outcome
            else:
                self._connections[connection.name] = connection
        if failure is not None and (self.settings.mcp_required
                                    or not isinstance(failure, McpServerError)):
            await self.close()
            raise failure

    async def close(self) -> None:
        """Disconnect MCP servers and close HTTP tool clients. Idempotent."""
        connections, self._connections = list(self._connections.values()), {}
        http, self._http_servers = list(self._http_servers.values()), {}
        await asyncio.gather(*(c.close() for c in connections), *(h.close() for h in http),
                             return_exceptions=True)
        self._started = False

    async def __aenter__(self) -> AgentEngine:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def languages(self) -> tuple[str, ...]:
        """Code tool languages available (enabled, supported by the executor)."""
        return tuple(self._code_tools)

    @property
    def mcp_errors(self) -> dict[str, str]:
        """MCP servers skipped at start, with why."""
        return dict(self._mcp_errors)

    def tools(self, config: RunConfig | None = None) -> list[dict[str, Any]]:
        """The OpenAI `tools` offered to the model under `config` (HTTP tools, listed
        when a run starts, are not among them)."""
        return self._context(config).toolbox.specs()

    def _context(self, config: RunConfig | None) -> LoopContext:
        if not self._started:
            raise AgentConfigError("the engine is not started; call start() first")
        options = resolve(self.settings, config)
        tools: list[Tool] = []
        skipped: dict[str, str] = {}
        if options.use_tools or options.auto_run_code:
            wanted_code = [lang for lang in options.languages if lang in self._code_tools]
            if config is not None and config.languages and self._executor is None:
                raise CodeExecutorUnavailableError("code tools need a code executor (sandbox)")
            tools.extend(self._code_tools[lang] for lang in wanted_code)
        if options.use_tools:
            for name in options.mcp_servers:
                connection = self._connections.get(name)
                if connection is not None:
                    tools.extend(connection.tools)
                    continue
                why = self._mcp_errors.get(name) or f"MCP server {name!r} is not connected"
                if options.mcp_servers_named:
                    raise McpUnavailableError(why, server=name)
                skipped[name] = why
            if options.shell_prefixes:
                if isinstance(self._executor, CommandExecutor):
                    tools.append(ShellTool(self._executor, options.shell_prefixes))
                elif config is not None and (config.shell_allowlist or config.shell_presets):
                    raise CodeExecutorUnavailableError("the shell tool needs a sandbox")
        toolbox = Toolbox(tools, timeout_s=self.settings.tool_timeout_seconds,
                          max_output_chars=self.settings.max_tool_output_chars)
        return LoopContext(self._complete, toolbox, options, self.settings.history_token_budget,
                           skipped)

    async def step(self, messages: Sequence[Message], config: RunConfig | None = None, *,
                   iteration: int | None = None) -> StepResult:
        """One model turn on `messages` and the tool calls it made.

        `iteration` (1-based) names derived tool call ids; by default it is one more
        than the number of assistant turns in `messages`. Raises ModelError.
        """
        ctx = await self._with_http_tools(self._context(config))
        if iteration is None:
            iteration = 1 + sum(1 for m in messages if m.get("role") == "assistant")
        result: StepResult | None = None
        async for item in step_events(ctx, messages, iteration):
            if isinstance(item, StepResult):
                result = item
        assert result is not None
        return result

    def run(self, messages: Sequence[Message], config: RunConfig | None = None
            ) -> AsyncGenerator[AgentEvent, None]:
        """The loop as events: ModelTurnEvent, ToolCallEvent, ToolResultEvent, FinalEvent.

        The last event is always a FinalEvent. Raises AgentConfigError at once if
        `config` asks for what is not configured.
        """
        return self._run(self._context(config), messages)

    async def _run(self, ctx: LoopContext, messages: Sequence[Message]
                   ) -> AsyncGenerator[AgentEvent, None]:
        ctx = await self._with_http_tools(ctx)
        async with contextlib.aclosing(run_events(ctx, messages)) as events:
            async for event in events:
                yield event

    async def _with_http_tools(self, ctx: LoopContext) -> LoopContext:
        """`ctx` with the tools of its HTTP tool servers, listed now: one that cannot be is
        skipped, unless the run named it (then its HttpToolServerError is raised)."""
        o = ctx.options
        servers = [self._http_servers[n] for n in o.http_tool_servers
                   if n in self._http_servers] if o.use_tools else []
        if not servers:
            return ctx
        listed = await asyncio.gather(*(s.list_tools(o.http_tool_headers) for s in servers),
                                      return_exceptions=True)
        tools: list[Tool] = []
        skipped = dict(ctx.skipped)
        failure: HttpToolServerError | None = None
        for server, outcome in zip(servers, listed, strict=True):
            if isinstance(outcome, HttpToolServerError):
                # Where it is goes to the log only: the error (for callers) names it.
                log.warning("%s (at %s)%s", outcome, server.config.url,
                            "" if o.http_tool_servers_named
                            else "; skipped: its tools are not offered to this run")
                if o.http_tool_servers_named:
                    failure = failure or outcome
                else:
                    skipped[server.name] = str(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                tools.extend(outcome)
        if failure is not None:
            raise failure
        return dataclasses.replace(ctx, toolbox=ctx.toolbox.extended(tools), skipped=skipped)

    async def run_to_end(self, messages: Sequence[Message],
                         config: RunConfig | None = None) -> RunResult:
        """Run and return only the final result."""
        final: RunResult | None = None
        async for event in self.run(messages, config):
            if isinstance(event, FinalEvent):
                final = event.result
        assert final is not None
        return final
