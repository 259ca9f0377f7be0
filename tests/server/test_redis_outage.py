"""Redis going away while the mesh serves: the response cache and the keys' rate windows
go on without it (a miss; windows in the process), say so once, and use it again when it
answers; a CodeWorld run whose session log is in Redis keeps its results and says its run
was not recorded. A real redis-server, killed and started again on the same port."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fakeclock import Clock
from meshutil import ServedProcess, mesh_settings, start_mesh
from redisutil import RedisServer

from scillm.clients import ScillmClient
from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.server.completion._cache import RedisCache, ResponseCache
from scillm.server.completion._settings import CacheSettings
from scillm.server.keys import RedisWindows
from scillm.server.redis_outage import Outage

MASTER = "sk-master-redis-outage"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_an_outage_is_skipped_for_its_cool_down_then_tried_by_one_caller(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = Outage("the thing", cool_s=5.0, clock=clock)
    assert outage.should_try() and not outage.down
    with caplog.at_level(logging.INFO, logger="scillm.server"):
        outage.failed(ConnectionError("refused"))
        outage.failed(ConnectionError("refused again"))
        assert outage.down and not outage.should_try()
        clock.now += 4.9
        assert not outage.should_try()
        clock.now += 0.2
        assert outage.should_try()  # this caller tries ...
        assert not outage.should_try()  # ... while the others go on skipping
        outage.failed(ConnectionError("still refused"))
        clock.now += 5.1
        assert outage.should_try()
        outage.answered()
        outage.answered()
        assert not outage.down and outage.should_try() and outage.should_try()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", "the thing: Redis is unreachable (ConnectionError: refused); going on "
                    "without it, and trying it again every 5 s"),
        ("INFO", "the thing: Redis answers again")]


async def test_the_cache_misses_while_redis_is_down_and_hits_again_after(
        redis_server: RedisServer) -> None:
    clock = Clock()
    settings = CacheSettings(enabled=True, backend="redis", redis_host="127.0.0.1",
                             redis_port=redis_server.port)
    cache = ResponseCache(settings, RedisCache(settings), outage=Outage("cache", clock=clock))
    value = {"object": "chat.completion", "choices": []}
    await cache.set("k", value, 60)
    assert await cache.get("k") == value
    redis_server.kill()
    assert await cache.get("k") is None  # a miss, not ConnectionError
    await cache.set("k2", value, 60)  # not stored, not raised
    assert cache.outage.down
    assert (cache.hits, cache.misses, cache.stores) == (1, 1, 1)
    redis_server.start()
    # Within the cool-down Redis is not asked, though it is back.
    await cache.set("k3", value, 60)
    assert await cache.get("k3") is None and cache.stores == 1
    clock.now += 6
    await cache.set("k3", value, 60)
    assert await cache.get("k3") == value and not cache.outage.down
    await cache.close()


async def test_rate_windows_count_in_the_process_while_redis_is_down(
        redis_server: RedisServer) -> None:
    clock = Clock()
    windows = RedisWindows(redis_server.url, outage=Outage("windows", clock=clock))
    assert await windows.take("key", "requests", 2) is None
    assert await windows.take("key", "requests", 2) is None
    assert await windows.take("key", "requests", 2) is not None  # Redis holds the limit
    redis_server.kill()
    # In the process: a fresh window, and the limit still holds there.
    assert await windows.take("key", "requests", 2) is None
    await windows.add("key", "tokens", 7)
    assert (await windows.total("key", "tokens"))[0] == 7
    assert await windows.take("key", "requests", 2) is None
    assert await windows.take("key", "requests", 2) is not None
    assert windows.outage.down
    redis_server.start()  # empty: nothing was persisted
    clock.now += 6
    assert await windows.take("key", "requests", 2) is None
    assert (await windows.total("key", "tokens"))[0] == 0  # Redis's count again
    assert not windows.outage.down
    await windows.close()


async def test_the_keys_windows_use_the_configs_redis_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`router_settings.redis_password` was left out of the windows' Redis URL: a Redis
    with a password refused them, and each process counted a key's limits alone."""
    from scillm.server.services import build_authenticator
    from scillm.server.settings import Settings

    server = RedisServer(password="pw secret/@").start()
    try:
        monkeypatch.setenv("SCILLM_TEST_REDIS_PW", "pw secret/@")
        config = tmp_path / "models.yaml"
        config.write_text(
            "model_list: [{model_name: a, litellm_params: {model: echo/a}}]\n"
            f"router_settings: {{redis_host: 127.0.0.1, redis_port: {server.port}, "
            "redis_password: os.environ/SCILLM_TEST_REDIS_PW}\n")
        auth = build_authenticator(Settings(config_path=config,
                                            store_path=tmp_path / "runs.sqlite3"), {})
        windows = auth.windows
        assert isinstance(windows, RedisWindows)
        assert await windows.take("key", "requests", 1) is None
        assert await windows.take("key", "requests", 1) is not None
        assert not windows.outage.down  # counted in Redis, not in the process
        await windows.close()
    finally:
        server.stop()


