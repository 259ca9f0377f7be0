"""Private uids: each sandbox, and each prover jail, on a host claims a range of its own.

RLIMIT_NPROC counts the processes of a uid host-wide, and the sandbox's sweep after every
run kills every process of the run's uid. Two sandboxes or jails on one host (replicas, a
test suite beside a server) that used the same uids would take each other's process
budget and kill each other's runs. So each claims ``count`` uids starting at the first free
multiple of ``stride`` from ``first``, with an advisory lock per range under ``/run`` (or
``/var/lock``); the lock goes when the process does, however it ends. Sandboxes claim from
61000 and prover jails from 90000, each on its own grid of ``stride``, so a sandbox's sweep
of its uids never reaches a prover.
"""

from __future__ import annotations

import fcntl
import os

__all__ = ["UidRange"]

_STRIDE = 256
_RANGES = 64


class UidRange:
    """A claimed range of uids (``first`` .. ``first + count - 1``); ``release`` frees it."""

    def __init__(self, first: int, fd: int | None, path: str | None = None) -> None:
        self.first = first
        self._fd = fd
        #: The lock file that marks the range as taken (None: not locked).
        self.path = path

    @classmethod
    def claim(cls, first: int, count: int) -> UidRange:
        """The first free range at or after ``first``; ``first`` itself (unlocked) when
        no lock directory is writable or every range is taken."""
        directory = next((d for d in ("/run/lock", "/var/lock", "/run", "/tmp")
                          if os.path.isdir(d) and os.access(d, os.W_OK)), None)
        if directory is None:
            return cls(first, None)
        stride = max(_STRIDE, count)
        for n in range(_RANGES):
            base = first + n * stride
            path = os.path.join(directory, f"scillm-sandbox-uids-{base}.lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            return cls(base, fd, path)
        return cls(first, None)

    def release(self) -> None:
        """Free the range. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
