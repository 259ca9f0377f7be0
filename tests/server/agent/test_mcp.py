"""MCP tools against a real MCP server (the SDK's MCPServer) over stdio and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from scillm.server.agent import (
    AgentEngine,
    AgentSettings,
    McpServerConfig,
    ScriptedModel,
    StopReason,
)
from scillm.server.agent.errors import AgentConfigError, McpUnavailableError

from .conftest import HERE, demo_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_stdio_tools_are_discovered_and_called() -> None:
    model = ScriptedModel([{"content": "", "tool_calls": [
        {"name": "demo__add", "arguments": {"a": 20, "b": 22}}]}, {"content": "42"}])
    settings = AgentSettings(languages=(), mcp_servers=(demo_server(),))
    async with AgentEngine(settings, model) as engine:
        names = [t["function"]["name"] for t in engine.tools()]
        assert names == ["demo__add", "demo__crash", "demo__endless", "demo__fail",
                         "demo__flood", "demo__hang"]
        add = next(t for t in engine.tools() if t["function"]["name"] == "demo__add")
        assert add["function"]["parameters"]["required"] == ["a", "b"]
        result = await engine.run_to_end([{"role": "user", "content": "20+22?"}])
    assert result.stop_reason is StopReason.SUCCESS
    assert result.tool_io[0][1].output == "42"


async def test_hanging_tool_times_out_as_an_observation() -> None:
    model = ScriptedModel([{"content": "", "tool_calls": [{"name": "demo__hang"}]},
                           {"content": "", "tool_calls": [
                               {"name": "demo__add", "arguments": {"a": 1, "b": 1}}]},
                           {"content": "gave up"}])
    settings = AgentSettings(languages=(), mcp_servers=(demo_server(),),
                             tool_timeout_seconds=0.5)
    async with AgentEngine(settings, model) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "hang"}])
    assert result.stop_reason is StopReason.SUCCESS and result.answer == "gave up"
    timed_out = result.tool_io[0][1]
    assert timed_out.is_error and "timed out after 0.5 s" in timed_out.output
    assert "ToolTimeoutError" in timed_out.output
    # the server still answers after a timed-out call
    assert result.tool_io[1][1].output == "2"


async def test_a_server_that_died_is_started_again_for_the_next_call() -> None:
    """A tool that took its MCP server down left the connection dead for good: every
    later call of every run was "Connection closed" until the gateway restarted. The next
    call starts the server again (at most once every few seconds)."""
    model = ScriptedModel([{"content": "", "tool_calls": [{"name": "demo__crash"}]},
                           {"content": "", "tool_calls": [
                               {"name": "demo__add", "arguments": {"a": 2, "b": 3}}]},
                           {"content": "done"}])
    settings = AgentSettings(languages=(), mcp_servers=(demo_server(),),
                             tool_timeout_seconds=10.0)
    async with AgentEngine(settings, model) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "go"}])
    crashed, added = result.tool_io[0][1], result.tool_io[1][1]
    assert crashed.is_error, crashed
    assert not added.is_error and added.output == "5", added


async def test_a_result_past_the_limit_is_the_tools_error_and_the_server_goes_on() -> None:
    """The MCP SDK reads a server's stdout line by line, joining a long line chunk by
    chunk on the event loop: a 30 MB result stalled every caller of the gateway for
    seconds and the call timed out. A line past 16 MiB is cut off before the mesh reads
    it: the call is an error naming the limit, and the server answers the next call."""
    model = ScriptedModel([{"content": "", "tool_calls": [
        {"name": "demo__flood", "arguments": {"mib": 40}}]},
        {"content": "", "tool_calls": [{"name": "demo__add", "arguments": {"a": 1, "b": 2}}]},
        {"content": "done"}])
    settings = AgentSettings(languages=(), mcp_servers=(demo_server(),),
                             tool_timeout_seconds=60.0)
    async with AgentEngine(settings, model) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "go"}])
    flood, added = result.tool_io[0][1], result.tool_io[1][1]
    assert flood.is_error and "16777216 bytes" in flood.output, flood.output[:300]
    assert not added.is_error and added.output == "3", added


async def test_unreachable_http_server_is_skipped_with_an_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}/mcp"
    settings = AgentSettings(languages=(), mcp_servers=(McpServerConfig("gone", url=url),))
    async with AgentEngine(settings, ScriptedModel([{"content": "ok"}])) as engine:
        assert "gone" in engine.mcp_errors and "unreachable" in engine.mcp_errors["gone"]
        assert engine.tools() == []
        result = await engine.run_to_end([{"role": "user", "content": "hi"}])
    assert result.stop_reason is StopReason.SUCCESS


async def test_unreachable_server_fails_start_when_required() -> None:
    bad = McpServerConfig("nope", command=sys.executable, args=("-c", "import sys; sys.exit(3)"))
    settings = AgentSettings(languages=(), mcp_servers=(bad,), mcp_required=True,
                             mcp_connect_timeout_seconds=5.0)
    engine = AgentEngine(settings, ScriptedModel([{"content": "ok"}]))
    with pytest.raises(McpUnavailableError) as info:
        await engine.start()
    assert info.value.server == "nope"
    await engine.close()


async def test_unconfigured_server_in_run_config_is_a_config_error() -> None:
    from scillm.server.agent import RunConfig

    async with AgentEngine(AgentSettings(languages=()), ScriptedModel([{"content": "x"}])) as e:
        with pytest.raises(AgentConfigError):
            e.run([], RunConfig(mcp_servers=("missing",)))


@contextlib.contextmanager
def _serving(*framing: str) -> Iterator[str]:
    """The test MCP server over streamable HTTP (SSE replies, or JSON with "json")."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "mcp_server.py"), "http", str(port),
                             *framing], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("MCP HTTP test server exited")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # not left serving after the test
            proc.kill()
            proc.wait()


