"""Fixtures: the loopback upstream, a real `redis-server`, and an engine factory with an
injected clock, RNG and sleep."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from completion_upstream import EngineFactory, FakeTime, Upstream

from scillm.server.completion import CompletionEngine, CompletionSettings, RetryHooks


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    yield up
    await up.stop()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()




@pytest.fixture
async def make_engine(fake_time: FakeTime) -> AsyncIterator[EngineFactory]:
    """Build and start an engine from a config mapping (cache off unless configured)."""
    engines: list[CompletionEngine] = []

    async def make(config: dict[str, Any], *, real_time: bool = False,
                   hooks: RetryHooks | None = None) -> CompletionEngine:
        config = {"litellm_settings": {"cache": False}, **config}
        kwargs: dict[str, Any] = {"rng": random.Random(0)}
        if not real_time:
            kwargs.update(clock=fake_time.clock, sleep=fake_time.sleep)
        if hooks is not None:
            kwargs["hooks"] = hooks
        engine = CompletionEngine(CompletionSettings.from_mapping(config, environ={}), **kwargs)
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """A real redis-server on a free loopback port; skips when the binary is missing."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.skip("redis-server did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)
