"""Resource limits of one execution, validated against documented ranges."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import InvalidLimits

_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits applied to one execution inside the sandbox.

    Attributes:
        wall_time: seconds of wall-clock time before the whole run is killed (0.05–120).
        cpu_time: seconds of CPU (RLIMIT_CPU); ``None`` means ``ceil(wall_time)`` (1–120).
        memory: bytes of address space (RLIMIT_AS) for Python (32 MiB–8 GiB). Node
            reserves virtual memory up front, so JavaScript gets ``memory`` as V8 heap
            (``--max-old-space-size``) and ``memory + 1 GiB`` of address space.
        processes: processes + threads of the run's private uid (RLIMIT_NPROC), 1–512.
            Effective only when the sandbox runs as root (each worker drops to its own
            uid); see the sandbox package docstring.
        file_size: bytes any file written may reach (RLIMIT_FSIZE), 0–1 GiB.
        open_files: open descriptors (RLIMIT_NOFILE), 8–4096.
        output: bytes kept of stdout and of stderr each; the rest is drained (0–16 MiB).
        result_size: bytes the JSON result may take (1 KiB–64 MiB).
        total_memory: bytes of memory every process of the run may hold together
            (32 MiB–16 GiB); ``None`` means twice ``memory``. RLIMIT_AS bounds each
            process only: the worker samples the whole run while it runs and kills it
            past this (reason ``"total_memory"``); see ``_usage.py`` for what is counted.
        disk: bytes the run may add to its directory (0–16 GiB); past it the run is
            killed (reason ``"disk"``). Under bubblewrap only (the worker's private
            tmpfs, whose ``SandboxSettings.tmp_size`` bounds it as well, hard).
        files: files, directories and links the run may make in its directory
            (16–1,000,000); past it the run is killed (reason ``"files"``). Under
            bubblewrap only, like ``disk``.
    """

    wall_time: float = 5.0
    cpu_time: float | None = None
    memory: int = 512 * _MIB
    processes: int = 32
    file_size: int = 16 * _MIB
    open_files: int = 64
    output: int = 64 * 1024
    result_size: int = 4 * _MIB
    total_memory: int | None = None
    disk: int = 128 * _MIB
    files: int = 10_000

    def __post_init__(self) -> None:
        _check("wall_time", self.wall_time, 0.05, 120.0)
        if self.cpu_time is not None:
            _check("cpu_time", self.cpu_time, 1.0, 120.0)
        _check("memory", self.memory, 32 * _MIB, 8192 * _MIB)
        _check("processes", self.processes, 1, 512)
        _check("file_size", self.file_size, 0, 1024 * _MIB)
        _check("open_files", self.open_files, 8, 4096)
        _check("output", self.output, 0, 16 * _MIB)
        _check("result_size", self.result_size, 1024, 64 * _MIB)
        if self.total_memory is not None:
            _check("total_memory", self.total_memory, 32 * _MIB, 16384 * _MIB)
        _check("disk", self.disk, 0, 16384 * _MIB)
        _check("files", self.files, 16, 1_000_000)

    @property
    def effective_cpu_time(self) -> int:
        """Whole seconds of CPU handed to RLIMIT_CPU."""
        return math.ceil(self.cpu_time if self.cpu_time is not None else self.wall_time)

    @property
    def effective_total_memory(self) -> int:
        """Bytes the run's processes may hold together."""
        return self.total_memory if self.total_memory is not None else 2 * self.memory

    def to_wire(self) -> dict[str, float | int]:
        """The limits as sent to a worker."""
        wire: dict[str, float | int] = {k: v for k, v in asdict(self).items() if v is not None}
        wire["cpu_time"] = self.effective_cpu_time
        wire["total_memory"] = self.effective_total_memory
        return wire


def _check(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidLimits(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise InvalidLimits(f"{name}={value!r} is outside [{_bound(low)}, {_bound(high)}]")


def _bound(value: float) -> str:
    """A range's end as written: whole numbers whole (bytes read 33554432, not 3.35544e+07)."""
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:g}"
