"""What a run holds while it runs: its processes' memory, its directory's bytes and files.

Like `_worker_main.py` this runs inside the sandbox (stdlib only; the worker loads it from
the text the host hands over, since the sandbox sees none of the service's files). The
worker makes a `RunMeter` per run and calls `RunMeter.sample` while the run runs, every
`INTERVAL` seconds (or 4x as long as the last sample took, whichever is longer, so
sampling takes at most a fifth of the worker's time), and once more when the run's first
process exits, before anything it left is killed.

Memory: the sum, over every process of the run, of its resident private anonymous pages
(``RssAnon`` of ``/proc/<pid>/status``), plus the resident pages of the run's System V
segments, attached or not. (Not ``RssShmem``: a forked child maps none of the shared pages
it inherits, so once the parent unmapped its view, 800 MiB held by four children were in
no process's resident set. Shared anonymous mappings, which only ``/proc/<pid>/maps``
shows and the worker may not read for another uid, are refused by the seccomp filter, as
memfds are; a shared mapping of a file is the run's disk.) The run's processes are
those of its private uid (when the host is root), else those of its session and their
descendants. Pages of files mapped from the read-only root (binaries, libraries) are
the page cache's, not the run's, and are left out; so is the kernel's own memory (page
tables, pipe and socket buffers). A page shared by forked processes (copy-on-write) is
counted once per process that maps it: there the sum errs high. Proportional set sizes
(``smaps_rollup``) would not, but reading one walks the process's page tables (57 ms for
2 GiB) under its memory map's lock, which a sampler cannot afford. Memory held for less
than an interval can be missed by the peak; a run past ``total_memory`` is stopped at the
first sample that sees it, having overshot by what its processes allocated since the
last (each within RLIMIT_AS regardless).

Disk: the run writes only to its directory, on the worker's private tmpfs (bubblewrap);
the bytes and inodes that file system gained since the run began (``statvfs``, O(1)) are
the run's. tmpfs counts a hard link as an inode, and extended attributes in inodes too,
so ``files`` bounds both. A full tmpfs (``SandboxSettings.tmp_size``, the hard bound)
counts as ``disk`` or ``files`` reached. Without a private tmpfs (the rlimits fallback)
a run can write wherever its uid may, and neither is measured.
"""

from __future__ import annotations

import os
import time
from typing import Any

#: Seconds between samples.
INTERVAL = 0.01
#: The wait after a sample is at least this many times what the sample took.
_SHARE = 4
_KIB = 1024


