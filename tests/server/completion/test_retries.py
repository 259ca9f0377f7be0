"""Retries go to a deployment the request has not tried yet, without a backoff sleep while one
is free, and back off (honouring Retry-After) only when a tried one must be called again:
on the engine with an injected clock and RNG, and through the OpenAI door of a real mesh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
from completion_upstream import EngineFactory, FakeTime, Upstream, status
from meshutil import mesh_settings, start_mesh

from scillm.server.completion import RetryHooks, UpstreamError

MSG = [{"role": "user", "content": "hi there"}]


def cool(up: Upstream, **router: Any) -> dict[str, Any]:
    """Model `cool`: deployment cool#0 answers 500, cool#1 answers well."""
    return {"model_list": [
        {"model_name": "cool", "litellm_params": {"model": f"openai/{name}",
                                                  "api_base": f"{up.url}/v1", "api_key": "x"}}
        for name in ("bad", "good")],
        "router_settings": {"num_retries": 1, "allowed_fails": 1, **router}}


async def test_a_retry_goes_to_the_untried_deployment_at_once(
        upstream: Upstream, make_engine: EngineFactory, fake_time: FakeTime) -> None:
    """With one deployment failing and never cooled down (cooldown 0), every call is
    answered by the healthy one, the retry without a sleep."""
    upstream.plan("bad", status(500))
    retries: list[tuple[str, int, float]] = []
    engine = await make_engine(cool(upstream, cooldown_time=0),
                               hooks=RetryHooks(on_retry=lambda d, n, s, e: retries.append(
                                   (d, n, s))))
    attempts = []
    for _ in range(100):
        done = await engine.complete({"model": "cool", "messages": MSG})
        assert done.response["choices"][0]["message"]["content"] == "hi there"
        assert done.routing.deployment == "cool#1"
        attempts.append(done.routing.attempts)
    assert fake_time.sleeps == []
    assert attempts.count(2) == upstream.calls("bad") > 0  # the seeded RNG picks bad first
    assert retries == [("cool#0", 1, 0.0)] * upstream.calls("bad")


async def test_a_stream_retry_goes_to_the_untried_deployment(
        upstream: Upstream, make_engine: EngineFactory, fake_time: FakeTime) -> None:
    upstream.plan("bad", status(500))
    engine = await make_engine(cool(upstream, cooldown_time=0))
    for _ in range(40):
        events = [e async for e in engine.stream({"model": "cool", "messages": MSG})]
        assert events[-1].routing.deployment == "cool#1"  # type: ignore[union-attr]
    assert upstream.calls("bad") > 0 and fake_time.sleeps == []


async def test_backoff_only_when_a_tried_deployment_must_be_called_again(
        upstream: Upstream, make_engine: EngineFactory, fake_time: FakeTime) -> None:
    """Both deployments fail: the second attempt goes to the other one at once, the third
    (to one already tried) after a backoff that honours its Retry-After."""
    upstream.plan("bad", status(429, {"retry-after": "4"}))
    upstream.plan("good", status(429, {"retry-after": "4"}))
    engine = await make_engine(cool(upstream, cooldown_time=0, num_retries=2,
                                    allowed_fails=100))
    try:
        await engine.complete({"model": "cool", "messages": MSG})
    except UpstreamError as exc:
        assert exc.status == 429
    else:
        raise AssertionError("every deployment answered 429")
    assert upstream.calls("bad") + upstream.calls("good") == 3
    assert {upstream.calls("bad"), upstream.calls("good")} == {1, 2}
    assert fake_time.sleeps == [4.0]


