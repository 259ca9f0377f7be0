"""An MCP server's failure names the server to the caller and the model; where it is (its
URL, its command) goes to the log only. Real MCP servers (the test server) over HTTP and
stdio, started, then taken down by a tool call."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from scillm.server.agent import (
    AgentEngine,
    AgentSettings,
    McpServerConfig,
    RunResult,
    ScriptedModel,
    StopReason,
)

from .conftest import HERE
from .test_mcp import _free_port, _serving


def _crash_then_add(server: str) -> ScriptedModel:
    """A model that takes the server down, then calls it again."""
    return ScriptedModel([{"content": "", "tool_calls": [{"name": f"{server}__crash"}]},
                          {"content": "", "tool_calls": [
                              {"name": f"{server}__add", "arguments": {"a": 1, "b": 2}}]},
                          {"content": "done"}])


def _said(result: RunResult) -> str:
    """Everything a run's caller and its model read."""
    return repr((result.answer, result.error, result.transcript, result.tool_io,
                 result.skipped_servers))


async def test_an_http_server_that_went_away_is_named_not_located(
        caplog: pytest.LogCaptureFixture) -> None:
    """"MCP server 'web' went away and did not come back: MCP server 'web'
    (http://127.0.0.1:57095/mcp) is unreachable" reached the model and the caller."""
    with _serving() as url:
        settings = AgentSettings(languages=(), mcp_servers=(McpServerConfig("web", url=url),),
                                 tool_timeout_seconds=10.0)
        async with AgentEngine(settings, _crash_then_add("web")) as engine:
            result = await engine.run_to_end([{"role": "user", "content": "go"}])
    assert result.stop_reason is StopReason.SUCCESS and result.answer == "done"
    crashed, again = (r for _, r in result.tool_io)
    assert crashed.is_error and again.is_error, result.tool_io
    assert "MCP server 'web' went away and did not come back" in again.output, again.output
    where = url.removeprefix("http://").removesuffix("/mcp")  # 127.0.0.1:port
    assert where not in _said(result), _said(result)
    assert url in caplog.text  # the operator reads where it is


async def test_a_stdio_server_that_went_away_is_named_not_located(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A stdio server's command (a path on the gateway's host) reached the model and the
    caller the same way. The command here starts the test server once, then fails."""
    command = tmp_path / "private-tools" / "start-mcp"
    command.parent.mkdir()
    command.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"marker = {str(tmp_path / 'started')!r}\n"
        "if os.path.exists(marker):\n"
        "    sys.exit(3)\n"
        "open(marker, 'w').close()\n"
        f"os.execv(sys.executable, [sys.executable, {str(HERE / 'mcp_server.py')!r}, "
        "'stdio'])\n")
    command.chmod(0o755)
    settings = AgentSettings(languages=(), tool_timeout_seconds=10.0,
                             mcp_servers=(McpServerConfig("demo", command=str(command)),))
    async with AgentEngine(settings, _crash_then_add("demo")) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "go"}])
    again = result.tool_io[1][1]
    assert again.is_error and "MCP server 'demo' went away and did not come back" in \
        again.output, again.output
    assert str(tmp_path) not in _said(result), _said(result)
    assert str(command) in caplog.text


async def test_a_server_skipped_at_start_is_named_not_located(
        caplog: pytest.LogCaptureFixture) -> None:
    """Why a server was skipped (which a run notes) names it; the log says where it is."""
    url = f"http://127.0.0.1:{_free_port()}/mcp"
    missing = "/opt/private-tools/bin/mcp-server"
    settings = AgentSettings(languages=(), mcp_connect_timeout_seconds=10.0, mcp_servers=(
        McpServerConfig("gone", url=url), McpServerConfig("absent", command=missing)))
    async with AgentEngine(settings, ScriptedModel([{"content": "ok"}])) as engine:
        errors = engine.mcp_errors
        result = await engine.run_to_end([{"role": "user", "content": "hi"}])
    assert sorted(errors) == ["absent", "gone"], errors
    assert errors["gone"].startswith("MCP server 'gone' is unreachable"), errors
    assert errors["absent"].startswith("MCP server 'absent' is unreachable"), errors
    assert result.skipped_servers == errors
    for where in (url, url.removeprefix("http://").removesuffix("/mcp"), missing):
        assert where not in repr(errors), errors
        assert where in caplog.text, caplog.text
    assert os.sep + "opt" not in _said(result)