class RunMeter:
    """Measures one run against its ``total_memory``, ``disk`` and ``files`` limits.

    Make it after the run's inputs are written and before it starts (the file system's
    use then is the baseline), call `begin` with the run's pid, then `sample` when
    ``next_at`` (a ``time.monotonic()`` instant) has come.
    """

    def __init__(self, limits: dict[str, Any], *, uid: int | None, tmp: str | None,
                 skip: frozenset[int] = frozenset()) -> None:
        self.peak = 0
        self.next_at = 0.0
        self._uid = uid
        self._tmp = tmp
        self._skip = skip | {os.getpid()}
        self._pid = 0
        self._seen: dict[str, int] = {}
        self._limits = {name: int(limits[name]) for name in ("total_memory", "disk", "files")
                        if limits.get(name) is not None}
        self._base = self._disk()

    def begin(self, pid: int) -> None:
        """The run's first process has started as ``pid``."""
        self._pid = pid
        self.next_at = time.monotonic() + INTERVAL

    def sample(self) -> str | None:
        """Measure the run now: the name of a limit it is past, or ``None``."""
        began = time.monotonic()
        memory = self._memory()
        self.peak = max(self.peak, memory)
        over = None
        if memory > self._limits.get("total_memory", memory):
            over, self._seen["total_memory"] = "total_memory", memory
        elif self._base is not None and (disk := self._disk()) is not None:
            used, files, full, no_inodes = disk
            grew, made = used - self._base[0], files - self._base[1]
            if full or grew > self._limits.get("disk", grew):
                over, self._seen["disk"] = "disk", grew
            elif no_inodes or made > self._limits.get("files", made):
                over, self._seen["files"] = "files", made
        now = time.monotonic()
        self.next_at = now + max(INTERVAL, _SHARE * (now - began))
        return over

    def outcome(self, limit: str) -> dict[str, Any]:
        """What a run stopped at ``limit`` (a name `sample` returned) reports."""
        bound = self._limits.get(limit)
        seen = self._seen.get(limit, 0)
        did = {"total_memory": f"the run's processes held {_size(seen)} together",
               "disk": f"the run wrote {_size(seen)} to its directory",
               "files": f"the run made {seen} files in its directory"}[limit]
        if bound is not None and seen > bound:
            shown = str(bound) if limit == "files" else _size(bound)
            message = f"{did}, past {limit} ({shown})"
        else:  # the file system ran out first
            message = f"{did} and filled the sandbox's /tmp (tmp_size)"
        return {"status": "killed", "reason": limit,
                "error": {"type": "ResourceLimit", "message": message}}

    def _memory(self) -> int:
        """Resident anonymous and shared-memory bytes of the run's processes and of its
        detached System V segments."""
        by_pid: dict[int, tuple[int, int, int]] = {}  # pid: (parent, session, bytes)
        mine: set[int] = set()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in self._skip:
                continue
            try:
                with open(f"/proc/{name}/status", "rb") as f:
                    status = _fields(f.read())
            except (OSError, ValueError):
                continue  # gone, or unreadable
            pid = int(name)
            held = status.get(b"RssAnon", 0) * _KIB  # private; shared memory apart
            if self._uid is not None:
                if status.get(b"Uid") == self._uid:
                    mine.add(pid)
                    by_pid[pid] = (0, 0, held)
            else:
                by_pid[pid] = (status.get(b"PPid", 0), status.get(b"NSsid", 0), held)
        if self._uid is None:
            mine = {p for p, (_, sid, _) in by_pid.items() if p == self._pid or sid == self._pid}
            grew = True
            while grew:
                more = {p for p, (parent, _, _) in by_pid.items()
                        if parent in mine and p not in mine}
                mine |= more
                grew = bool(more)
        return sum(by_pid[p][2] for p in mine) + self._segments(mine)

    def _segments(self, mine: set[int]) -> int:
        """Resident bytes of the run's System V segments, attached or not (a child that
        inherits an attachment maps none of its pages: its ``RssShmem`` reads 0)."""
        try:
            with open("/proc/sysvipc/shm", "rb") as f:
                rows = f.read().split(b"\n")
        except OSError:
            return 0
        head = rows[0].split()
        try:
            at = {key: head.index(key) for key in (b"nattch", b"cuid", b"cpid", b"rss")}
        except ValueError:
            return 0
        total = 0
        for row in rows[1:]:
            cells = row.split()
            if len(cells) != len(head):
                continue
            try:
                owner = int(cells[at[b"cuid"]]) == self._uid if self._uid is not None \
                    else int(cells[at[b"cpid"]]) in mine
                total += int(cells[at[b"rss"]]) if owner else 0
            except ValueError:
                continue
        return total

    def _disk(self) -> tuple[int, int, bool, bool] | None:
        """Bytes and inodes in use on the run's file system, and whether it is out of
        either; ``None`` when it is not measured."""
        if self._tmp is None:
            return None
        try:
            fs = os.statvfs(self._tmp)
        except OSError:
            return None
        return ((fs.f_blocks - fs.f_bfree) * fs.f_frsize, fs.f_files - fs.f_ffree,
                fs.f_bavail == 0, fs.f_favail == 0)


def _fields(status: bytes) -> dict[bytes, int]:
    """The numbers of ``/proc/<pid>/status`` this meter reads (the first of each line)."""
    found: dict[bytes, int] = {}
    for line in status.split(b"\n"):
        key, _, value = line.partition(b":")
        if key in (b"Uid", b"PPid", b"NSsid", b"RssAnon"):
            first = value.split()
            if first:
                found[key] = int(first[0])
    return found


def _size(count: int) -> str:
    """``count`` bytes for people: 1.5 GiB, 160 MiB, 12 KiB, 7 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.3g} {unit}"
    return f"{count} bytes"
