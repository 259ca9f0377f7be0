"""Shared fixtures: a test code executor, the MCP test server's config, fixture paths."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scillm.server.agent import (
    AgentEngine,
    AgentSettings,
    CodeOutcome,
    CompleteFn,
    McpServerConfig,
)

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"


class SubprocessExecutor:
    """A test double for the sandbox: Python in a child process (not isolated)."""

    def __init__(self) -> None:
        self.sources: list[tuple[str, str]] = []

    def supports(self, language: str) -> bool:
        return language == "python"

    async def execute(self, language: str, source: str, *, timeout_s: float) -> CodeOutcome:
        self.sources.append((language, source))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-c", source, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return CodeOutcome("timeout", exit_code=None)
        status = "ok" if proc.returncode == 0 else "error"
        return CodeOutcome(status, out.decode(), err.decode(), proc.returncode)


def demo_server(name: str = "demo") -> McpServerConfig:
    return McpServerConfig(name=name, command=sys.executable,
                           args=(str(HERE / "mcp_server.py"),))


@pytest.fixture
def executor() -> SubprocessExecutor:
    return SubprocessExecutor()


async def started(settings: AgentSettings, model: CompleteFn,
                  executor: SubprocessExecutor | None) -> AgentEngine:
    engine = AgentEngine(settings, model, executor)
    await engine.start()
    return engine


def mcp_settings(**overrides: Any) -> AgentSettings:
    """Python code tool plus the demo MCP server over stdio."""
    values: dict[str, Any] = {"languages": ("python",), "mcp_servers": (demo_server(),),
                              "tool_timeout_seconds": 5.0}
    values.update(overrides)
    return AgentSettings(**values)


@pytest.fixture
async def sandbox() -> AsyncIterator[Any]:
    from scillm.server.codeworld.sandbox import Sandbox, SandboxSettings

    # Our own uid range: RLIMIT_NPROC counts per uid, so sharing uids with another
    # sandbox running on the host (another test session) would make fork fail.
    box = Sandbox(SandboxSettings(workers=1, base_uid=62100))
    await box.start()  # a sandbox that cannot start is a failure, never a skip
    try:
        yield box
    finally:
        await box.close()
