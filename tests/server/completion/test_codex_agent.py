"""The codex-agent provider against a real, fault-injecting upstream on loopback: what it
sends a Codex sidecar, and its own retries (with retry_stats) on the engine, over gRPC and
through the OpenAI door."""

from __future__ import annotations

import asyncio
import random
import re
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from completion_upstream import EngineFactory, Upstream, ok, status
from meshutil import mesh_settings, start_mesh

from scillm.clients import ScillmClient
from scillm.server.completion import (
    CompletionSettings,
    ProviderUnavailable,
    RateLimited,
    StreamEnd,
    UpstreamError,
)
from scillm.server.completion._codex_agent import BACKOFF_BASE_S, BACKOFF_MAX_S
from scillm.server.completion._retry import backoff_delay


def config(up: Upstream, **router: Any) -> dict[str, Any]:
    """`cx` at `<upstream>/v1` (the /v1 tolerated), `cx-local` at the bare base with
    force_local; the engine itself does not retry, so what retries is the provider."""
    return {"model_list": [
        {"model_name": "cx", "litellm_params": {"model": "codex-agent/gpt-5",
                                                "api_base": f"{up.url}/v1"}},
        {"model_name": "cx-local", "litellm_params": {"model": "codex-agent/gpt-5",
                                                      "api_base": up.url,
                                                      "force_local": True}},
    ], "router_settings": {"num_retries": 0, **router}}


def expected_sleep(seed: int, failures: int) -> float:
    rng = random.Random(seed)
    return sum(backoff_delay(n, rng, base_s=BACKOFF_BASE_S, max_s=BACKOFF_MAX_S,
                             retry_after_s=None) for n in range(failures))


