"""The sandbox: a pool of warm, isolated workers that run untrusted code."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidSource, SandboxUnavailable, WorkerCrashed
from ._execution import Execution, JsonValue, Language, Status
from ._launch import Launcher, make_launcher
from ._limits import Limits
from ._policy import check_policy
from ._settings import SandboxSettings
from ._worker import Worker


class Sandbox:
    """Runs Python or JavaScript under isolation, a worker per concurrent execution.

    Use ``async with Sandbox(settings) as sandbox:`` or ``start()``/``close()``.
    ``run`` is safe to call concurrently; at most ``workers`` executions run at once and
    the rest wait for a free worker. A worker that dies, hangs past ``wall_time + grace``
    or answers garbage is killed and replaced; the call then raises ``WorkerCrashed``.
    """

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self._settings = settings or SandboxSettings()
        self._launcher: Launcher | None = None
        self._slots: list[Worker | None] = []
        self._idle: asyncio.Queue[int] = asyncio.Queue()
        self._closed = False

    @property
    def settings(self) -> SandboxSettings:
        """The settings this sandbox was built with."""
        return self._settings

    @property
    def isolation(self) -> str:
        """``"bubblewrap"``, ``"rlimits+unshare"`` or ``"rlimits"`` (weaker); "" before start."""
        return "" if self._launcher is None else self._launcher.isolation

    @property
    def workers(self) -> int:
        """Executions that can run at once (0 before start)."""
        return len(self._slots)

    @property
    def languages(self) -> tuple[Language, ...]:
        """Languages available on this host (JavaScript needs node)."""
        if self._launcher is not None and self._launcher.node is None:
            return (Language.PYTHON,)
        return (Language.PYTHON, Language.JAVASCRIPT)

    async def start(self) -> None:
        """Probe isolation and start the workers. Raises ``SandboxUnavailable``."""
        if self._launcher is not None:
            return
        self._launcher = await make_launcher(self._settings)
        count = self._settings.workers or os.cpu_count() or 1
        self._slots = [None] * count
        spawned = await asyncio.gather(*(self._spawn(i) for i in range(count)),
                                       return_exceptions=True)
        for slot, worker in enumerate(spawned):
            if isinstance(worker, BaseException):
                await self.close()
                raise SandboxUnavailable(f"worker {slot}: {worker}") from worker
            self._slots[slot] = worker
            self._idle.put_nowait(slot)

    async def close(self) -> None:
        """Kill every worker. Idempotent."""
        self._closed = True
        slots, self._slots = self._slots, []
        await asyncio.gather(*(w.kill() for w in slots if w is not None))

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(
        self,
        language: Language | str,
        source: str,
        *,
        entry: str | None = None,
        args: Sequence[JsonValue] = (),
        stdin: str = "",
        tests: str | None = None,
        limits: Limits | None = None,
        strict: bool | None = None,
    ) -> Execution:
        """Run ``source`` once and report what happened.

        Args:
            language: ``"python"`` or ``"javascript"``.
            source: the program text.
            entry: a function to call after the source ran (``None``: run as a script,
                with ``__name__ == "__main__"``).
            args: JSON arguments of ``entry``.
            stdin: text on the program's standard input.
            tests: HumanEval-style tests defining ``check(candidate)``; run after the
                source and called with ``entry``; the result is ``True`` when they pass.
            limits: resource limits (default ``settings.limits``).
            strict: apply the AST policy (default ``settings.strict``; Python only).

        Failures of the code are reported in the ``Execution``; raises ``InvalidSource``
        (bad language, entry or policy), ``SandboxUnavailable`` or ``WorkerCrashed``.
        """
        lang = _language(language)
        if lang not in self.languages:
            raise InvalidSource(f"{lang} is not available on this host")
        if entry is not None and not entry.isidentifier():
            raise InvalidSource(f"entry {entry!r} is not an identifier")
        if tests is not None and entry is None:
            raise InvalidSource("tests need an entry point")
        if lang is Language.PYTHON and (self._settings.strict if strict is None else strict):
            check_policy(source)
            if tests is not None:
                check_policy(tests)
        limits = limits or self._settings.limits
        request: dict[str, Any] = {
            "language": lang.value, "source": source, "entry": entry, "args": list(args),
            "stdin": stdin, "tests": tests, "limits": limits.to_wire(),
        }
        slot = await self._checkout()
        began = time.perf_counter()
        try:
            worker = self._slots[slot] if slot < len(self._slots) else None
            if worker is None or not worker.alive:
                worker = await self._replace(slot)
            try:
                response = await worker.execute(request, limits.wall_time + self._settings.grace)
            except WorkerCrashed:
                await self._replace(slot)
                raise
        finally:
            if not self._closed:
                self._idle.put_nowait(slot)
        return self._execution(response, time.perf_counter() - began)

    async def _checkout(self) -> int:
        if self._launcher is None or self._closed:
            raise SandboxUnavailable("the sandbox is not started")
        return await self._idle.get()

    async def _spawn(self, slot: int) -> Worker:
        assert self._launcher is not None
        return await Worker.spawn(self._launcher, slot, self._settings.start_timeout)

    async def _replace(self, slot: int) -> Worker:
        old = self._slots[slot]
        self._slots[slot] = None
        if old is not None:
            await old.kill()
        worker = await self._spawn(slot)
        self._slots[slot] = worker
        return worker

    def _execution(self, response: dict[str, Any], elapsed: float) -> Execution:
        raw_error = response.get("error")
        error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
        wall = float(response.get("wall", 0.0))
        return Execution(
            status=Status(response.get("status", "error")),
            result=response.get("result"),
            stdout=str(response.get("stdout", "")),
            stderr=str(response.get("stderr", "")),
            truncated=bool(response.get("truncated", False)),
            wall=wall,
            cpu=float(response.get("cpu", 0.0)),
            peak_memory=int(response.get("peak_memory", 0)),
            reason=str(response.get("reason", "")),
            error_type=str(error.get("type", "")),
            error_message=str(error.get("message", "")),
            exit_code=int(response.get("exit_code", 0)),
            isolation=self.isolation,
            overhead=max(0.0, elapsed - wall),
        )


def _language(language: Language | str) -> Language:
    try:
        return Language(language)
    except ValueError:
        raise InvalidSource(f"unknown language {language!r}") from None
