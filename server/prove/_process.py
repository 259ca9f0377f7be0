"""Prover processes: spawned in their own session, limited, killed as a group.

Every prover runs as a child of the server process, never inside it. Each is started
through `setpriv --pdeathsig KILL` (dies with the server) and `prlimit --as=...`
(RLIMIT_AS set before the prover's first instruction), in a new session so a kill
reaches its whole process group. No `preexec_fn`: the server is multi-threaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProverProcess", "RunResult", "mib", "run_once"]

#: Largest line or block read from a prover's output, bytes.
STREAM_LIMIT = 32 * 1024 * 1024


def mib(megabytes: int) -> int:
    """Bytes in `megabytes` MiB."""
    return megabytes * 1024 * 1024


def _wrapped(argv: Sequence[str], memory_mb: int) -> list[str]:
    """`argv` behind setpriv/prlimit when those util-linux tools are installed."""
    prefix: list[str] = []
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        prefix += [setpriv, "--pdeathsig", "KILL", "--"]
    prlimit = shutil.which("prlimit")
    if prlimit is not None:
        prefix += [prlimit, f"--as={mib(memory_mb)}:unlimited", "--"]
    return [*prefix, *argv]


class ProverProcess:
    """One running prover with piped stdin and merged stdout/stderr."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._memory_mb: int | None = None

    @classmethod
    async def spawn(cls, argv: Sequence[str], *, memory_mb: int,
                    cwd: Path | None = None) -> ProverProcess:
        """Start `argv` limited to `memory_mb` MiB of address space."""
        proc = await asyncio.create_subprocess_exec(
            *_wrapped(argv, memory_mb), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=cwd, start_new_session=True, limit=STREAM_LIMIT)
        self = cls(proc)
        self._memory_mb = memory_mb
        return self

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc.returncode is None

    def set_memory_limit(self, memory_mb: int) -> None:
        """Change the soft RLIMIT_AS of the running prover (next item's limit)."""
        if memory_mb == self._memory_mb or not self.alive:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            resource.prlimit(self.pid, resource.RLIMIT_AS,
                             (mib(memory_mb), resource.RLIM_INFINITY))
            self._memory_mb = memory_mb

    async def send(self, text: str) -> None:
        """Write `text` to the prover's stdin."""
        stdin = self._proc.stdin
        assert stdin is not None
        stdin.write(text.encode())
        await stdin.drain()

    async def read_until(self, marker: bytes) -> str:
        """Output up to and including `marker`; EOFError when the prover exits first."""
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            data = await stdout.readuntil(marker)
        except asyncio.IncompleteReadError as exc:
            raise EOFError(exc.partial.decode(errors="replace")) from None
        return data.decode(errors="replace")

    async def read_line(self) -> str:
        """One output line without its newline; EOFError when the prover exits first."""
        return (await self.read_until(b"\n"))[:-1]

    async def finish(self) -> RunResult:
        """Close stdin, read all output and wait for the exit."""
        # Close stdin ourselves rather than through communicate(b""): under uvloop,
        # writing to the pipe of a prover that has already exited raises RuntimeError.
        stdin = self._proc.stdin
        if stdin is not None and not stdin.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                stdin.close()
        out, _ = await self._proc.communicate()
        return RunResult(self._proc.returncode or 0, out.decode(errors="replace"))

    def kill_now(self) -> None:
        """SIGKILL the prover's process group without waiting."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    async def kill(self) -> None:
        """SIGKILL the prover's process group and reap it."""
        self.kill_now()
        with contextlib.suppress(ProcessLookupError):
            await self._proc.wait()


@dataclass(frozen=True)
class RunResult:
    """Exit status and merged output of a one-shot prover run."""

    returncode: int
    output: str


async def run_once(argv: Sequence[str], *, timeout_s: float, memory_mb: int,
                   cwd: Path | None = None) -> RunResult:
    """Run `argv` to completion; TimeoutError (prover killed) past `timeout_s`.

    Cancellation kills the prover too.
    """
    proc = await ProverProcess.spawn(argv, memory_mb=memory_mb, cwd=cwd)
    try:
        async with asyncio.timeout(timeout_s):
            return await proc.finish()
    except BaseException:
        await proc.kill()
        raise
