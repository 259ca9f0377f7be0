"""The Agent domain: a deterministic tool-use loop with sandboxed code and shell tools, MCP
tools and HTTP tools; escalation to a stronger model, history pruning, JSON mode with one
repair round, and JSONL run traces.

Plain typed Python; knows nothing of gRPC or HTTP. Typical use::

    engine = AgentEngine(AgentSettings(mcp_servers=(...,)), complete, SandboxExecutor(sandbox))
    await engine.start()
    async for event in engine.run(messages, RunConfig(seed=7)):
        ...                       # ModelTurnEvent | ToolCallEvent | ToolResultEvent | FinalEvent
    await engine.close()

`complete` is the model: an async callable taking an OpenAI chat-completions request dict
and returning a `chat.completion` dict. Errors are in `scillm.server.agent.errors`.
"""

from ._code import PROFILES, CodeExecutor, CodeOutcome, LanguageProfile, check_bash
from ._engine import AgentEngine
from ._history import estimate_tokens, prune_history
from ._http_tools import retry_after_seconds
from ._json_mode import json_problem
from ._loop import CompleteFn
from ._records import (
    AgentEvent,
    FinalEvent,
    Message,
    Metrics,
    ModelTurnEvent,
    RunResult,
    StepResult,
    StopReason,
    ToolCall,
    ToolCallEvent,
    ToolResult,
    ToolResultEvent,
    Usage,
)
from ._replay import Difference, ReplayReport, StoredRun, replay
from ._sandbox import SandboxExecutor
from ._scripted import ScriptedModel
from ._settings import (
    DEFAULT_BASH_ALLOWLIST,
    DEFAULT_GIVE_UP_MARKERS,
    AgentSettings,
    HttpToolServerConfig,
    McpServerConfig,
    RunConfig,
)
from ._shell import SHELL_PRESETS, CommandExecutor, check_command, shell_prefixes
from ._toolchains import Toolchain, find_toolchains
from ._tools import Tool, ToolOutput
from ._trace import JsonlTrace

__all__ = [
    "DEFAULT_BASH_ALLOWLIST",
    "DEFAULT_GIVE_UP_MARKERS",
    "PROFILES",
    "SHELL_PRESETS",
    "AgentEngine",
    "AgentEvent",
    "AgentSettings",
    "CodeExecutor",
    "CodeOutcome",
    "CommandExecutor",
    "CompleteFn",
    "Difference",
    "FinalEvent",
    "HttpToolServerConfig",
    "JsonlTrace",
    "LanguageProfile",
    "McpServerConfig",
    "Message",
    "Metrics",
    "ModelTurnEvent",
    "ReplayReport",
    "RunConfig",
    "RunResult",
    "SandboxExecutor",
    "ScriptedModel",
    "StepResult",
    "StopReason",
    "StoredRun",
    "Tool",
    "ToolCall",
    "ToolCallEvent",
    "ToolOutput",
    "ToolResult",
    "ToolResultEvent",
    "Toolchain",
    "Usage",
    "check_bash",
    "check_command",
    "estimate_tokens",
    "find_toolchains",
    "json_problem",
    "prune_history",
    "replay",
    "retry_after_seconds",
    "shell_prefixes",
]
