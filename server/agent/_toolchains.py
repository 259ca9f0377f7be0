"""Compiled-language toolchains (Rust, Go) found on the host, to run inside the sandbox.

A toolchain is offered only when its compiler is found; its real directory (rustc's
sysroot, Go's GOROOT) is what the sandbox must bind read-only
(`SandboxSettings.extra_ro_binds`), since it often lives under a hidden home (`/root`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COMPILED_LANGUAGES", "Toolchain", "find_toolchain", "find_toolchains"]

#: Languages compiled in the sandbox before they run.
COMPILED_LANGUAGES: tuple[str, ...] = ("rust", "go")

#: Per language: the driver, where installers put it when PATH misses it, and the
#: arguments printing the toolchain's real directory.
_DRIVERS: Mapping[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "rust": ("rustc", ("~/.cargo/bin",), ("--print", "sysroot")),
    "go": ("go", ("/usr/local/go/bin", "~/go/bin", "~/.local/go/bin"), ("env", "GOROOT")),
}
#: Programs a toolchain needs from the system directories the sandbox sees.
_SYSTEM_NEEDS: Mapping[str, tuple[str, ...]] = {"rust": ("cc",)}  # rustc links with cc
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Toolchain:
    """A compiler found on the host, or why none was."""

    language: str
    #: The real toolchain directory (rust sysroot, GOROOT); None when not found.
    root: str | None = None
    #: The compiler inside `root` (`<sysroot>/bin/rustc`, `<GOROOT>/bin/go`).
    compiler: str | None = None
    #: Why the language is unavailable; empty when found.
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.root is not None and self.compiler is not None


def find_toolchain(language: str, which: Callable[[str], str | None] = shutil.which,
                   timeout_s: float = 10.0) -> Toolchain:
    """Locate `language`'s toolchain: PATH, then the installers' usual directories.

    Runs the driver once (`rustc --print sysroot`, `go env GOROOT`) to resolve the real
    directory behind proxies such as rustup's.
    """
    name, fallbacks, query = _DRIVERS[language]
    missing = [exe for exe in _SYSTEM_NEEDS.get(language, ())
               if shutil.which(exe, path=_SYSTEM_PATH) is None]
    if missing:
        return Toolchain(language, reason=f"{', '.join(missing)} not found in {_SYSTEM_PATH}")
    driver = which(name) or next(
        (str(p) for d in fallbacks if (p := Path(d).expanduser() / name).is_file()
         and os.access(p, os.X_OK)), None)
    if driver is None:
        return Toolchain(language, reason=f"{name} not found on PATH or in "
                                          f"{', '.join(fallbacks)}")
    try:
        done = subprocess.run([driver, *query], capture_output=True, text=True, cwd="/",
                              timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Toolchain(language, reason=f"{driver} {' '.join(query)} failed: {exc}")
    root = done.stdout.strip()
    compiler = os.path.join(root, "bin", name)
    if done.returncode != 0 or not root or not os.access(compiler, os.X_OK):
        detail = done.stderr.strip().splitlines()[-1:] or [f"no {compiler}"]
        return Toolchain(language, reason=f"{driver} {' '.join(query)} gave no usable "
                                          f"toolchain: {detail[0]}")
    real = os.path.realpath(root)
    return Toolchain(language, real, os.path.join(real, "bin", name))


def find_toolchains(languages: tuple[str, ...] = COMPILED_LANGUAGES) -> dict[str, Toolchain]:
    """`find_toolchain` for each compiled language."""
    return {lang: find_toolchain(lang) for lang in languages}
