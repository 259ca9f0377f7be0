"""Who holds an advisory lock, as the kernel says (/proc/locks): tests of uid claims ask it
rather than claiming again, so that another process on the host claiming meanwhile (a
server, a second suite) cannot change the answer."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["locked_by_me"]


def locked_by_me(path: str) -> bool:
    """Whether this process holds a flock on `path`."""
    inode = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:
            continue  # a waiter, not a holder
        if fields[1] == "FLOCK" and fields[4] == str(os.getpid()) \
                and fields[5].rsplit(":", 1)[-1] == str(inode):
            return True
    return False
