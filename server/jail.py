"""The jail: how a trusted program runs over untrusted text (provers today).

z3, coqtop, coqc and lean read text that a model or a stranger wrote, and that text can ask
them to write files (Coq's ``Redirect`` and ``Extraction``, SMT-LIB's output channels),
read files (Coq's ``Load``), or run code (Lean's ``#eval``). So they run in a jail::

    jail = await Jail.probe(JailSettings())          # "bubblewrap", else "rlimits"
    argv = jail.command(["coqtop", "-emacs", "-q"], memory_mb=2048, inbox=Path(...))

Inside bubblewrap a program sees, and may do, only this:

* a minimal read-only root: ``/usr`` with the merged-/usr links (``/bin``, ``/lib``,
  ``/lib64``, ``/sbin``), the few ``/etc`` files programs need (``etc_files``: the loader
  cache, findlib's configuration), and ``ro_binds`` (a toolchain prefix); nothing else of
  the host: no ``/etc/passwd``, ``/home``, ``/root``, ``/work``, ``/var``, host ``/tmp``;
* ``inbox``: one host directory bound read-only at ``/scillm/in``, through which the host
  hands over the text to check (the jail cannot change it, so the host never writes
  where the jail can);
* a private tmpfs ``/tmp`` of ``tmp_size`` bytes, its working directory: the only
  writable place, gone when the program ends;
* its own network (none), pid, ipc, uts and cgroup namespaces; a new session; it dies
  with its parent; a cleared environment; every capability dropped and, when the host is
  root, an unprivileged uid and gid of its own (claimed from `scillm.server.uids`, never
  shared with another jail or sandbox on the host), so root-only files stay unreadable;
* rlimits set before its first instruction (``prlimit``): address space, file size, open
  files, processes of its uid, no core dumps.

Killing the process group of the returned command kills bubblewrap, whose pid namespace
takes every process of the jail with it.

Without a working bubblewrap (or with ``isolation="rlimits"``) the program runs as a
plain child under the same rlimits and ``setpriv --pdeathsig``; ``Jail.isolation`` says
which level is in force, so health and ``ListBackends`` can report weaker isolation.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .minroot import MinimalRoot
from .uids import UidRange

__all__ = ["BUBBLEWRAP", "INBOX", "RLIMITS", "Jail", "JailSettings", "jailed_which",
           "mib"]

BUBBLEWRAP = "bubblewrap"
RLIMITS = "rlimits"
#: Where the inbox appears inside the jail.
INBOX = "/scillm/in"
_PATH = "/usr/local/bin:/usr/bin:/bin"


JailMode = Literal["auto", "bubblewrap", "rlimits"]


def mib(megabytes: int) -> int:
    """Bytes in `megabytes` MiB."""
    return megabytes * 1024 * 1024


def jailed_which(command: str) -> str | None:
    """The program a jail runs for `command`: a name without a directory is looked up on
    the jail's PATH (`_PATH`, in bubblewrap and in the fallback alike), not on the
    server's, which may hold another build first (a venv's z3, from the z3-solver wheel)."""
    return shutil.which(command, path=_PATH)


@dataclass(frozen=True)
class JailSettings:
    """How provers are jailed.

    Attributes:
        isolation: ``"auto"`` uses bubblewrap when it works, else rlimits only;
            ``"bubblewrap"`` refuses to run without it; ``"rlimits"`` forces the fallback.
        bwrap_path: the bubblewrap executable; looked up on PATH when None.
        etc_files: host files under /etc bound read-only (skipped when absent).
        ro_binds: host directories bound read-only at their own path (a toolchain).
        base_uid: where the jail claims the unprivileged uid/gid its programs run as when the
            host is root (`scillm.server.uids`: a range of its own, never shared with another
            jail or sandbox on the host).
        tmp_size: bytes of the private /tmp.
        file_size_mb: largest file a program may write (RLIMIT_FSIZE), MiB.
        open_files: open descriptors (RLIMIT_NOFILE).
        processes: processes and threads of the jail's uid (RLIMIT_NPROC); only with the
            uid drop.
    """

    isolation: JailMode = "auto"
    bwrap_path: str | None = None
    etc_files: tuple[str, ...] = ("/etc/ld.so.cache", "/etc/ocamlfind.conf",
                                  "/etc/findlib.conf", "/etc/localtime")
    ro_binds: tuple[str, ...] = ()
    #: Jails claim on a grid of their own, far from the sandboxes' (61000 and up, at most
    #: 64 ranges of 256), so a sandbox's sweep of its uids can never touch a prover.
    base_uid: int = 90000
    tmp_size: int = 64 << 20
    file_size_mb: int = 64
    open_files: int = 256
    processes: int = 128


class JailUnavailable(RuntimeError):
    """``isolation="bubblewrap"`` was asked for and bubblewrap does not work here."""


@dataclass(frozen=True)
class Jail:
    """A probed jail: build command lines with `command`."""

    settings: JailSettings
    #: ``"bubblewrap"`` or ``"rlimits"``.
    isolation: str
    bwrap: str | None
    #: The unprivileged uid/gid programs run as (the host is root), else None.
    uid: int | None
    _claim: UidRange | None = field(default=None, compare=False, repr=False)

    @property
    def drop_uid(self) -> bool:
        """Whether programs drop to `uid` (the host is root)."""
        return self.uid is not None

    @classmethod
    async def probe(cls, settings: JailSettings | None = None) -> Jail:
        """The strongest jail the settings allow on this host; `release` when done."""
        settings = settings or JailSettings()
        bwrap = settings.bwrap_path or shutil.which("bwrap")
        claim = UidRange.claim(settings.base_uid, 1) if os.geteuid() == 0 else None
        uid = claim.first if claim is not None else None
        if settings.isolation != "rlimits" and bwrap is not None:
            jail = cls(settings, BUBBLEWRAP, bwrap, uid, claim)
            if await _works(jail.command(["true"], memory_mb=256)):
                return jail
        if claim is not None:
            claim.release()
        if settings.isolation == "bubblewrap":
            raise JailUnavailable(f"bubblewrap was asked for but does not work (bwrap={bwrap!r})")
        # Without bubblewrap programs see the host's file system, where the scratch
        # directory's parents may not be traversable by another uid: no drop.
        return cls(settings, RLIMITS, None, None)

    def release(self) -> None:
        """Give the jail's uid back to the host. Idempotent."""
        if self._claim is not None:
            self._claim.release()

    def command(self, argv: Sequence[str], *, memory_mb: int, inbox: Path | None = None,
                ro_binds: Sequence[str] = ()) -> list[str]:
        """`argv` inside the jail, limited to `memory_mb` MiB of address space.

        `inbox` (bubblewrap only) is bound read-only at `INBOX`; `ro_binds` adds host
        directories for this command. Without bubblewrap the program sees the host and
        should be given host paths instead (see `inbox_path`).
        """
        limits = _rlimits(self.settings, memory_mb, strict=self.drop_uid)
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        drop: list[str] = []
        if self.uid is not None:
            uid = str(self.uid)
            drop = ["--reuid", uid, "--regid", uid, "--clear-groups", "--no-new-privs"]
        if self.isolation != BUBBLEWRAP:
            return [setpriv, "--pdeathsig", "KILL", *drop, "--", *limits, *argv]
        assert self.bwrap is not None
        inner = [setpriv, *drop, "--", *limits, *argv] if drop else [*limits, *argv]
        return [self.bwrap, *self._bwrap_args(inbox, ro_binds), "--", *inner]

    def inbox_path(self, inbox: Path) -> str:
        """Where a program in this jail finds the host directory `inbox`."""
        return INBOX if self.isolation == BUBBLEWRAP else str(inbox)

    @property
    def refuses_file_access(self) -> str:
        """Why a program that can read or write files or run code (Coq, Lean) may not run
        here, or "" when it may: in bubblewrap, or under rlimits alone only when the operator
        asked for that (`isolation="rlimits"`), never as a silent fallback."""
        if self.isolation == BUBBLEWRAP or self.settings.isolation == "rlimits":
            return ""
        return ("bubblewrap does not work here, and this prover can read and write files "
                "(Coq's Load, Redirect, Extraction) or run code (Lean): set "
                "SCILLM_PROVE_ISOLATION=rlimits to run it under resource limits only")

    @property
    def env(self) -> dict[str, str]:
        """The environment for the fallback (bubblewrap clears and sets its own)."""
        return {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": "/nonexistent"}

    def _bwrap_args(self, inbox: Path | None, extra: Sequence[str]) -> list[str]:
        root = MinimalRoot(tmp_size=self.settings.tmp_size, tmp_mode="1777")
        for file in self.settings.etc_files:
            if os.path.isfile(file):
                root.bind(file)
        for path in dict.fromkeys([*self.settings.ro_binds, *extra]):
            if os.path.isdir(path):
                root.bind(path)
        if inbox is not None:
            root.bind(str(inbox), INBOX)
        args = root.args
        args += [
            "--chdir", "/tmp",
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "jail",
            "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", _PATH, "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", "/tmp",
            "--cap-drop", "ALL",
        ]
        if self.drop_uid:
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        return args


def _rlimits(settings: JailSettings, memory_mb: int, *, strict: bool) -> list[str]:
    """The prlimit prefix. `strict` (the program drops to an unprivileged uid, the host is
    root): hard limits equal the soft ones, and RLIMIT_NPROC counts the jail's uid. Else
    the address space's hard limit stays unlimited, so that a host without privileges can
    still raise the soft limit for the next item (`ProverProcess.set_memory_limit`)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return []
    memory = mib(memory_mb)
    limits = [f"--as={memory}:{memory if strict else 'unlimited'}",
              f"--fsize={mib(settings.file_size_mb)}", f"--nofile={settings.open_files}",
              "--core=0"]
    if strict:
        limits.append(f"--nproc={settings.processes}")
    return [prlimit, *limits, "--"]


async def _works(argv: list[str]) -> bool:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(proc.wait(), 10) == 0
    except (OSError, TimeoutError):
        return False
