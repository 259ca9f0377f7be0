"""HTTP tools against a real local tool server: listing, calls, failures, 429 Retry-After."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from http_tools_server import HttpToolServer

from scillm.server.agent import (
    AgentEngine,
    AgentSettings,
    HttpToolServerConfig,
    RunConfig,
    ScriptedModel,
    StopReason,
    retry_after_seconds,
)
from scillm.server.agent.errors import AgentConfigError, HttpToolServerError


@pytest.fixture
def tools() -> Iterator[HttpToolServer]:
    server = HttpToolServer(busy_429s=1, retry_after="1").start()
    yield server
    server.stop()


def _settings(url: str, **overrides: object) -> AgentSettings:
    values: dict[str, object] = {
        "languages": (), "tool_timeout_seconds": 10.0, "http_tool_servers": (
            HttpToolServerConfig("lab", url, headers={"authorization": "Bearer configured"}),)}
    values.update(overrides)
    return AgentSettings(**values)  # type: ignore[arg-type]


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = datetime(2025, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(later, now=now.timestamp()) == 30.0


async def test_tools_are_listed_and_called(tools: HttpToolServer) -> None:
    model = ScriptedModel([{"content": "", "tool_calls": [
        {"id": "a", "name": "lab__add", "arguments": {"a": 2, "b": 40}},
        {"id": "e", "name": "lab__echo", "arguments": {"text": "hi"}},
        {"id": "f", "name": "lab__fail"}]}, {"content": "42"}])
    async with AgentEngine(_settings(tools.url), model) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "2+40"}],
                                          RunConfig(http_tool_headers={"x-run": "r1"}))
    assert result.stop_reason is StopReason.SUCCESS
    offered = {t["function"]["name"] for t in model.requests[0]["tools"]}
    assert {"lab__add", "lab__echo", "lab__fail", "lab__busy"} <= offered
    out = {c.id: r for c, r in result.tool_io}
    assert out["a"].output == "42" and not out["a"].is_error
    assert out["e"].output == "hi"
    assert out["f"].is_error and "always fails" in out["f"].output
    _, headers, body = tools.invokes("add")[0]
    assert body == {"name": "add", "arguments": {"a": 2, "b": 40}}
    assert headers["authorization"] == "Bearer configured" and headers["x-run"] == "r1"


async def test_a_429_is_retried_after_its_retry_after(tools: HttpToolServer) -> None:
    model = ScriptedModel([{"content": "", "tool_calls": [{"id": "b", "name": "lab__busy"}]},
                           {"content": "ok"}])
    async with AgentEngine(_settings(tools.url), model) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "go"}])
    busy = result.tool_io[0][1]
    assert not busy.is_error and busy.output == "done after waiting"
    (first, _, _), (second, _, _) = tools.invokes("busy")
    assert second - first >= 1.0  # it waited as told


async def test_a_429_beyond_the_retries_is_an_error(tools: HttpToolServer) -> None:
    tools.busy_429s = 5
    model = ScriptedModel([{"content": "", "tool_calls": [{"id": "b", "name": "lab__busy"}]},
                           {"content": "ok"}])
    tools.retry_after = "0"
    async with AgentEngine(_settings(tools.url, http_tool_retries=2), model) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "go"}])
    busy = result.tool_io[0][1]
    assert busy.is_error and "rate limited (429) after 3 attempt(s)" in busy.output
    assert len(tools.invokes("busy")) == 3


async def test_a_retry_after_past_the_timeout_is_not_waited_for(
        tools: HttpToolServer) -> None:
    tools.retry_after = "600"
    model = ScriptedModel([{"content": "", "tool_calls": [{"id": "b", "name": "lab__busy"}]},
                           {"content": "ok"}])
    async with AgentEngine(_settings(tools.url), model) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "go"}])
    assert result.tool_io[0][1].is_error and "Retry-After: 600" in result.tool_io[0][1].output
    assert len(tools.invokes("busy")) == 1


async def test_an_unreachable_tool_server_fails_the_run_clearly_that_named_it(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = ScriptedModel([{"content": "x"}])
    async with AgentEngine(_settings(f"http://127.0.0.1:{port}"), model) as engine:
        with pytest.raises(HttpToolServerError) as info:
            await engine.run_to_end([{"role": "user", "content": "go"}],
                                    RunConfig(http_tool_servers=("lab",)))
        assert info.value.server == "lab" and "unreachable" in str(info.value)
        # The caller learns the server's name, not the operator's internal address,
        # which the log has.
        assert str(port) not in str(info.value), str(info.value)
        assert f"127.0.0.1:{port}" in caplog.text and "skipped" not in caplog.text
        with pytest.raises(AgentConfigError):
            engine.run([], RunConfig(http_tool_servers=("other",)))
        # without tools, the server is not needed
        result = await engine.run_to_end([{"role": "user", "content": "go"}],
                                          RunConfig(use_tools=False))
    assert result.answer == "x" and result.skipped_servers == {}


async def test_an_unreachable_tool_server_is_skipped_by_a_run_that_did_not_name_it(
        tools: HttpToolServer, caplog: pytest.LogCaptureFixture) -> None:
    """One tool server down failed every tool-using run (503 "HTTP tool server 'lab' is
    unreachable"), though no run asked for it by name: a run offering every configured
    server skips it, logged with its address and noted in the result by name; the
    others' tools are offered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(tools.url, http_tool_servers=(
        HttpToolServerConfig("down", f"http://127.0.0.1:{port}"),
        HttpToolServerConfig("lab", tools.url)))
    model = ScriptedModel([{"content": "", "tool_calls": [
        {"id": "a", "name": "lab__add", "arguments": {"a": 2, "b": 40}}]}, {"content": "42"}])
    async with AgentEngine(settings, model) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "2+40"}])
    assert result.stop_reason is StopReason.SUCCESS and result.answer == "42"
    assert result.tool_io[0][1].output == "42"
    offered = {t["function"]["name"] for t in model.requests[0]["tools"]}
    assert "lab__add" in offered and not any(n.startswith("down__") for n in offered)
    assert list(result.skipped_servers) == ["down"]
    assert "unreachable" in result.skipped_servers["down"]
    assert str(port) not in repr(result.skipped_servers)
    (line,) = [r for r in caplog.records if "'down'" in r.getMessage()]
    assert line.levelname == "WARNING" and f"127.0.0.1:{port}" in line.getMessage()
    assert "skipped" in line.getMessage()


