"""What a check reports (`Check`, `Status`) and the helpers every kind of check uses:
a bounded run, a subprocess, a TCP connect, URL parts safe to print."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_LIVE_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "Check",
    "Job",
    "Status",
    "bounded",
    "connect",
    "done",
    "host_port",
    "installed",
    "one_line",
    "public_url",
    "run_command",
]

DEFAULT_TIMEOUT_S = 3.0
DEFAULT_LIVE_TIMEOUT_S = 15.0


class Status(StrEnum):
    """How a part stands."""

    OK = "OK"
    MISSING = "MISSING"  # not installed
    FAILED = "FAILED"  # installed or configured, but not working
    SKIPPED = "SKIPPED"  # not configured or not asked for


@dataclass(frozen=True)
class Check:
    """The readiness of one part, with a hint saying what to do when it is not OK."""

    part: str
    status: Status
    detail: str = ""
    hint: str = ""
    #: Missing, it leaves the rest ready (Lean: no toolchain is no Lean backend only);
    #: asked for by name (`--expect lean4`) it counts as any part does.
    optional: bool = False


#: A check to run (its part name and the coroutine), or one already decided.
Job = tuple[str, Awaitable[Check]] | Check


async def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run `argv`; exit code and combined output. Killed if the caller is cancelled."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace").strip()


def one_line(text: str, *, last: bool = False, width: int = 100) -> str:
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    if not lines:
        return ""
    line = lines[-1] if last else lines[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


async def bounded(part: str, check: Awaitable[Check], timeout_s: float) -> Check:
    """`check`, or FAILED when it overruns `timeout_s` or raises."""
    try:
        return await asyncio.wait_for(check, timeout_s)
    except TimeoutError:
        return Check(part, Status.FAILED, f"no answer within {timeout_s:g} s",
                     "the part hangs or the host is overloaded; rerun with --timeout")
    except Exception as exc:  # a check's own bug or an odd host: a row, not a traceback
        return Check(part, Status.FAILED, f"{type(exc).__name__}: {exc}")


async def connect(host: str, port: int) -> str | None:
    """None when host:port accepts a TCP connection, else why not."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    port = parts.port or (443 if parts.scheme == "https" else default_port)
    return parts.hostname or "127.0.0.1", port


def public_url(url: str) -> str:
    """`url` without credentials, query or fragment: safe to print."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else url


async def done(check: Check) -> Check:
    """`check`, as an awaitable (beside checks that run)."""
    return check
