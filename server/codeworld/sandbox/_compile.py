"""The compile cache: one build per distinct (toolchain, source), shared by every run.

Artifacts live on the host under ``<directory>/<sha256>/`` and are read-only inside the
sandbox: the directory is ``0711`` (traversable, not listable), so a run can open an
artifact only when it knows its key, i.e. the source it was built from. Builds of the
same key at once wait for the first (single flight). A compile error (the compiler ran
and said no) is remembered in memory, so a strategy that does not compile is compiled once,
not once per item; a build that failed for another reason (a worker out of space, killed)
is not, so the next run builds it again. The least recently used artifacts are removed past
``max_entries`` artifacts or ``max_bytes`` bytes (one artifact may hold up to 128 MiB:
counted by entries alone, 512 of them were 64 GiB of the host's disk).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from ._execution import Execution

__all__ = ["BUILD_FORMAT", "Built", "CompileCache", "Compiled"]

#: Changes whenever the way sources are built changes, so old artifacts are not reused.
BUILD_FORMAT = "1"


@dataclass(frozen=True, slots=True)
class Built:
    """What one compile produced: the artifact's files (relative path → mode, bytes)
    when it succeeded, else the failed execution; ``refused`` when the compiler itself
    said no (its exit status), the one failure worth remembering."""

    files: Mapping[str, tuple[int, bytes]] | None
    failure: Execution | None
    wall: float
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Compiled:
    """An artifact ready to run (``path``) or why there is none (``failure``).

    ``built`` says whether this call compiled it, ``wall`` how long that took.
    """

    path: str | None
    failure: Execution | None
    built: bool
    wall: float


def decode_files(encoded: Mapping[str, object]) -> dict[str, tuple[int, bytes]]:
    """The worker's ``{path: [mode, base64]}`` as ``{path: (mode, bytes)}``."""
    files: dict[str, tuple[int, bytes]] = {}
    for rel, value in encoded.items():
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"bad artifact entry {rel!r}")
        if os.path.isabs(rel) or ".." in rel.split("/"):
            raise ValueError(f"artifact path {rel!r} escapes its directory")
        files[rel] = (int(value[0]), base64.b64decode(str(value[1])))
    return files


class CompileCache:
    """Content-addressed artifacts in ``directory`` (a private temporary one when None)."""

    def __init__(self, directory: str | None = None, *, max_entries: int = 512,
                 max_bytes: int = 2 << 30, max_failures: int = 1024) -> None:
        self._wanted = directory
        self._directory: str | None = None
        self._owned = False
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._max_failures = max_failures
        #: Artifacts by key, least recently used first, with their size in bytes.
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._failures: OrderedDict[str, Execution] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._serial = itertools.count()
        self.builds = 0
        self.hits = 0

    @property
    def directory(self) -> str:
        """Where artifacts live (after ``open``)."""
        assert self._directory is not None, "the compile cache is not open"
        return self._directory

    def open(self) -> None:
        """Create the directory (under /var/tmp unless one was given)."""
        if self._directory is not None:
            return
        if self._wanted is None:
            # Not under /tmp: the sandbox mounts a private /tmp over the host's.
            base = "/var/tmp" if os.path.isdir("/var/tmp") else None
            self._directory = tempfile.mkdtemp(prefix="scillm-compile-", dir=base)
            self._owned = True
        else:
            os.makedirs(self._wanted, exist_ok=True)
            self._directory = os.path.realpath(self._wanted)
        os.chmod(self._directory, 0o711)

    def close(self) -> None:
        """Remove the directory if this cache made it."""
        if self._directory is not None and self._owned:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None

    @staticmethod
    def key(identity: str, language: str, source: str) -> str:
        """The artifact's name: a hash of the toolchain, the build format and the source."""
        digest = hashlib.sha256()
        for part in (BUILD_FORMAT, language, identity, source):
            digest.update(part.encode())
            digest.update(b"\0")
        return digest.hexdigest()

    async def artifact(self, key: str, build: Callable[[], Awaitable[Built]]) -> Compiled:
        """The artifact of ``key``, built by ``build`` unless it is cached (or failed)."""
        found = self._lookup(key)
        if found is not None:
            return found
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                found = self._lookup(key)
                if found is not None:
                    return found
                built = await build()
                self.builds += 1
                if built.files is None:
                    assert built.failure is not None
                    if built.refused:
                        self._failures[key] = built.failure
                        while len(self._failures) > self._max_failures:
                            self._failures.popitem(last=False)
                    return Compiled(None, built.failure, True, built.wall)
                path = await asyncio.to_thread(self._write, key, built.files)
                size = sum(len(data) for _, data in built.files.values())
                self._bytes += size - self._entries.pop(key, 0)
                self._entries[key] = size
                evicted = []
                while len(self._entries) > 1 and (len(self._entries) > self._max_entries or
                                                  self._bytes > self._max_bytes):
                    old, freed = self._entries.popitem(last=False)
                    self._bytes -= freed
                    evicted.append(old)
                if evicted:
                    await asyncio.to_thread(self._remove, evicted)
                return Compiled(path, None, True, built.wall)
        finally:
            if not lock.locked():
                self._locks.pop(key, None)

    def _lookup(self, key: str) -> Compiled | None:
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return Compiled(os.path.join(self.directory, key), None, False, 0.0)
        failure = self._failures.get(key)
        if failure is not None:
            self.hits += 1
            return Compiled(None, failure, False, 0.0)
        return None

    def _remove(self, keys: list[str]) -> None:
        for key in keys:
            shutil.rmtree(os.path.join(self.directory, key), ignore_errors=True)

    def _write(self, key: str, files: Mapping[str, tuple[int, bytes]]) -> str:
        final = os.path.join(self.directory, key)
        staging = os.path.join(self.directory, f".staging-{os.getpid()}-{next(self._serial)}")
        os.mkdir(staging, 0o755)
        for rel, (mode, data) in files.items():
            target = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
            os.chmod(target, 0o755 if mode & 0o111 else 0o644)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)
        return final
