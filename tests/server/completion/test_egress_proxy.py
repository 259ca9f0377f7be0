"""A deployment reached through the environment's egress proxy (`HTTP_PROXY`,
`HTTPS_PROXY`, `ALL_PROXY`, and `NO_PROXY` for the hosts reached directly), as httpx, the
openai SDK and LiteLLM reach theirs: a real forward proxy between the mesh and a scripted
upstream, unary and streamed calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from forward_proxy import ForwardProxy
from meshutil import mesh_settings, start_mesh
from scripted_upstream import ScriptedUpstream

from scillm.clients import ScillmClient

pytestmark = pytest.mark.usefixtures("no_egress_proxy")

REQUEST = {"model": "up", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    started = ForwardProxy().start()
    yield started
    started.stop()


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    started = ScriptedUpstream([{"content": "through"}]).start()
    yield started
    started.stop()


async def _ask(tmp_path: Path, upstream: ScriptedUpstream) -> tuple[str, str]:
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": "up", "litellm_params": {
        "model": "openai/up", "api_base": upstream.url, "api_key": "x"}}]}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, http_enabled=False,
                                       services=("completion",)))
    try:
        async with ScillmClient(running.grpc_target) as client:
            reply = await client.completion.create(REQUEST)
            streamed = "".join(c.delta.content for e in [
                e async for e in client.completion.stream(REQUEST)] if e.HasField("chunk")
                for c in e.chunk.choices)
    finally:
        running.stop()
    return reply.choices[0].message.content[0].text, streamed


# (Not `http_proxy`: grpc-core reads it too, and would send the test's own gRPC client
# to the mesh through this proxy, which takes no CONNECT.)
@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
async def test_a_deployment_is_reached_through_the_environments_proxy(
        tmp_path: Path, proxy: ForwardProxy, upstream: ScriptedUpstream,
        monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """The mesh's own HTTP client read no proxy from the environment: behind an egress
    proxy, every provider call failed to connect."""
    monkeypatch.setenv(variable, proxy.url)
    assert await _ask(tmp_path, upstream) == ("through", "through")
    assert proxy.forwarded == [f"{upstream.url}/chat/completions"] * 2


async def test_no_proxy_reaches_a_host_directly(
        tmp_path: Path, proxy: ForwardProxy, upstream: ScriptedUpstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.org,127.0.0.1")
    assert await _ask(tmp_path, upstream) == ("through", "through")
    assert proxy.forwarded == []


async def test_a_proxy_without_a_scheme_is_an_http_proxy(
        tmp_path: Path, proxy: ForwardProxy, upstream: ScriptedUpstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`HTTP_PROXY=127.0.0.1:3128`, as httpx, the openai SDK and curl read it: it failed
    every provider call ("Unknown scheme for proxy URL")."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url.removeprefix("http://"))
    assert await _ask(tmp_path, upstream) == ("through", "through")
    assert len(proxy.forwarded) == 2


@pytest.mark.parametrize("value", ["socks5://alice:S3cretPw@127.0.0.1:1080",
                                   "ftp://alice:S3cretPw@127.0.0.1:21"])
async def test_a_proxy_that_cannot_be_used_is_said_without_its_credentials(
        tmp_path: Path, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch,
        value: str) -> None:
    """A proxy httpx refuses (SOCKS without `socksio`, an unknown scheme) was named whole in
    the error every caller got, its password included."""
    from scillm.clients import RPCError

    monkeypatch.setenv("ALL_PROXY", value)
    with pytest.raises(RPCError) as info:
        await _ask(tmp_path, upstream)
    assert "S3cretPw" not in str(info.value) and "alice" not in str(info.value), info.value
    assert "127.0.0.1" in info.value.message and "egress proxy" in info.value.message
    if value.startswith("socks"):
        assert "httpx[socks]" in info.value.message, info.value
