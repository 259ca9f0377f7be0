"""Fixtures of the Prove tests: a started engine on the real z3 and coq."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from scillm.server.prove import ProveEngine, ProveSettings


def _child_pids() -> set[int]:
    """Live (non-zombie) direct children of this process, from /proc."""
    me = os.getpid()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[1]) == me:
            found.add(int(entry.name))
    return found


@pytest.fixture
def child_pids() -> Callable[[], set[int]]:
    """Scans /proc for live children of the test process that were not there before
    the test (a mesh shared by the session keeps warm provers of its own)."""
    before = _child_pids()
    return lambda: _child_pids() - before


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[ProveEngine]:
    settings = ProveSettings(smt_pool_size=2, coq_pool_size=2, scratch_dir=tmp_path)
    async with ProveEngine(settings) as started:
        yield started