async def test_an_empty_list_of_tool_servers_offers_none(tools: HttpToolServer) -> None:
    """`http_tool_servers=()` is no server: none is listed (None offers all)."""
    model = ScriptedModel([{"content": "x"}])
    async with AgentEngine(_settings(tools.url), model) as engine:
        await engine.run_to_end([{"role": "user", "content": "go"}],
                                RunConfig(http_tool_servers=()))
        assert tools.requests == [] and "tools" not in model.requests[0]
        await engine.run_to_end([{"role": "user", "content": "go"}], RunConfig())
    assert [r[2] for r in tools.requests] == ["/tools"]


async def test_a_reply_far_too_large_is_the_tools_error_not_the_memorys(
        tools: HttpToolServer) -> None:
    """A tool server answering 64 MiB is read no further than 16 MiB: the call is an error
    result the model sees, and the run goes on."""
    model = ScriptedModel([{"content": "", "tool_calls": [{"id": "f", "name": "lab__flood"}]},
                           {"content": "gave up on it"}])
    async with AgentEngine(_settings(tools.url), model) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "go"}])
    flood = result.tool_io[0][1]
    assert flood.is_error and "the reply is over 16777216 bytes" in flood.output, flood.output
    assert result.stop_reason is StopReason.SUCCESS and result.answer == "gave up on it"


async def test_a_redirect_is_the_tools_error_not_an_empty_success(
        tools: HttpToolServer) -> None:
    """A tool server answering 307 elsewhere was reported as a successful call with no
    output (the redirect is rightly not followed): it is an error naming where it led."""
    model = ScriptedModel([{"content": "", "tool_calls": [{"id": "r", "name": "lab__elsewhere"}]},
                           {"content": "done"}])
    async with AgentEngine(_settings(tools.url), model) as engine:
        result = await engine.run_to_end([{"role": "user", "content": "go"}])
    moved = result.tool_io[0][1]
    assert moved.is_error and "307" in moved.output and "169.254.169.254" in moved.output, \
        moved.output


@pytest.mark.parametrize("name", ["Transfer-Encoding", "host", "Content-Length",
                                  "connection", "Proxy-Authorization"])
