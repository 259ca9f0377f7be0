"""How a worker process is launched: the bubblewrap command line and the fallback."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ...minroot import MinimalRoot
from ..errors import SandboxUnavailable
from ._settings import SandboxSettings

BUBBLEWRAP = "bubblewrap"
RLIMITS_UNSHARE = "rlimits+unshare"
RLIMITS = "rlimits"
_WORKER_SOURCE = Path(__file__).with_name("_worker_main.py")
#: The run meter the worker loads from its text (the sandbox sees no file of ours).
_USAGE_SOURCE = Path(__file__).with_name("_usage.py")
_SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True, slots=True)
class Launcher:
    """Everything needed to start workers at one isolation level."""

    isolation: str
    python: str
    node: str | None
    bwrap: str | None
    #: Host directories visible read-only besides /usr (`SandboxSettings.visible_paths`).
    visible: tuple[str, ...]
    tmp_size: int
    base_uid: int | None
    #: Extra host directories bound read-only (real paths).
    binds: tuple[str, ...] = ()

    def command(self, slot: int, tmp: str) -> list[str]:
        """The argv of worker ``slot`` whose private temporary directory is ``tmp``."""
        uid = None if self.base_uid is None else self.base_uid + slot
        # Under bubblewrap the worker's /tmp is its own tmpfs: what it gains is the run's.
        cfg = json.dumps({"uid": uid, "node": self.node, "tmp": tmp,
                          "private_tmp": self.isolation == BUBBLEWRAP})
        return self.wrap([self.python, "-I", "-S", "-B", "-c", _WORKER_SOURCE.read_text(), cfg,
                          _USAGE_SOURCE.read_text()])

    def wrap(self, inner: list[str]) -> list[str]:
        """``inner`` prefixed with the isolation wrapper of this level."""
        if self.isolation == BUBBLEWRAP:
            assert self.bwrap is not None
            return [self.bwrap, *self._bwrap_args(), "--", *inner]
        if self.isolation == RLIMITS_UNSHARE:
            return ["unshare", "--net", "--", *inner]
        return inner

    @property
    def env(self) -> dict[str, str]:
        """The environment a worker starts with (nothing of the server's)."""
        return dict(_SAFE_ENV)

    def _bwrap_args(self) -> list[str]:
        root = MinimalRoot(tmp_size=self.tmp_size)
        for keep in (*self.visible, *_prefixes(self.python, self.node), *self.binds):
            root.bind(keep)
        args = root.args
        args += [
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", "sandbox", "--chdir", "/tmp",
            "--die-with-parent", "--new-session", "--clearenv",
        ]
        for key, value in _SAFE_ENV.items():
            args += ["--setenv", key, value]
        args += ["--cap-drop", "ALL"]
        if self.base_uid is not None:
            for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN",
                        "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
                args += ["--cap-add", cap]
        return args


def _prefixes(python: str, node: str | None) -> list[str]:
    found = [sys.base_prefix if Path(python).resolve().is_relative_to(sys.base_prefix)
             else str(Path(python).resolve().parent.parent)]
    if node is not None:
        found.append(str(Path(node).resolve().parent.parent))
    return found


async def _works(argv: list[str]) -> bool:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, env=dict(_SAFE_ENV))
        return await asyncio.wait_for(proc.wait(), 10) == 0
    except (OSError, TimeoutError):
        return False


def locate(settings: SandboxSettings) -> tuple[str, str | None, str | None, tuple[str, ...]]:
    """The python, node and bwrap executables, and the visible paths that exist."""
    python = settings.python_path or os.path.realpath(sys.executable)
    node = settings.node_path or shutil.which("node")
    bwrap = settings.bwrap_path or shutil.which("bwrap")
    visible = tuple(p for p in settings.visible_paths if os.path.isdir(p))
    return python, node, bwrap, visible


def _binds(paths: tuple[str, ...]) -> tuple[str, ...]:
    real = (os.path.realpath(p) for p in paths)
    return tuple(dict.fromkeys(p for p in real if os.path.isdir(p)))


async def make_launcher(settings: SandboxSettings, binds: tuple[str, ...] = (),
                        base_uid: int | None = None) -> Launcher:
    """Probe the host and pick the strongest isolation the settings allow.

    ``binds`` are directories bound read-only besides ``settings.extra_ro_binds``
    (toolchains, the compile cache); ``base_uid`` (root only) is the first private uid.
    """
    python, node, bwrap, visible = locate(settings)
    launcher = Launcher(BUBBLEWRAP, python, node, bwrap, visible, settings.tmp_size, base_uid,
                        _binds((*settings.extra_ro_binds, *binds)))
    if settings.isolation != "rlimits" and bwrap is not None:
        if await _works(launcher.wrap([python, "-I", "-S", "-c", "0"])):
            return launcher
    if settings.isolation == "bubblewrap":
        raise SandboxUnavailable(f"bubblewrap requested but not usable (bwrap={bwrap!r})")
    unshare = shutil.which("unshare")
    level = RLIMITS
    if unshare is not None and await _works([unshare, "--net", "--", python, "-c", "0"]):
        level = RLIMITS_UNSHARE
    return Launcher(level, python, node, None, (), settings.tmp_size, base_uid)
