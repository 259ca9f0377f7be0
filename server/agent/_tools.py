"""Tools the agent offers: the `Tool` protocol and the `Toolbox` that dispatches calls.

A tool never raises into the loop: every failure (unknown name, malformed arguments,
timeout, execution error) becomes a `ToolResult` with `is_error=True` whose output says
what went wrong, so the model can see it and repair.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..codeworld.sandbox import utf8_safe
from ._records import ToolCall, ToolResult
from .errors import (
    ToolArgumentsError,
    ToolError,
    ToolTimeoutError,
    UnknownToolError,
)

__all__ = ["Tool", "ToolOutput", "Toolbox", "qualified_name"]

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def qualified_name(server: str, tool: str) -> str:
    """A server's tool as offered to the model: `<server>__<tool>`, made name-safe."""
    return _NAME_UNSAFE.sub("_", f"{server}__{tool}")[:64]


@dataclass(frozen=True)
class ToolOutput:
    """What a tool returns: text for the model, and whether it is a failure.

    Program-running tools also say the exit code and the streams (for run traces).
    """

    text: str
    is_error: bool = False
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None


@runtime_checkable
class Tool(Protocol):
    """A callable offered to the model as an OpenAI function tool."""

    @property
    def name(self) -> str:
        """Name as offered (`^[a-zA-Z0-9_-]{1,64}$`)."""

    @property
    def description(self) -> str:
        """What the tool does, for the model."""

    @property
    def parameters(self) -> Mapping[str, Any]:
        """JSON schema of the arguments object."""

    async def call(self, arguments: Mapping[str, Any], *, timeout_s: float) -> ToolOutput:
        """Run the tool. Raise a ToolError (or return is_error) on failure."""


class RemoteTool:
    """A tool another server runs (MCP, HTTP tool server), offered as `<server>__<tool>`;
    subclasses say how to `call` it."""

    def __init__(self, server: str, remote_name: str, description: str,
                 parameters: object) -> None:
        self.remote_name = remote_name
        self._name = qualified_name(server, remote_name)
        self._description = utf8_safe(description or remote_name)
        self._parameters: dict[str, Any] = dict(parameters) if isinstance(
            parameters, Mapping) else {"type": "object"}

    @property
    def name(self) -> str:
        return self._name

    @property
    def description(self) -> str:
        return self._description

    @property
    def parameters(self) -> Mapping[str, Any]:
        return self._parameters


def openai_tool(tool: Tool) -> dict[str, Any]:
    """The tool as an OpenAI chat-completions `tools` entry."""
    return {"type": "function", "function": {
        "name": tool.name, "description": tool.description, "parameters": dict(tool.parameters)}}


class Toolbox:
    """The tools of one step, by name; dispatches calls with timeouts."""

    def __init__(self, tools: Iterable[Tool], *, timeout_s: float, max_output_chars: int) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self._tools.setdefault(tool.name, tool)
        self._timeout_s = timeout_s
        self._max_output_chars = max_output_chars

    def extended(self, tools: Iterable[Tool]) -> Toolbox:
        """A toolbox with these tools added (same timeout and output cap)."""
        return Toolbox([*self._tools.values(), *tools], timeout_s=self._timeout_s,
                       max_output_chars=self._max_output_chars)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def specs(self) -> list[dict[str, Any]]:
        """The OpenAI `tools` list, in a stable order."""
        return [openai_tool(self._tools[name]) for name in sorted(self._tools)]

    async def dispatch(self, call: ToolCall, within: float | None = None) -> ToolResult:
        """Run one call, in at most `within` seconds when given (what is left of the run's
        time budget; none left: not run); every failure becomes an error result."""
        started = time.monotonic()
        try:
            if within is not None and within <= 0:
                raise ToolTimeoutError(f"tool {call.name!r} not run: the run's time budget "
                                       "is spent", tool=call.name, timeout_s=0.0)
            output = await self._run(call, within)
        except ToolError as exc:
            output = _failure(exc)
        return self._result(call, output, time.monotonic() - started)

    def refuse(self, call: ToolCall, error: ToolError) -> ToolResult:
        """The result of a call not run, for `error`: as `dispatch` reports a failure."""
        return self._result(call, _failure(error), 0.0)

    def _result(self, call: ToolCall, output: ToolOutput, duration_s: float) -> ToolResult:
        # Every tool's answer passes here (MCP, HTTP, shell, code, failures): a lone
        # surrogate (a JSON "\ud800" from a tool server) failed the run's stream, and the
        # next model call's UTF-8 body; it goes on as its escape.
        text = output.text
        if len(text) > self._max_output_chars:
            cut = len(text) - self._max_output_chars
            text = f"{text[:self._max_output_chars]}\n[... {cut} characters cut]"
        stdout, stderr = output.stdout, output.stderr
        return ToolResult(call.id, call.name, utf8_safe(text), output.is_error,
                          duration_s=duration_s, exit_code=output.exit_code,
                          stdout=None if stdout is None else utf8_safe(stdout),
                          stderr=None if stderr is None else utf8_safe(stderr))

    async def _run(self, call: ToolCall, within: float | None = None) -> ToolOutput:
        tool = self._tools.get(call.name)
        if tool is None:
            offered = ", ".join(sorted(self._tools)) or "none"
            raise UnknownToolError(f"unknown tool {call.name!r}; tools offered: {offered}",
                                   tool=call.name)
        arguments = parse_arguments(call)
        timeout = self._timeout_s if within is None else min(self._timeout_s, within)
        try:
            async with asyncio.timeout(timeout + 1.0):
                return await tool.call(arguments, timeout_s=timeout)
        except TimeoutError as exc:
            raise ToolTimeoutError(f"tool {call.name!r} timed out after {timeout:g} s",
                                   tool=call.name, timeout_s=timeout) from exc


def _failure(error: ToolError) -> ToolOutput:
    return ToolOutput(f"error ({type(error).__name__}): {error}", is_error=True)


def parse_arguments(call: ToolCall) -> dict[str, Any]:
    """The call's arguments as a dict; ToolArgumentsError if they are not a JSON object."""
    text = call.arguments.strip() or "{}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolArgumentsError(f"arguments of {call.name!r} are not valid JSON ({exc.msg} at "
                                 f"position {exc.pos}): {text[:200]!r}", tool=call.name) from exc
    except RecursionError:  # nested past any reader's depth: no arguments a tool takes
        raise ToolArgumentsError(f"arguments of {call.name!r} nest too deeply to read",
                                 tool=call.name) from None
    if not isinstance(value, dict):
        raise ToolArgumentsError(f"arguments of {call.name!r} must be a JSON object, got "
                                 f"{type(value).__name__}", tool=call.name)
    return value