def test_the_served_mesh_answers_through_a_redis_outage(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """`scillm serve` with the response cache and the key windows in Redis: Redis killed,
    a virtual key's calls (unary and streamed) through the openai SDK still get answers,
    and the log says once per use of Redis that it went on without it."""
    config = tmp_path / "models.yaml"
    config.write_text(
        "model_list:\n  - model_name: e\n    litellm_params: {model: echo/x}\n"
        "litellm_settings:\n  cache: true\n"
        f"  cache_params: {{type: redis, host: 127.0.0.1, port: {redis_server.port}}}\n")
    served = ServedProcess("redis-outage", [
        "--grpc-port", "0", "--http-port", "0", "--service", "completion"], {
        **os.environ, "SCILLM_CONFIG_PATH": str(config), "SCILLM_MASTER_KEY": MASTER,
        "SCILLM_REDIS_URL": f"{redis_server.url}/0",
        "SCILLM_STORE_PATH": str(tmp_path / "runs.sqlite3"), "OTEL_SDK_DISABLED": "true"},
        tmp_path / "mesh.log").wait_ready()
    try:
        made = httpx.post(f"{served.http_url}/key/generate", json={"models": ["e"],
                          "rpm_limit": 100}, headers={"authorization": f"Bearer {MASTER}"},
                          timeout=30)
        assert made.status_code == 200, made.text
        sdk = openai.OpenAI(base_url=f"{served.http_url}/v1", api_key=made.json()["key"],
                            max_retries=0, timeout=60)

        def ask(text: str) -> str:
            reply = sdk.chat.completions.create(
                model="e", messages=[{"role": "user", "content": text}])
            return str(reply.choices[0].message.content)

        assert ask("before") == "before"
        redis_server.kill()
        assert [ask("during"), ask("before"), ask("during")] == ["during", "before", "during"]
        chunks = sdk.chat.completions.create(
            model="e", messages=[{"role": "user", "content": "a streamed one"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "a streamed one")
    finally:
        served.stop()
    log = served.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    for what in ("the response cache (redis)", "the keys' rate windows"):
        assert log.count(f"{what}: Redis is unreachable") == 1, log[-3000:]


async def test_a_codeworld_run_keeps_its_results_when_its_session_log_fails(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Sessions in Redis (`SCILLM_REDIS_URL`): recorded while Redis answers; with Redis
    gone the run still ends with its rankings, and its session says why it is not in it."""
    mesh = start_mesh(mesh_settings(tmp_path, redis_url=f"{redis_server.url}/3",
                                    services=("codeworld",)))
    req = cw.CodeWorldRunRequest()
    req.context.session_id, req.context.track = "s-outage", "t"
    req.items.add(task_id="add", tests="def check(candidate):\n    assert candidate(2, 3) == 5\n",
                  entry_point="f")
    req.strategies.add(name="plus", source="def f(x, y):\n    return x + y\n")
    try:
        async with ScillmClient(mesh.grpc_target) as client:
            before = [e async for e in client.codeworld.run(req)][-1].summary.session
            redis_server.kill()
            events = [e async for e in client.codeworld.run(req)]
    finally:
        mesh.stop()
    assert (before.runs, before.error) == (1, "")
    summary = events[-1].summary
    assert [r.run.strategy for r in events if r.HasField("run")] == ["plus"]
    assert summary.rankings[0].entries[0].strategy == "plus" and summary.succeeded == 1
    session = summary.session
    assert (session.session_id, session.track, session.runs, session.plateau) == (
        "s-outage", "t", 0, False)
    assert "redis session store" in session.error and session.mean_aggregate > 0


async def test_a_stalled_redis_is_given_one_try_not_two(redis_server: RedisServer) -> None:
    """A Redis that stops answering without closing its connections (stopped, here): the
    window's script that timed out was sent again on a new connection, holding the caller
    for a second timeout, and Redis ran what it had been sent when it resumed. Now a
    timeout is not retried: the call counts in the process at once, and Redis, resumed,
    has had one connection from the windows and counts the call once."""
    import redis.asyncio as redis

    assert redis_server.proc is not None
    windows = RedisWindows(redis_server.url)
    inspector = redis.Redis.from_url(redis_server.url)
    assert await windows.take("key", "requests", 5) is None
    connections = (await inspector.info("stats"))["total_connections_received"]
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        assert await windows.take("key", "requests", 5) is None  # counted in the process
        assert windows.outage.down
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    stats = await inspector.info("stats")
    assert stats["total_connections_received"] == connections  # no second try

    async def counted() -> int:
        return sum(int(n) for n in (await inspector.hgetall(
            "scillm:rate-s:requests:key")).values())

    for _ in range(40):  # the one before, then the stalled one Redis runs as it resumes
        if await counted() >= 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert await counted() == 2
    await inspector.aclose()
    await windows.close()