async def test_every_call_through_the_door_is_answered(tmp_path: Path,
                                                       upstream: Upstream) -> None:
    """The issue's set-up (`num_retries: 1`, `allowed_fails: 1`) with the failing deployment
    never benched, through the OpenAI door: 120 calls, each answered by the healthy
    deployment, none after a sleep; the routing record and the retry metric say so."""
    upstream.plan("bad", status(500))
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps(cool(upstream, cooldown_time=0)))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, services=("completion",)))
    try:
        sdk = openai.AsyncOpenAI(base_url=f"{running.http_url}/v1", api_key="x",
                                 max_retries=0, timeout=30)
        attempts = []
        for i in range(120):
            raw = await sdk.chat.completions.with_raw_response.create(
                model="cool", messages=[{"role": "user", "content": f"call {i}"}])
            body = raw.http_response.json()
            assert body["choices"][0]["message"]["content"] == f"call {i}"
            routing = body["scillm"]["routing"]
            assert routing["deployment"] == "cool#1" and routing["total_sleep_ms"] == 0
            attempts.append(routing["attempts"])
        await sdk.close()
        assert attempts.count(2) == upstream.calls("bad") > 0
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{running.http_url}/metrics")).text
        assert f'scillm_retries_total{{model="cool"}} {float(attempts.count(2))}' in metrics
    finally:
        running.stop()


async def test_a_retry_after_of_no_end_breaks_neither_the_answer_nor_the_error(
        tmp_path: Path, upstream: Upstream) -> None:
    """Upstreams answering 429 with `Retry-After: inf` or `1e13`: a call the healthy
    deployment then answers is a 200, not a 500 from turning the wait into a Duration
    (`inf` is no Retry-After at all); a model with no other deployment answers 429 with
    a Retry-After of a day, the most any wait is taken to be, not a 500."""
    upstream.plan("bad", status(429, {"retry-after": "inf"}))
    upstream.plan("worse", status(429, {"retry-after": "1e13"}))
    config = tmp_path / "models.yaml"
    models = cool(upstream, cooldown_time=0)
    models["model_list"].append({"model_name": "solo", "litellm_params": {
        "model": "openai/worse", "api_base": f"{upstream.url}/v1", "api_key": "x"}})
    config.write_text(json.dumps(models))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, services=("completion",)))
    try:
        sdk = openai.AsyncOpenAI(base_url=f"{running.http_url}/v1", api_key="x",
                                 max_retries=0, timeout=30)
        calls = 0
        while upstream.calls("bad") < 3 and calls < 200:  # the shuffle picks bad first
            raw = await sdk.chat.completions.with_raw_response.create(
                model="cool", messages=[{"role": "user", "content": f"call {calls}"}])
            body = raw.http_response.json()
            assert body["choices"][0]["message"]["content"] == f"call {calls}"
            assert body["scillm"]["routing"]["deployment"] == "cool#1"
            calls += 1
        assert upstream.calls("bad") == 3
        try:
            await sdk.chat.completions.create(model="solo", messages=MSG)
        except openai.RateLimitError as exc:
            assert exc.response.headers["retry-after"] == "86400"
        else:
            raise AssertionError("the only deployment answered 429")
        assert upstream.calls("worse") == 1  # a day's wait is past the call's deadline
        await sdk.close()
    finally:
        running.stop()


async def test_an_upstream_failure_is_not_retried_again_by_the_callers_channel(
        tmp_path: Path, upstream: Upstream) -> None:
    """The engine retries a failing upstream (`num_retries`) and then answers UNAVAILABLE,
    which the mesh's channels retry (up to 5 attempts) for calls that failed on a server
    gone away: each attempt ran the engine's retries again, 5x the upstream calls of one
    request in an outage. The engine's verdict is final: the upstream is asked
    1 + num_retries times, through gRPC and through the door."""
    from scillm.clients import RPCError, ScillmClient

    upstream.plan("down", status(503))
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": "down", "litellm_params": {
        "model": "openai/down", "api_base": f"{upstream.url}/v1", "api_key": "x"}}],
        "router_settings": {"num_retries": 1, "retry_after": 0}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, services=("completion",)))
    try:
        async with ScillmClient(running.grpc_target) as client:
            try:
                await client.completion.create({"model": "down", "messages": MSG})
            except RPCError as exc:
                failed = exc
            else:
                raise AssertionError("the upstream answered 503 every time")
        assert upstream.calls("down") == 2, (upstream.calls("down"), failed)
        async with httpx.AsyncClient(timeout=60) as http:
            reply = await http.post(f"{running.http_url}/v1/chat/completions",
                                    json={"model": "down", "messages": MSG})
        assert reply.status_code >= 500, reply.text
        assert upstream.calls("down") == 4, upstream.calls("down")
    finally:
        running.stop()
