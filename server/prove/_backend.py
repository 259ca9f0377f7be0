"""The interface every prover backend implements, and helpers they share."""

from __future__ import annotations

import shutil
from typing import Protocol

from ..jail import Jail
from ._process import run_once
from ._types import BackendInfo, CheckOutcome, Limits, Obligation

__all__ = ["Backend", "probe_version"]


class Backend(Protocol):
    """A prover behind one interface. Implementations keep their processes warm."""

    #: Name clients use (`smt`, `coq`, `lean4`).
    name: str

    async def info(self) -> BackendInfo:
        """Availability and prover version (probed once, then remembered)."""
        ...

    def source_of(self, obligation: Obligation) -> str:
        """The exact text the prover will check for `obligation`."""
        ...

    def instructions(self) -> str:
        """System prompt telling a model how to write an obligation for this backend."""
        ...

    async def check(self, obligation: Obligation, limits: Limits) -> CheckOutcome:
        """Check one obligation within `limits`; prover failures are verdicts."""
        ...

    async def start(self, *, prewarm: bool, jail: Jail) -> None:
        """Get ready to run provers in `jail`; with `prewarm`, start the warm workers now.
        Called before `info`."""
        ...

    async def close(self) -> None:
        """Kill every prover process of this backend."""
        ...


async def probe_version(name: str, argv: list[str], jail: Jail) -> BackendInfo:
    """BackendInfo from running `argv` (a `--version` call) in `jail`; unavailable when it
    fails, in which case the reason says so (a prover that cannot run jailed is not used)."""
    if shutil.which(argv[0]) is None:
        return BackendInfo(name, False, reason=f"{argv[0]!r} is not on PATH")
    try:
        result = await run_once(argv, jail=jail, timeout_s=30.0, memory_mb=4096)
    except (TimeoutError, OSError) as exc:
        return BackendInfo(name, False, reason=f"{argv[0]} --version failed: {exc}")
    text = result.output.strip()
    if result.returncode != 0:
        return BackendInfo(name, False, reason=f"{argv[0]} --version exited "
                           f"{result.returncode}: {text[:200]}")
    return BackendInfo(name, True, version=text.splitlines()[0] if text else "")
