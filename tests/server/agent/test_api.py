"""The curated public API of scillm.server.agent is pinned."""

from __future__ import annotations

import scillm.server.agent as agent
from scillm.server.agent import errors


def test_public_names() -> None:
    assert sorted(agent.__all__) == sorted([
        "DEFAULT_BASH_ALLOWLIST", "DEFAULT_GIVE_UP_MARKERS", "PROFILES", "SHELL_PRESETS",
        "AgentEngine", "AgentEvent", "AgentSettings", "CodeExecutor", "CodeOutcome",
        "CommandExecutor", "CompleteFn", "Difference", "FinalEvent", "HttpToolServerConfig",
        "JsonlTrace", "LanguageProfile", "McpServerConfig", "Message", "Metrics",
        "ModelTurnEvent",
        "ReplayReport", "RunConfig", "RunResult", "SandboxExecutor", "ScriptedModel",
        "StepResult", "StopReason", "StoredRun", "Tool", "ToolCall", "ToolCallEvent",
        "ToolOutput", "ToolResult", "ToolResultEvent", "Toolchain", "Usage", "check_bash",
        "check_command", "estimate_tokens", "find_toolchains", "json_problem",
        "prune_history", "replay", "retry_after_seconds", "shell_prefixes"])
    for name in agent.__all__:
        assert hasattr(agent, name), name


def test_error_hierarchy() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.AgentError)
    assert issubclass(errors.McpUnavailableError, errors.McpServerError)
    assert issubclass(errors.ToolTimeoutError, errors.ToolError)


def test_settings_validation() -> None:
    import pytest

    from scillm.server.agent import AgentSettings, McpServerConfig

    with pytest.raises(errors.AgentConfigError) as info:
        AgentSettings(max_iterations=0).validate()
    assert info.value.param == "max_iterations"
    with pytest.raises(errors.AgentConfigError):
        AgentSettings(languages=("cobol",)).validate()
    with pytest.raises(errors.AgentConfigError):
        AgentSettings(mcp_servers=(McpServerConfig("x"),)).validate()
