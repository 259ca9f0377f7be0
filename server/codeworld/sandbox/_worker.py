"""The host's handle on one warm worker process (one execution at a time)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from typing import Any

from ..errors import SandboxUnavailable, WorkerCrashed
from ._launch import BUBBLEWRAP, Launcher

_LINE_LIMIT = 256 << 20


class Worker:
    """A long-lived sandboxed fork server, spoken to in JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process, tmp: str | None) -> None:
        self._proc = proc
        self._tmp = tmp
        self._seq = 0

    @classmethod
    async def spawn(cls, launcher: Launcher, slot: int, timeout: float) -> Worker:
        """Start worker ``slot`` and wait until it reports ready."""
        tmp = None
        if launcher.isolation != BUBBLEWRAP:
            tmp = tempfile.mkdtemp(prefix="codeworld-")
            os.chmod(tmp, 0o711)  # runs (own uid) traverse into their own run directory
        try:
            proc = await asyncio.create_subprocess_exec(
                *launcher.command(slot, tmp or "/tmp"), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                env=launcher.env, limit=_LINE_LIMIT, start_new_session=True)
        except OSError as exc:
            raise SandboxUnavailable(f"cannot start a worker: {exc}") from exc
        worker = cls(proc, tmp)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
            if not json.loads(line or b"{}").get("ready"):
                raise SandboxUnavailable(f"worker {slot} did not start")
        except (TimeoutError, ValueError) as exc:
            await worker.kill()
            raise SandboxUnavailable(f"worker {slot} did not start: {exc!r}") from exc
        except BaseException:
            await worker.kill()
            raise
        return worker

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self._proc.returncode is None

    async def execute(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait up to ``timeout`` seconds for its response.

        Raises ``WorkerCrashed`` (after killing the worker) on death, timeout or garbage.
        """
        self._seq += 1
        request = {**request, "id": self._seq}
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            await self._proc.stdin.drain()
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
            response = json.loads(line)
            if not isinstance(response, dict) or response.get("id") != self._seq:
                raise ValueError("response does not match the request")
            return response
        except (OSError, TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
            await self.kill()
            raise WorkerCrashed(f"worker failed: {exc!r}") from exc
        except BaseException:
            await self.kill()
            raise

    async def kill(self) -> None:
        """Kill the worker (its sandbox dies with it) and remove its temporary directory."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            with contextlib.suppress(Exception):
                await self._proc.wait()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