async def hang_up(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
    """Close the connection without answering: a transport error."""
    return False


async def test_what_the_sidecar_receives(upstream: Upstream,
                                         make_engine: EngineFactory) -> None:
    engine = await make_engine(config(upstream))
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"}
               for i in range(11)]
    messages = [{"role": "system", "content": "You are Codex."}, *history]
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    await engine.complete({"model": "cx", "messages": messages, "reasoning_effort": "high",
                           "response_format": fmt})
    await engine.complete({"model": "cx-local", "messages": messages[:2]})
    (path1, headers1, body1), (path2, headers2, _) = upstream.requests
    assert path1 == path2 == "/v1/chat/completions"
    assert body1["model"] == "gpt-5"
    assert [m["content"] for m in body1["messages"]] == [
        "You are Codex.", *(f"turn {i}" for i in range(3, 11))]
    assert body1["reasoning"] == {"effort": "high"} and body1["reasoning_effort"] == "high"
    assert body1["response_format"] == fmt
    sessions = [headers1["x-codex-session"], headers2["x-codex-session"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", s) for s in sessions)
    assert sessions[0] != sessions[1]
    assert "x-codex-force-local" not in headers1 and headers2["x-codex-force-local"] == "1"


def test_base_and_switches_from_the_environment() -> None:
    env = {"CODEX_AGENT_API_BASE": "http://sidecar:8077/v1/", "CODEX_AGENT_FORCE_LOCAL": "1",
           "CODEX_AGENT_API_KEY": "k-123"}
    settings = CompletionSettings.from_mapping({"model_list": [
        {"model_name": "judge", "litellm_params": {"model": "codex-agent/gpt-5"}}]}, env)
    dep = settings.model_list[0]
    assert dep.api_base == "http://sidecar:8077/v1" and dep.provider == "codex-agent"
    assert ("X-Codex-Force-Local", "1") in dep.headers
    assert dep.api_key is not None and dep.api_key.value == "k-123"
    assert settings.ignored_keys == ()
    assert "codex-agent/*" in CompletionSettings.default(env).model_list[-1].model_name
    assert all(d.provider != "codex-agent" for d in CompletionSettings.default({}).model_list)
    other = CompletionSettings.from_mapping({"model_list": [
        {"model_name": "m", "litellm_params": {"model": "openai/m", "force_local": True}}]}, {})
    assert other.ignored_keys == ("model_list[0].litellm_params.force_local",)


async def test_no_sidecar_configured_says_what_to_set(make_engine: EngineFactory) -> None:
    engine = await make_engine({"model_list": [
        {"model_name": "cx", "litellm_params": {"model": "codex-agent/gpt-5"}}]})
    with pytest.raises(ProviderUnavailable, match="CODEX_AGENT_API_BASE"):
        await engine.complete({"model": "cx", "messages": [{"role": "user", "content": "x"}]})


async def test_5xx_and_transport_errors_are_retried_with_seeded_jitter(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    engine = await make_engine(config(upstream))
    upstream.plan("gpt-5", status(503), hang_up, ok)
    done = await engine.complete({"model": "cx", "seed": 7,
                                  "messages": [{"role": "user", "content": "again"}]})
    assert done.response["choices"][0]["message"]["content"] == "again"
    stats = done.routing.retry_stats
    assert stats is not None
    assert (stats.attempts, stats.failures, stats.statuses) == (3, 2, [503, 0, 200])
    assert (stats.first_failure_status, stats.final_status) == (503, 200)
    assert stats.total_sleep_s == pytest.approx(expected_sleep(7, 2))
    assert done.routing.attempts == 1  # the engine called the provider once
    upstream.plan("gpt-5", status(502), ok)
    again = await engine.complete({"model": "cx", "seed": 7,
                                   "messages": [{"role": "user", "content": "same seed"}]})
    assert again.routing.retry_stats is not None
    assert again.routing.retry_stats.total_sleep_s == pytest.approx(expected_sleep(7, 1))


async def test_429_and_4xx_are_left_to_the_router(upstream: Upstream,
                                                  make_engine: EngineFactory) -> None:
    engine = await make_engine(config(upstream))
    upstream.plan("gpt-5", status(429), ok)
    with pytest.raises(RateLimited):
        await engine.complete({"model": "cx", "messages": [{"role": "user", "content": "x"}]})
    assert upstream.calls("gpt-5") == 1
    upstream.plan("gpt-5", status(400), ok)
    with pytest.raises(UpstreamError) as caught:
        await engine.complete({"model": "cx", "messages": [{"role": "user", "content": "y"}]})
    assert caught.value.status == 400 and upstream.calls("gpt-5") == 2


async def test_retries_stop_after_two(upstream: Upstream, make_engine: EngineFactory) -> None:
    engine = await make_engine(config(upstream))
    upstream.plan("gpt-5", status(500))
    with pytest.raises(UpstreamError) as caught:
        await engine.complete({"model": "cx", "messages": [{"role": "user", "content": "x"}]})
    assert caught.value.status == 500 and upstream.calls("gpt-5") == 3


async def test_a_stream_is_retried_before_its_first_chunk(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    engine = await make_engine(config(upstream))
    upstream.plan("gpt-5", status(503), ok)
    async with aclosing(engine.stream({"model": "cx", "stream": True, "seed": 3, "messages": [
            {"role": "user", "content": "one two"}]})) as events:
        seen = [e async for e in events]
    end = seen[-1]
    assert isinstance(end, StreamEnd) and end.routing.retry_stats is not None
    assert end.routing.retry_stats.statuses == [503, 200]
    assert end.routing.retry_stats.total_sleep_s == pytest.approx(expected_sleep(3, 1))


async def test_retry_stats_reach_grpc_and_the_openai_door(upstream: Upstream,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({**config(upstream), "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=path))
    try:
        upstream.plan("gpt-5", status(503), status(500), ok)
        async with ScillmClient(running.grpc_target) as client:
            reply = await client.completion.create({"model": "cx", "seed": 11, "messages": [
                {"role": "user", "content": "over grpc"}]})
        stats = reply.routing.retry_stats
        assert reply.routing.provider == "codex-agent"
        assert (stats.attempts, stats.failures, list(stats.statuses)) == (3, 2, [503, 500, 200])
        assert stats.first_failure_status == 503 and stats.final_status == 200
        assert stats.total_sleep.ToNanoseconds() / 1e9 == pytest.approx(
            expected_sleep(11, 2), abs=1e-6)
        upstream.plan("gpt-5", hang_up, ok)
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(f"{running.http_url}/v1/chat/completions", json={
                "model": "cx", "seed": 11, "messages": [{"role": "user", "content": "http"}]})
            http_stats = resp.json()["scillm"]["routing"]["retry_stats"]
            assert http_stats["statuses"] == [0, 200]
            assert http_stats["first_failure_status"] == 0
            assert http_stats["total_sleep_ms"] == pytest.approx(
                expected_sleep(11, 1) * 1000, abs=1e-3)
            metrics = (await http.get(f"{running.http_url}/metrics")).text
        # The provider's own retries count as upstream retries: 2 over gRPC, 1 over HTTP.
        assert 'scillm_retries_total{model="cx"} 3.0' in metrics
    finally:
        await asyncio.to_thread(running.stop)
