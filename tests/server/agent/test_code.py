"""Code tools: the bash allowlist, and code tools in CodeWorld's real sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from scillm.server.agent import (
    DEFAULT_BASH_ALLOWLIST,
    AgentEngine,
    AgentSettings,
    ScriptedModel,
    StopReason,
    check_bash,
)
from scillm.server.agent.errors import ToolArgumentsError


@pytest.mark.parametrize("script", [
    "echo hi | tr a-z A-Z",
    "for i in 1 2 3; do echo $i; done",
    "x=3\nif test $x -gt 2; then echo big; else echo small; fi",
    "seq 5 | sort -r | head -n 2 > /tmp/out 2>&1 && cat /tmp/out",
])
def test_bash_allowlist_accepts(script: str) -> None:
    check_bash(script, DEFAULT_BASH_ALLOWLIST)


@pytest.mark.parametrize("script", [
    "curl http://example.com", "echo hi; rm -rf /", "echo $(whoami)", "echo `id`",
    "ls | python3 -c 'print(1)'", "true && bash -c 'id'",
])
def test_bash_allowlist_refuses(script: str) -> None:
    with pytest.raises(ToolArgumentsError):
        check_bash(script, DEFAULT_BASH_ALLOWLIST)


@pytest.fixture
async def sandbox() -> AsyncIterator[Any]:
    try:
        from scillm.server.codeworld.sandbox import Sandbox, SandboxSettings
    except ImportError as exc:
        pytest.skip(f"CodeWorld's sandbox is not importable yet: {exc}")
    # Our own uid range: RLIMIT_NPROC counts per uid, so sharing uids with another
    # sandbox running on the host (another test session) would make fork fail.
    box = Sandbox(SandboxSettings(workers=1, base_uid=62100))
    try:
        await box.start()
    except Exception as exc:
        pytest.skip(f"CodeWorld's sandbox cannot start here: {exc}")
    try:
        yield box
    finally:
        await box.close()


async def test_code_tools_in_the_real_sandbox(sandbox: Any) -> None:
    from scillm.server.agent import SandboxExecutor

    executor = SandboxExecutor(sandbox)
    calls = [{"id": "p", "name": "run_python", "arguments": {"code": "print(sum(range(10)))"}},
             {"id": "e", "name": "run_python", "arguments": {"code": "raise ValueError('x')"}},
             {"id": "t", "name": "run_python", "arguments": {"code": "while True: pass"}}]
    if executor.supports("javascript"):
        calls.append({"id": "j", "name": "run_javascript",
                      "arguments": {"code": "console.log(6 * 7)"}})
    if executor.supports("bash"):
        calls.append({"id": "b", "name": "run_bash",
                      "arguments": {"code": "seq 3 | sort -r | head -n 1"}})
        calls.append({"id": "x", "name": "run_bash", "arguments": {"code": "whoami"}})
    model = ScriptedModel([{"content": "", "tool_calls": calls}, {"content": "done"}])
    settings = AgentSettings(tool_timeout_seconds=2.0, max_total_seconds=60)
    async with AgentEngine(settings, model, executor) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "run"}])
    assert result.stop_reason is StopReason.SUCCESS
    out = {c.id: r for c, r in result.tool_io}
    assert not out["p"].is_error and "45" in out["p"].output
    assert out["e"].is_error and "ValueError" in out["e"].output
    assert out["t"].is_error and "timeout" in out["t"].output
    if "j" in out:
        assert not out["j"].is_error and "42" in out["j"].output
    if "b" in out:
        assert not out["b"].is_error and "3" in out["b"].output
        assert out["x"].is_error and "not allowed" in out["x"].output
