"""The outcome of one execution in the sandbox."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

JsonValue = Any
"""A value that survived ``json.loads`` (None, bool, int, float, str, list, dict)."""


class Status(enum.StrEnum):
    """How an execution ended.

    OK: the code ran to completion (and, with tests, the tests passed).
    ERROR: the code raised, exited non-zero, lacked its entry point or returned a value
        that is not JSON.
    TIMEOUT: the wall-clock or CPU limit was reached; the whole run was killed.
    KILLED: a resource limit (memory, total memory, file size, disk, files, processes)
        or a signal ended the run.
    """

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    KILLED = "killed"


class Language(enum.StrEnum):
    """Languages the sandbox runs (each when its toolchain is found; see ``Toolchain``)."""

    PYTHON = "python"
    JAVASCRIPT = "javascript"
    TYPESCRIPT = "typescript"
    C = "c"
    CPP = "cpp"
    JAVA = "java"
    RUST = "rust"
    GO = "go"


def describe_failure(reason: str, error_type: str, error_message: str, *,
                     status: str = "") -> str:
    """One line saying why an execution failed, without empty parts.

    ``describe_failure("wall_time", "", "", status="timeout")`` is
    ``"timeout (wall_time)"``; ``("exception", "KeyError", "'k'")`` is
    ``"exception: KeyError: 'k'"``.
    """
    head = f"{status} ({reason})" if status and reason and reason != status else (
        status or reason)
    return ": ".join(p for p in (head, error_type, error_message) if p) or "failed"


@dataclass(frozen=True, slots=True)
class Execution:
    """What one execution produced.

    Attributes:
        status: how it ended (see ``Status``).
        result: the entry point's return value (JSON); ``True`` when tests passed;
            ``None`` for a script or on failure.
        stdout, stderr: captured output, each capped at ``Limits.output`` bytes.
        truncated: whether stdout or stderr was cut.
        wall: seconds from fork to exit, measured inside the sandbox.
        cpu: user + system CPU seconds of the run.
        peak_memory: peak memory of the run in bytes: the larger of its first process's
            peak resident set (ru_maxrss, exact) and the peak, sampled while it ran, of
            what all its processes held together (what ``Limits.total_memory`` bounds;
            see ``_usage.py``).
        reason: a short machine-readable cause when not OK (``"wall_time"``,
            ``"cpu_time"``, ``"memory"``, ``"total_memory"``, ``"file_size"``,
            ``"disk"``, ``"files"``, ``"exception"``, ``"exit 1"``, ``"signal SIGSEGV"``,
            ``"entry_missing"``, ...); the limit's name when one stopped the run.
        error_type, error_message: the exception raised by the code, if any.
        exit_code: the process exit code, or ``-signal`` when killed by a signal.
        isolation: the isolation level the run had (see ``Sandbox.isolation``).
        overhead: host-side seconds spent beyond ``wall`` (dispatch, IPC, cleanup).
        compile_wall: seconds this call spent compiling (0 on a compile-cache hit and
            for interpreted languages).
        compiled: whether this call compiled the source (False on a compile-cache hit
            and for interpreted languages).
    """

    status: Status
    result: JsonValue = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    wall: float = 0.0
    cpu: float = 0.0
    peak_memory: int = 0
    reason: str = ""
    error_type: str = ""
    error_message: str = ""
    exit_code: int = 0
    isolation: str = ""
    overhead: float = 0.0
    compile_wall: float = 0.0
    compiled: bool = False

    @property
    def ok(self) -> bool:
        """True when the status is OK."""
        return self.status is Status.OK
