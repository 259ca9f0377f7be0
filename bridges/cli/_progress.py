"""A small progress bar on stderr for long CLI work (no dependency, no output when piped)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """`[#####-----] 5/10 label` redrawn in place on a terminal; silent elsewhere."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None,
                 width: int = 30) -> None:
        self.total = max(total, 0)
        self.done = 0
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = self.stream.isatty()
        self._started = time.monotonic()

    def advance(self, note: str = "") -> None:
        """One more unit done."""
        self.done += 1
        if not self.enabled:
            return
        total = self.total or self.done
        filled = int(self.width * min(self.done / total, 1.0))
        elapsed = time.monotonic() - self._started
        self.stream.write(f"\r[{'#' * filled}{'-' * (self.width - filled)}] "
                          f"{self.done}/{total} {self.label} {elapsed:5.1f}s {note[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