@pytest.fixture
def http_server() -> Iterator[str]:
    with _serving() as url:
        yield url


@pytest.fixture(params=["sse", "json"])
def any_http_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """The server answering in SSE, then in JSON."""
    with _serving(*(["json"] if request.param == "json" else [])) as url:
        yield url


async def test_streamable_http_tools(http_server: str) -> None:
    model = ScriptedModel([{"content": "", "tool_calls": [
        {"name": "web__add", "arguments": {"a": 1, "b": 2}},
        {"name": "web__fail", "arguments": {}}]}, {"content": "3"}])
    settings = AgentSettings(languages=(), mcp_servers=(McpServerConfig("web", url=http_server),))
    async with AgentEngine(settings, model) as engine:
        result = await asyncio.wait_for(
            engine.run_to_end([{"role": "user", "content": "1+2"}]), 30)
    (_, added), (_, failed) = result.tool_io
    assert added.output == "3" and not added.is_error
    assert failed.is_error and "always fails" in failed.output


async def test_an_http_reply_past_the_limit_is_the_tools_error(any_http_server: str) -> None:
    """The SDK read an HTTP MCP server's JSON reply whole, however long (an endless one
    until the memory ran out), and failed an SSE event past 1 MiB as a lost connection.
    A reply is read up to 16 MiB, as from a stdio server: past it the call is an error
    naming the server and the limit, and the session goes on."""
    model = ScriptedModel([
        {"content": "", "tool_calls": [{"name": "web__flood", "arguments": {"mib": 40}}]},
        {"content": "", "tool_calls": [{"name": "web__endless"}]},
        {"content": "", "tool_calls": [{"name": "web__flood", "arguments": {"mib": 2}},
                                       {"name": "web__add", "arguments": {"a": 1, "b": 2}}]},
        {"content": "done"}])
    settings = AgentSettings(languages=(), tool_timeout_seconds=20.0,
                             mcp_servers=(McpServerConfig("web", url=any_http_server),))
    async with AgentEngine(settings, model) as engine:
        result = await asyncio.wait_for(engine.run_to_end([{"role": "user", "content": "go"}]),
                                        120)
    flood, endless, two, added = (r for _, r in result.tool_io)
    # The endless reply was cut by the bound, not waited out (that would be a timeout's
    # error, not the limit's).
    for over in (flood, endless):
        assert over.is_error and "MCP server 'web'" in over.output, over.output[:300]
        assert "over 16777216 bytes" in over.output, over.output[:300]
    assert not two.is_error and two.output.startswith("xxx"), two.output[:300]  # as over stdio
    assert not added.is_error and added.output == "3", added


