"""Fixtures: the loopback upstream, a real `redis-server`, and an engine factory with an
injected clock, RNG and sleep."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
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


