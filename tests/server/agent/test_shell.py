"""The shell tool: argv prefixes, presets, and commands run in CodeWorld's real sandbox."""

from __future__ import annotations

from typing import Any

import pytest

from scillm.server.agent import (
    SHELL_PRESETS,
    AgentEngine,
    AgentSettings,
    RunConfig,
    ScriptedModel,
    StopReason,
    check_command,
    shell_prefixes,
)
from scillm.server.agent.errors import AgentConfigError, ToolArgumentsError

PREFIXES = shell_prefixes(("git status", "ls"), ("python",))


@pytest.mark.parametrize(("command", "argv"), [
    ("echo hi", ["echo", "hi"]),
    ("git status --short", ["git", "status", "--short"]),
    ("python3 -c 'print(1); print(2)'", ["python3", "-c", "print(1); print(2)"]),
    ("ls -l '*.py' ; rm -rf /", ["ls", "-l", "*.py", ";", "rm", "-rf", "/"]),
])
def test_allowed_commands_split_into_argv(command: str, argv: list[str]) -> None:
    assert check_command(command, PREFIXES) == argv


@pytest.mark.parametrize("command", [
    "git push", "rm -rf /", "echoevil", "/bin/echo hi", "bash -c 'echo hi'", "", "'unclosed",
])
def test_other_commands_are_refused(command: str) -> None:
    with pytest.raises(ToolArgumentsError):
        check_command(command, PREFIXES)


def test_presets_are_the_seed_language_profiles() -> None:
    assert set(SHELL_PRESETS) == {"python", "javascript", "rust", "go", "bash"}
    assert shell_prefixes((), ("rust", "go")) == (("cargo",), ("rustc",), ("go",), ("echo",))
    assert shell_prefixes((), ()) == ()
    with pytest.raises(AgentConfigError) as info:
        shell_prefixes((), ("cobol",))
    assert info.value.param == "shell_presets"


async def test_shell_commands_run_in_the_sandbox(sandbox: Any) -> None:
    from scillm.server.agent import SandboxExecutor

    calls = [
        {"id": "py", "name": "run_shell",
         "arguments": {"command": "python3 -c 'import sys; print(6 * 7, sys.argv[1:])' a|b"}},
        {"id": "echo", "name": "run_shell", "arguments": {"command": "echo $HOME > x"}},
        {"id": "exit", "name": "run_shell", "arguments": {"command": "python3 -c 'exit(4)'"}},
        {"id": "no", "name": "run_shell", "arguments": {"command": "cat /etc/hostname"}},
    ]
    model = ScriptedModel([{"content": "", "tool_calls": calls}, {"content": "done"}])
    settings = AgentSettings(languages=(), tool_timeout_seconds=10.0)
    async with AgentEngine(settings, model, SandboxExecutor(sandbox)) as engine:
        assert "run_shell" not in {t["function"]["name"] for t in engine.tools()}
        config = RunConfig(shell_presets=("python",))
        assert "run_shell" in {t["function"]["name"] for t in engine.tools(config)}
        result = await engine.run_to_end([{"role": "user", "content": "run"}], config)
    assert result.stop_reason is StopReason.SUCCESS
    out = {c.id: r for c, r in result.tool_io}
    assert not out["py"].is_error and "42 ['a|b']" in out["py"].output
    assert out["echo"].output.count("$HOME > x") == 1  # no shell: printed as given
    assert out["exit"].is_error and out["exit"].exit_code == 4
    assert out["no"].is_error and "not allowed" in out["no"].output
    assert out["py"].exit_code == 0 and out["py"].stdout is not None
