"""Shared fixtures: a real sandbox and engine (bubblewrap when present)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from scillm.server.codeworld import CodeWorldEngine, CodeWorldSettings, Limits, SandboxSettings
from scillm.server.codeworld.sandbox import Sandbox

FAST = Limits(wall_time=3.0)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxSettings(workers=2, limits=FAST)) as box:
        yield box


@pytest.fixture
async def engine() -> AsyncIterator[CodeWorldEngine]:
    settings = CodeWorldSettings(sandbox=SandboxSettings(workers=2, limits=FAST))
    async with CodeWorldEngine(settings) as eng:
        yield eng
