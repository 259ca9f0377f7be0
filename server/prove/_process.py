"""Prover processes: started inside the jail, limited, killed as a group.

Every prover runs as a child of the server process, never inside it, and inside the
jail (`scillm.server.jail`: bubblewrap with a minimal read-only root, a private /tmp,
no network, its own pid namespace, an unprivileged uid, rlimits), in a new session so
that a kill reaches its whole process group. No `preexec_fn`: the server is
multi-threaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..jail import Jail, mib

__all__ = ["ProverProcess", "RunResult", "make_inbox", "put_item", "run_once"]

#: Largest line or block read from a prover's output, bytes.
STREAM_LIMIT = 32 * 1024 * 1024


def make_inbox(prefix: str, scratch: Path | None) -> Path:
    """A new host directory for handing items to a prover: only the server writes in it;
    the jail's unprivileged uid may read it."""
    inbox = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch))
    inbox.chmod(0o755)
    return inbox


def put_item(inbox: Path, name: str, text: str) -> None:
    """Write `text` as `inbox/name`, readable by the jail."""
    path = inbox / name
    path.write_text(text)
    path.chmod(0o644)


def _innermost(pid: int) -> int:
    """The process at the end of `pid`'s chain of children (the prover inside bubblewrap
    and its pid-namespace init), or `pid` itself when it has none."""
    for _ in range(8):
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return pid
        if not children:
            return pid
        pid = int(children[-1])
    return pid


class ProverProcess:
    """One running prover with piped stdin and merged stdout/stderr (or stderr apart)."""

    def __init__(self, proc: asyncio.subprocess.Process, jail: Jail, memory_mb: int) -> None:
        self._proc = proc
        self._jail = jail
        self._memory_mb = memory_mb

    @classmethod
    async def spawn(cls, argv: Sequence[str], *, jail: Jail, memory_mb: int,
                    inbox: Path | None = None, stderr_apart: bool = False) -> ProverProcess:
        """Start `argv` in `jail`, limited to `memory_mb` MiB of address space.

        `inbox` is the host directory the prover reads its items from (read-only inside
        bubblewrap; see `Jail.inbox_path`). Without bubblewrap the prover works in it.
        With `stderr_apart`, standard error is read apart from standard output (`finish`).
        """
        proc = await asyncio.create_subprocess_exec(
            *jail.command(argv, memory_mb=memory_mb, inbox=inbox),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if stderr_apart else asyncio.subprocess.STDOUT,
            env=jail.env,
            cwd=inbox if jail.isolation != "bubblewrap" else None,
            start_new_session=True, limit=STREAM_LIMIT)
        return cls(proc, jail, memory_mb)

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
        limit = mib(memory_mb)
        hard = limit if self._jail.drop_uid else resource.RLIM_INFINITY
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            resource.prlimit(_innermost(self.pid), resource.RLIMIT_AS, (limit, hard))
            self._memory_mb = memory_mb

    async def send(self, text: str) -> None:
        """Write `text` to the prover's stdin. A prover that exits before it has read it
        all (cvc5 stops at the first error in what it reads) is not an error here: the
        read that follows ends (EOFError) with what the prover printed before it left."""
        stdin = self._proc.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
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
        out, err = await self._proc.communicate()
        return RunResult(self._proc.returncode or 0, out.decode(errors="replace"),
                         (err or b"").decode(errors="replace"))

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
    """Exit status and output of a one-shot prover run: stdout and stderr merged, or (with
    `run_once(stderr_apart=True)`) stdout alone, stderr in `errors`."""

    returncode: int
    output: str
    errors: str = ""


async def run_once(argv: Sequence[str], *, jail: Jail, timeout_s: float, memory_mb: int,
                   inbox: Path | None = None, stderr_apart: bool = False) -> RunResult:
    """Run `argv` in `jail` to completion; TimeoutError (prover killed) past `timeout_s`.

    Cancellation kills the prover too. `stderr_apart`: see `RunResult`.
    """
    proc = await ProverProcess.spawn(argv, jail=jail, memory_mb=memory_mb, inbox=inbox,
                                     stderr_apart=stderr_apart)
    try:
        async with asyncio.timeout(timeout_s):
            return await proc.finish()
    except BaseException:
        await proc.kill()
        raise
