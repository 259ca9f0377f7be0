"""The sandbox: a pool of warm, isolated workers that run untrusted code."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...fair import FairGate, current_owner
from ...uids import UidRange
from ..errors import InvalidSource, SandboxUnavailable, WorkerCrashed
from ._compile import Built, CompileCache, decode_files
from ._execution import Execution, JsonValue, Language, Status
from ._launch import Launcher, locate, make_launcher
from ._limits import Limits
from ._policy import check_policy
from ._settings import SandboxSettings
from ._text import utf8_safe
from ._toolchains import COMPILED, Toolchain, find_toolchain
from ._worker import Worker

_GIB = 1 << 30
#: Languages whose runtime reserves address space up front (node's V8, the JVM, Go's
#: page allocator): they get ``Limits.memory`` as heap limit and ``memory + 1 GiB`` of
#: address space.
_RESERVING = frozenset({Language.JAVASCRIPT, Language.TYPESCRIPT, Language.JAVA,
                        Language.GO})


class Sandbox:
    """Runs code in every available language under isolation, a worker per concurrent
    execution.

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
        #: Who gets a worker set free: the waiting caller holding the fewest (fair.py).
        self._gate = FairGate(1)
        self._closed = False
        self._toolchains: dict[Language, Toolchain] | None = None
        self._cache = CompileCache(self._settings.compile_cache_dir,
                                   max_entries=self._settings.compile_cache_entries)
        self._uids: UidRange | None = None

    @property
    def busy(self) -> int:
        """Workers running a request right now."""
        return self._gate.held

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
        """Languages that can run here: enabled, and their toolchain found."""
        return tuple(t.language for t in self.toolchains() if t.available)

    def toolchains(self) -> tuple[Toolchain, ...]:
        """Every language's toolchain (found or not, with why), in ``Language`` order.

        Looked up once (each compiler is run for its version); ``start`` does it off the
        event loop.
        """
        if self._toolchains is None:
            self._toolchains = self._find_toolchains()
        return tuple(self._toolchains.values())

    def compile_stats(self) -> dict[str, int]:
        """``{"builds": compiles run, "hits": compile-cache hits}`` since start."""
        return {"builds": self._cache.builds, "hits": self._cache.hits}

    def _find_toolchains(self) -> dict[Language, Toolchain]:
        python, node, _, _ = locate(self._settings)
        enabled = self._settings.languages
        found: dict[Language, Toolchain] = {}
        for language in Language:
            if enabled is not None and language.value not in enabled:
                found[language] = Toolchain(language, reason="not enabled in the settings")
            else:
                found[language] = find_toolchain(language, python=python, node=node,
                                                 typescript=self._settings.typescript_path)
        return found

    async def start(self) -> None:
        """Probe isolation and start the workers. Raises ``SandboxUnavailable``."""
        if self._launcher is not None:
            return
        chains = await asyncio.to_thread(self.toolchains)
        self._cache.open()
        roots = tuple(t.root for t in chains if t.available and t.root)
        count = self._settings.workers or os.cpu_count() or 1
        if os.geteuid() == 0:
            self._uids = UidRange.claim(self._settings.base_uid, count)
        try:
            self._launcher = await make_launcher(
                self._settings, (*roots, self._cache.directory),
                self._uids.first if self._uids else None)
        except BaseException:
            await self.close()
            raise
        self._slots = [None] * count
        self._gate = FairGate(count)
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
        self._cache.close()
        if self._uids is not None:
            self._uids.release()

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
            language: a ``Language`` (``"python"``, ``"javascript"``, ``"typescript"``,
                ``"c"``, ``"cpp"``, ``"java"``, ``"rust"``, ``"go"``) available here.
                Compiled languages are built once per distinct source (a compile error
                is an ERROR execution with reason ``"compile"`` and the compiler's
                message in ``stderr``); C, C++, Java, Rust and Go then run as programs
                (no ``entry`` or ``tests``).
            source: the program text.
            entry: a function to call after the source ran (``None``: run as a script,
                with ``__name__ == "__main__"``). Python, JavaScript, TypeScript.
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
        chain = self._chain(lang)
        if not chain.available:
            raise InvalidSource(f"{lang} is not available on this host: {chain.reason}")
        if entry is not None and not entry.isidentifier():
            raise InvalidSource(f"entry {entry!r} is not an identifier")
        if tests is not None and entry is None:
            raise InvalidSource("tests need an entry point")
        if lang is Language.PYTHON and (self._settings.strict if strict is None else strict):
            check_policy(source)
            if tests is not None:
                check_policy(tests)
        limits = limits or self._settings.limits
        wire = {**limits.to_wire(), "address_space": limits.memory
                + (_GIB if lang in _RESERVING else 0)}
        request: dict[str, Any] = {
            "language": lang.value, "source": source, "entry": entry, "args": list(args),
            "stdin": stdin, "tests": tests, "limits": wire,
        }
        if lang not in COMPILED:
            response, elapsed = await self._exchange(request, limits.wall_time)
            return self._execution(response, elapsed)
        if lang is not Language.TYPESCRIPT and (entry is not None or tests is not None):
            raise InvalidSource(f"{lang} strategies are programs: the context comes as JSON "
                                "on stdin and the result goes as JSON to stdout (no entry "
                                "function or tests)")
        compiled = await self._cache.artifact(self._cache.key(chain.identity, lang.value, source),
                                              lambda: self._compile(chain, source))
        if compiled.path is None:
            assert compiled.failure is not None
            return dataclasses.replace(compiled.failure, compile_wall=compiled.wall,
                                       compiled=compiled.built)
        if lang is Language.TYPESCRIPT:
            script = await asyncio.to_thread(
                Path(compiled.path, "out", "main.js").read_text, encoding="utf-8")
            request.update(language=Language.JAVASCRIPT.value, source=script)
        else:
            request.update(argv=chain.command(compiled.path, source, limits.memory),
                           env=chain.environment(limits.memory))
        response, elapsed = await self._exchange(request, limits.wall_time)
        return dataclasses.replace(self._execution(response, elapsed),
                                   compile_wall=compiled.wall, compiled=compiled.built)

    def _chain(self, language: Language) -> Toolchain:
        self.toolchains()
        assert self._toolchains is not None
        return self._toolchains[language]

    async def _compile(self, chain: Toolchain, source: str) -> Built:
        """Build ``source`` in a worker under the compile limits."""
        build = chain.build(source)
        limits = self._settings.compile_limits
        request: dict[str, Any] = {
            "language": chain.language.value, "source": "", "argv": list(build.argv),
            "env": dict(build.env), "files": {build.file: source},
            "outputs": list(build.outputs),
            "limits": {**limits.to_wire(), "address_space": limits.memory}}
        response, elapsed = await self._exchange(request, limits.wall_time)
        encoded = response.get("artifact")
        if response.get("status") == "ok" and isinstance(encoded, dict):
            try:
                return Built(decode_files(encoded), None, elapsed)
            except ValueError as exc:
                raise WorkerCrashed(f"bad artifact from the compiler: {exc}") from exc
        ran = self._execution(response, elapsed)
        message = "\n".join(p for p in (ran.stderr, ran.stdout) if p.strip())
        reason = {Status.TIMEOUT: "compile_timeout", Status.KILLED: f"compile: {ran.reason}"}
        first = next((line for line in message.splitlines() if "error" in line.lower()),
                     (message.splitlines() or [ran.error_message or ran.reason])[0])
        failure = Execution(
            Status.ERROR if ran.status is Status.OK else ran.status,
            stderr=message[-64 * 1024:], reason=reason.get(ran.status, "compile"),
            error_type="CompileError", error_message=first[:500], exit_code=ran.exit_code,
            isolation=self.isolation, wall=0.0)
        return Built(None, failure, elapsed,
                     refused=ran.status is Status.ERROR and ran.reason.startswith("exit "))

    async def _exchange(self, request: dict[str, Any], wall_time: float
                        ) -> tuple[dict[str, Any], float]:
        """Send one request to a free worker; its response and the time it took."""
        owner = current_owner()
        slot = await self._checkout(owner)
        began = time.perf_counter()
        try:
            worker = self._slots[slot] if slot < len(self._slots) else None
            if worker is None or not worker.alive:
                worker = await self._replace(slot)
            try:
                response = await worker.execute(request, wall_time + self._settings.grace)
            except WorkerCrashed:
                await self._replace(slot)
                raise
        finally:
            if not self._closed:
                self._idle.put_nowait(slot)
            self._gate.release(owner)
        return response, time.perf_counter() - began

    async def _checkout(self, owner: object) -> int:
        """A free worker's slot, once the gate gives `owner` one (it holds its place)."""
        if self._launcher is None or self._closed:
            raise SandboxUnavailable("the sandbox is not started")
        await self._gate.acquire(owner)
        try:
            return await self._idle.get()
        except BaseException:
            self._gate.release(owner)
            raise

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
            # What the code's process reported (its own reason, exception type and
            # message): JSON, whose escapes make lone surrogates.
            reason=utf8_safe(str(response.get("reason", ""))),
            error_type=utf8_safe(str(error.get("type", ""))),
            error_message=utf8_safe(str(error.get("message", ""))),
            exit_code=int(response.get("exit_code", 0)),
            isolation=self.isolation,
            overhead=max(0.0, elapsed - wall),
        )


def _language(language: Language | str) -> Language:
    try:
        return Language(language)
    except ValueError:
        raise InvalidSource(f"unknown language {language!r}") from None