async def test_a_run_may_not_frame_or_route_its_tool_calls(tools: HttpToolServer,
                                                           name: str) -> None:
    """A caller's `transfer-encoding: chunked` went out beside httpx's own Content-Length
    (one request that a proxy may read as two, on a connection other runs share), and
    `host` chose another virtual host: such headers are refused, naming them."""
    async with AgentEngine(_settings(tools.url), ScriptedModel([{"content": "x"}])) as engine:
        with pytest.raises(AgentConfigError) as info:
            engine.run([{"role": "user", "content": "go"}],
                       RunConfig(http_tool_headers={name: "chunked", "x-run": "r1"}))
    assert info.value.param == "http_tool_headers" and name in str(info.value)
    assert tools.invokes("add") == []


@pytest.mark.parametrize("headers", [
    {"x-a": "ok\r\nInjected: 1"}, {"bad name": "v"}, {"": "v"}, {"x-b": "caf\u00e9"},
    {"x-c": "nul\x00"}], ids=["crlf", "space in name", "empty name", "non-ascii", "nul"])
async def test_a_header_http_cannot_carry_is_the_callers_error(tools: HttpToolServer,
                                                               headers: dict[str, str]) -> None:
    """A value with CR LF, or a name that is no HTTP token, failed the run as 'tool
    server unreachable: LocalProtocolError', and a non-ASCII value raised
    UnicodeEncodeError (an INTERNAL error): each is refused up front, naming it."""
    async with AgentEngine(_settings(tools.url), ScriptedModel([{"content": "x"}])) as engine:
        with pytest.raises(AgentConfigError) as info:
            engine.run([{"role": "user", "content": "go"}],
                       RunConfig(http_tool_headers=headers))
    assert info.value.param == "http_tool_headers"
    assert repr(next(iter(headers))) in str(info.value)
    assert not [r for r in tools.requests if "injected" in r[3]]
    with pytest.raises(AgentConfigError) as configured:  # the operator's own, at start-up
        HttpToolServerConfig("lab", tools.url, headers=headers).validate()
    assert configured.value.param == "http_tool_servers.headers"


_SECRET = "tok-operator-0123456789"


async def test_the_operators_credential_never_reaches_the_model_or_the_caller() -> None:
    """A tool server may quote the credential it was sent: an echo of who called, a 401
    "invalid token ...". What it says goes to the model and to the caller (the run's tool
    results, its error), who must never see the operator's configured header."""
    server = HttpToolServer().start()
    try:
        settings = _settings(server.url, http_tool_servers=(HttpToolServerConfig(
            "lab", server.url, headers={"authorization": f"Bearer {_SECRET}"}),))
        model = ScriptedModel([{"content": "", "tool_calls": [
            {"id": "w", "name": "lab__whoami"}, {"id": "d", "name": "lab__deny"}]},
            {"content": "done"}])
        async with AgentEngine(settings, model) as engine:
            result = await engine.run_to_end([{"role": "user", "content": "who"}], RunConfig())
        out = {c.id: r for c, r in result.tool_io}
        assert out["w"].output == "you are [redacted]" and not out["w"].is_error
        assert out["d"].is_error and "401" in out["d"].output
        assert "invalid token [redacted]" in out["d"].output
        assert _SECRET not in repr(result) and _SECRET not in repr(model.requests)
        assert server.invokes("whoami")[0][1]["authorization"] == f"Bearer {_SECRET}"
    finally:
        server.stop()
    denying = HttpToolServer(deny_listing=True).start()
    try:
        settings = _settings(denying.url, http_tool_servers=(HttpToolServerConfig(
            "lab", denying.url, headers={"x-api-key": _SECRET}),))
        async with AgentEngine(settings, ScriptedModel([{"content": "x"}])) as engine:
            with pytest.raises(HttpToolServerError) as info:
                await engine.run_to_end([{"role": "user", "content": "hi"}],
                                        RunConfig(http_tool_servers=("lab",)))
            # Not named, it is skipped, and what it said is noted, redacted.
            skipping = await engine.run_to_end([{"role": "user", "content": "hi"}])
        assert "401" in skipping.skipped_servers["lab"]
        assert _SECRET not in skipping.skipped_servers["lab"]
        assert "401" in str(info.value) and "[redacted]" in str(info.value)
        assert _SECRET not in str(info.value)
    finally:
        denying.stop()
