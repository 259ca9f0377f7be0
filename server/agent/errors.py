"""Errors of the Agent domain.

    AgentError
    ├── AgentConfigError        settings or run options out of range
    ├── ModelError              the model call failed or its reply is not a chat.completion
    ├── ToolError               a tool call could not be carried out (becomes an observation)
    │   ├── UnknownToolError        the model named a tool that is not offered
    │   ├── ToolArgumentsError      arguments are not a JSON object / fail the tool's checks
    │   ├── ToolTimeoutError        the call took longer than its timeout
    │   ├── ToolExecutionError      the tool ran and failed (sandbox, MCP server)
    │   └── TooManyToolCallsError   past `max_tool_calls_per_turn` of its turn: not run
    ├── McpServerError          an MCP server could not be started, reached or listed
    │   └── McpUnavailableError     an MCP server is unreachable or has gone away
    ├── HttpToolServerError     an HTTP tool server could not be reached or listed
    ├── CodeExecutorUnavailableError  no sandbox to run code in
    └── ReplayError             a stored run cannot be read back

Inside a run a `ToolError` never escapes: it becomes an error observation that the model
sees. `ModelError` ends a run with stop reason `error`. The others are raised to the
caller (the servicer maps them to status codes).
"""

from __future__ import annotations

__all__ = [
    "AgentConfigError",
    "AgentError",
    "CodeExecutorUnavailableError",
    "HttpToolServerError",
    "McpServerError",
    "McpUnavailableError",
    "ModelError",
    "ReplayError",
    "TooManyToolCallsError",
    "ToolArgumentsError",
    "ToolError",
    "ToolExecutionError",
    "ToolTimeoutError",
    "UnknownToolError",
]


class AgentError(Exception):
    """Base of every error raised by `scillm.server.agent`."""


class AgentConfigError(AgentError):
    """A setting or run option is out of range; `param` names it."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelError(AgentError):
    """The model call raised, or returned something that is not a chat.completion."""


class ToolError(AgentError):
    """A tool call failed; `tool` names the tool."""

    def __init__(self, message: str, *, tool: str) -> None:
        super().__init__(message)
        self.tool = tool


class UnknownToolError(ToolError):
    """The model called a tool that is not offered."""


class ToolArgumentsError(ToolError):
    """The call's arguments are not a JSON object, or the tool rejects them."""


class ToolTimeoutError(ToolError):
    """The call took longer than `timeout_s` seconds."""

    def __init__(self, message: str, *, tool: str, timeout_s: float) -> None:
        super().__init__(message, tool=tool)
        self.timeout_s = timeout_s


class ToolExecutionError(ToolError):
    """The tool ran and failed."""


class TooManyToolCallsError(ToolError):
    """The call came after the first `max_tool_calls_per_turn` of its model turn, and was
    not run."""


class McpServerError(AgentError):
    """An MCP server could not be started, initialised or listed; `server` names it."""

    def __init__(self, message: str, *, server: str) -> None:
        super().__init__(message)
        self.server = server


class McpUnavailableError(McpServerError):
    """An MCP server is unreachable (connection refused, process exited)."""


class HttpToolServerError(AgentError):
    """An HTTP tool server's `GET /tools` failed when a run started; `server` names it."""

    def __init__(self, message: str, *, server: str) -> None:
        super().__init__(message)
        self.server = server


class CodeExecutorUnavailableError(AgentError):
    """Code tools were asked for but no code executor (sandbox) is available."""


class ReplayError(AgentError):
    """A stored run is malformed and cannot be replayed."""
