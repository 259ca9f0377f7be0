"""The compile cache (server/codeworld/sandbox/_compile.py) on a real directory: what it
keeps, for how long, and which failures it remembers."""

from __future__ import annotations

from pathlib import Path

from scillm.server.codeworld.sandbox._compile import Built, CompileCache
from scillm.server.codeworld.sandbox._execution import Execution, Status


class Builder:
    """A build that counts its calls and answers with `built`."""

    def __init__(self, built: Built) -> None:
        self.built, self.calls = built, 0

    async def __call__(self) -> Built:
        self.calls += 1
        return self.built


def _artifact(size: int) -> Built:
    return Built({"prog": (0o755, b"x" * size)}, None, 0.1)


async def test_artifacts_are_bounded_by_bytes_as_well_as_by_count(tmp_path: Path) -> None:
    """One artifact may hold 128 MiB: bounded by count alone, 512 of them were 64 GiB."""
    cache = CompileCache(str(tmp_path / "cache"), max_entries=100, max_bytes=3 << 20)
    cache.open()
    try:
        for name in ("a", "b", "c", "d"):
            await cache.artifact(name, Builder(_artifact(1 << 20)))
        kept = sorted(p.name for p in (tmp_path / "cache").iterdir())
        assert kept == ["b", "c", "d"]  # the least recently used went first
        await cache.artifact("b", Builder(_artifact(1 << 20)))  # a hit: b is fresh again
        await cache.artifact("e", Builder(_artifact(2 << 20)))
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["b", "e"]
    finally:
        cache.close()


async def test_only_the_compilers_own_no_is_remembered(tmp_path: Path) -> None:
    """A build that failed because the worker had no space left was remembered as a
    compile error: the source stayed "not compiling" after the space came back."""
    cache = CompileCache(str(tmp_path / "cache"))
    cache.open()
    try:
        worker = Builder(Built(None, Execution(Status.ERROR, reason="compile",
                                               error_message="[Errno 28]"), 0.0))
        for _ in range(2):
            assert (await cache.artifact("k1", worker)).failure is not None
        assert worker.calls == 2
        compiler = Builder(Built(None, Execution(Status.ERROR, reason="compile"), 0.0,
                                 refused=True))
        for _ in range(2):
            assert (await cache.artifact("k2", compiler)).failure is not None
        assert compiler.calls == 1
    finally:
        cache.close()
