"""The read-only root every bubblewrap sandbox starts from: an allow-list of the host.

Both the prover jail (`scillm.server.jail`) and CodeWorld's sandbox build their file system
from an empty root, then bind what a program needs::

    root = MinimalRoot(tmp_size=64 << 20)   # /usr and its merged links, /dev, /proc, /tmp
    root.bind("/etc")                 # a host path, read-only, at its own path
    root.bind("/srv/inbox", "/scillm/in")
    argv = ["bwrap", *root.args, ...]

Never the host's ``/`` with holes punched into it: a deny-list misses wherever the next
host keeps its files (a checkout under ``/opt``, a home outside ``/home``), and what a
program in the sandbox can read is then the host's business, not ours.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The top-level names a merged-/usr system links into /usr (bound when they are real).
SYSTEM_TOPS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class MinimalRoot:
    """The bubblewrap arguments of a read-only root holding ``/usr`` and what is bound,
    a fresh ``/dev`` and ``/proc``, and a private tmpfs ``/tmp`` of ``tmp_size`` bytes
    (mode ``tmp_mode``, e.g. ``"1777"``, else bubblewrap's 0755)."""

    def __init__(self, *, tmp_size: int, tmp_mode: str | None = None) -> None:
        self.args: list[str] = ["--ro-bind", "/usr", "/usr"]
        for name in SYSTEM_TOPS:
            top = Path("/") / name
            if top.is_symlink():
                self.args += ["--symlink", os.readlink(top), str(top)]
            elif top.is_dir():
                self.args += ["--ro-bind", str(top), str(top)]
        self.args += ["--dev", "/dev", "--proc", "/proc"]
        if tmp_mode is not None:
            self.args += ["--perms", tmp_mode]
        self.args += ["--size", str(tmp_size), "--tmpfs", "/tmp"]
        self._bound: list[Path] = [Path("/usr")]
        self._made: set[Path] = {Path("/"), Path("/tmp"), Path("/usr")}

    def covers(self, path: str) -> bool:
        """Whether ``path`` (a real path) is already visible through an earlier bind."""
        return any(Path(path).is_relative_to(b) for b in self._bound)

    def bind(self, source: str, dest: str | None = None) -> None:
        """Bind host ``source`` read-only at ``dest``: by default a file at its own path,
        a directory at its real path.

        Absent sources are skipped; a source already visible at its own path is not bound
        twice. The directories leading to ``dest`` are made 0755, since bubblewrap would
        make them 0700, which a program's unprivileged uid could not traverse.
        """
        if not os.path.exists(source):
            return
        real = os.path.realpath(source)
        target = dest or (os.path.abspath(source) if os.path.isfile(real) else real)
        if dest is None and self.covers(target):
            return
        for parent in reversed(Path(target).parents):
            if parent not in self._made and not self.covers(str(parent)):
                self._made.add(parent)
                self.args += ["--perms", "0755", "--dir", str(parent)]
        self.args += ["--ro-bind", real, target]
        if os.path.isdir(real):
            self._bound.append(Path(target))
