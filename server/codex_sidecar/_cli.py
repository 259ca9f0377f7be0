"""Running `codex exec --json`, one process group per attempt.

`CodexRunner.events(job)` runs the CLI with the prompt on stdin and yields a `Reasoning`
for each completed reasoning item as it arrives, then the whole `CodexTurn`. At most
`max_concurrency` runs go at once (others wait for a slot); each attempt is killed with
its process group at the absolute timeout (`CodexTimeout`); an exit code in
`transient_exit_codes` is retried while nothing has been yielded yet; a run reporting
no credentials is `CodexUnauthorized`, any other failure `CodexFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._events import CodexTurn, no_credentials
from ._settings import SidecarSettings
from .errors import CodexFailed, CodexTimeout, CodexUnauthorized, NotRunnable, SidecarError

__all__ = ["CodexJob", "CodexRunner", "Reasoning"]

#: Longest stdout line read whole (a long agent message is one line); longer ones are
#: counted as malformed and skipped.
_LINE_LIMIT = 16 * 1024 * 1024
_STDERR_TAIL = 64 * 1024


@dataclass(frozen=True)
class CodexJob:
    """One request for the CLI: the prompt, and the options it maps to flags."""

    prompt: str
    model: str | None = None
    effort: str | None = None
    output_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reasoning:
    """A completed reasoning item, yielded as soon as the CLI reports it."""

    text: str


class _Exit(Exception):
    """An attempt ended in `error`; `transient` when its exit code may be retried."""

    def __init__(self, error: SidecarError, transient: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.transient = transient


class CodexRunner:
    """Runs the Codex CLI for chat requests; see the module docstring."""

    def __init__(self, settings: SidecarSettings, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._settings = settings
        self._sleep = sleep
        self._gate = asyncio.Semaphore(settings.max_concurrency)
        self._groups: set[int] = set()
        #: Runs holding a slot, and runs waiting for one.
        self.running = 0
        self.waiting = 0

    def argv(self, job: CodexJob, schema: Path | None) -> list[str]:
        """The command line of one run; the prompt goes on stdin (`-`)."""
        s = self._settings
        out = [*s.codex_cmd, "exec", "--json", "--skip-git-repo-check", *s.codex_args]
        if job.model:  # one argument, so a name starting with "-" is never an option
            out.append(f"--model={job.model}")
        if job.effort:
            out += ["-c", f'model_reasoning_effort="{job.effort}"']
        if schema is not None:
            out += ["--output-schema", str(schema)]
        out.append("-")
        return out

    async def run(self, job: CodexJob) -> CodexTurn:
        """The whole run's result."""
        async with aclosing(self.events(job)) as events:
            async for item in events:
                if isinstance(item, CodexTurn):
                    return item
        raise CodexFailed("the Codex CLI run ended without a result")

    async def events(self, job: CodexJob) -> AsyncGenerator[Reasoning | CodexTurn, None]:
        """`Reasoning` items as they come, then the `CodexTurn`; closing it kills the run."""
        self.waiting += 1
        try:
            await self._gate.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            attempt = 0
            while True:
                sent = False
                try:
                    async with aclosing(self._attempt(job)) as items:
                        async for item in items:
                            sent = sent or isinstance(item, Reasoning)
                            yield item
                    return
                except _Exit as exc:
                    if not exc.transient or sent or attempt >= self._settings.retries:
                        raise exc.error from None
                attempt += 1
                await self._sleep(min(0.25 * 2 ** (attempt - 1), 2.0))
        finally:
            self.running -= 1
            self._gate.release()

    async def _attempt(self, job: CodexJob) -> AsyncGenerator[Reasoning | CodexTurn, None]:
        s = self._settings
        with _workdir(s.workdir) as cwd:
            schema = None
            if job.output_schema is not None:
                schema = cwd / f"schema-{uuid.uuid4().hex}.json"
                schema.write_text(json.dumps(job.output_schema), encoding="utf-8")
            argv = self.argv(job, schema)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, cwd=cwd, start_new_session=True,
                    limit=_LINE_LIMIT)
            except OSError as exc:
                raise NotRunnable(f"cannot start the Codex CLI {argv[0]!r}: "
                                  f"{exc.strerror or exc}") from None
            self._groups.add(proc.pid)
            assert proc.stdin is not None and proc.stdout is not None \
                and proc.stderr is not None
            deadline = asyncio.get_running_loop().time() + s.timeout_s
            stderr = asyncio.create_task(_tail(proc.stderr))
            turn = CodexTurn()
            try:
                async with asyncio.timeout_at(deadline):
                    await _send(proc.stdin, job.prompt)
                while True:
                    try:  # the deadline covers each read, never a yield to the caller
                        async with asyncio.timeout_at(deadline):
                            line = await proc.stdout.readline()
                    except ValueError:  # a line past _LINE_LIMIT
                        turn.malformed += 1
                        continue
                    if not line:
                        break
                    text = turn.feed(line)
                    if text is not None:
                        yield Reasoning(text)
                async with asyncio.timeout_at(deadline):
                    code = await proc.wait()
                    err = await stderr
            except TimeoutError:
                raise CodexTimeout(f"the Codex CLI did not finish within {s.timeout_s:g}s; "
                                   f"its process group was killed") from None
            finally:
                if proc.returncode is None:
                    _kill_group(proc.pid)
                    with contextlib.suppress(asyncio.CancelledError):
                        await proc.wait()
                self._groups.discard(proc.pid)
                stderr.cancel()
        self._judge(turn, code, err)
        yield turn

    def _judge(self, turn: CodexTurn, code: int, stderr: str) -> None:
        """Raise `_Exit` unless the run exited 0 with an agent message."""
        if code == 0 and turn.failed is None and turn.answer is not None:
            return
        refused = no_credentials(turn, stderr)
        if refused is not None:
            raise _Exit(CodexUnauthorized(
                f"the Codex CLI has no usable credentials: log in as the user running the "
                f"sidecar (`codex login`, or set CODEX_API_KEY); it said: {refused[:500]}"),
                transient=False)
        said = turn.failure() or _last_line(stderr)
        if code == 0 and turn.failed is None:
            extra = f" ({turn.malformed} malformed lines)" if turn.malformed else ""
            raise _Exit(CodexFailed(f"the Codex CLI printed no agent message{extra}"),
                        transient=False)
        raise _Exit(CodexFailed(f"the Codex CLI failed (exit code {code})"
                                + (f": {said[:800]}" if said else ""), exit_code=code),
                    transient=code in self._settings.transient_exit_codes)

    def close(self) -> None:
        """Kill every run still going (at shutdown)."""
        for pid in list(self._groups):
            _kill_group(pid)


@contextlib.contextmanager
def _workdir(fixed: Path | None) -> Iterator[Path]:
    if fixed is not None:
        yield fixed
        return
    with tempfile.TemporaryDirectory(prefix="scillm-codex-") as tmp:
        yield Path(tmp)


async def _send(stdin: asyncio.StreamWriter, prompt: str) -> None:
    """Write the prompt and close stdin; a CLI that exits early just misses it."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(prompt.encode("utf-8"))
        await stdin.drain()
    stdin.close()


async def _tail(stream: asyncio.StreamReader) -> str:
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk
        del kept[:-_STDERR_TAIL]
    return kept.decode("utf-8", "replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