_SKIPPING = """
import gc, logging, sys
import uvloop
from scillm.server.agent import AgentEngine, AgentSettings, McpServerConfig, ScriptedModel

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
servers = (
    McpServerConfig("silent", command=sys.executable, args=("-c", "import time; time.sleep(60)")),
    McpServerConfig("exits", command=sys.executable, args=("-c", "import sys; sys.exit(3)")),
    McpServerConfig("gone", url=sys.argv[1]))

async def main():
    settings = AgentSettings(languages=(), mcp_servers=servers, mcp_connect_timeout_seconds=1.0)
    async with AgentEngine(settings, ScriptedModel([{"content": "ok"}])) as engine:
        assert sorted(engine.mcp_errors) == ["exits", "gone", "silent"], engine.mcp_errors
    gc.collect()

uvloop.run(main())
gc.collect()
"""


def test_a_server_skipped_at_start_is_logged_once_and_nothing_else() -> None:
    """A server that did not answer in time was logged as skipped, then asyncio logged
    "Future exception was never retrieved" with a traceback of "connection cancelled":
    the start's future, failed when the connection was closed, that no one awaited any
    more. Each skipped server is one warning line, and nothing else is logged."""
    url = f"http://127.0.0.1:{_free_port()}/mcp"
    done = subprocess.run([sys.executable, "-c", _SKIPPING, url], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "never retrieved" not in done.stderr, done.stderr
    assert len(lines) == 3, done.stderr
    for name, why in (("silent", "did not answer within 1 s"),
                      ("exits", "is unreachable"), ("gone", "is unreachable")):
        said = [line for line in lines if f"MCP server '{name}'" in line]
        assert len(said) == 1 and why in said[0] and said[0].startswith("WARNING"), lines
        assert "its tools are not offered" in said[0], said


@pytest.mark.usefixtures("no_egress_proxy")
async def test_an_http_server_is_reached_through_the_environments_proxy(
        http_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MCP client's own transport read no proxy from the environment: behind an egress
    proxy an HTTP MCP server was unreachable. It goes as the provider calls go
    (`server/egress.py`)."""
    from forward_proxy import ForwardProxy

    proxy = ForwardProxy().start()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        model = ScriptedModel([{"content": "", "tool_calls": [
            {"name": "web__add", "arguments": {"a": 1, "b": 2}}]}, {"content": "3"}])
        settings = AgentSettings(languages=(),
                                 mcp_servers=(McpServerConfig("web", url=http_server),))
        async with AgentEngine(settings, model) as engine:
            result = await asyncio.wait_for(
                engine.run_to_end([{"role": "user", "content": "1+2"}]), 30)
    finally:
        proxy.stop()
    ((_, added),) = result.tool_io
    assert added.output == "3" and not added.is_error
    assert http_server in proxy.forwarded, proxy.forwarded


@pytest.mark.usefixtures("no_egress_proxy")
async def test_a_proxy_that_cannot_be_used_is_said_without_its_credentials(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An HTTP MCP server behind a proxy httpx refuses (SOCKS without `socksio`) was
    skipped with httpx's message, which repeats the proxy URL, password included."""
    monkeypatch.setenv("ALL_PROXY", "socks5://alice:S3cretPw@127.0.0.1:1080")
    url = f"http://127.0.0.1:{_free_port()}/mcp"
    settings = AgentSettings(languages=(), mcp_servers=(McpServerConfig("web", url=url),))
    async with AgentEngine(settings, ScriptedModel([{"content": "ok"}])) as engine:
        said = engine.mcp_errors["web"]
    assert "httpx[socks]" in said and "127.0.0.1:1080" in said, said
    for text in (said, caplog.text):
        assert "S3cretPw" not in text and "alice" not in text, text
