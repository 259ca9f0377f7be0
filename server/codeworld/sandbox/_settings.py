"""Settings of the sandbox, read once at start-up and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._limits import Limits

_GIB = 1 << 30

IsolationMode = Literal["auto", "bubblewrap", "rlimits"]


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """How the sandbox isolates and runs code.

    Attributes:
        isolation: ``"auto"`` uses bubblewrap when it works, else rlimits (+ ``unshare -n``
            when allowed); ``"bubblewrap"`` fails to start without it; ``"rlimits"``
            forces the weaker fallback.
        workers: warm workers (concurrent executions); 0 means ``os.cpu_count()``.
        limits: limits used when a call gives none.
        strict: apply the AST deny-list policy to Python sources (see ``check_policy``).
        bwrap_path, node_path, python_path: executables; ``None`` means look them up
            (``python_path`` defaults to the real path of the running interpreter, which
            runs with ``-I -S``: standard library only).
        visible_paths: host directories visible read-only inside bubblewrap besides
            ``/usr`` and its merged-/usr links (skipped when absent). Nothing else of the
            host is: the root is an allow-list, not the host's ``/`` with holes in it. The
            interpreter's and node's prefixes are bound as well.
        extra_ro_binds: more host directories bound read-only at their own path inside
            bubblewrap (e.g. a compiler's toolchain directory under ``/root``: only that
            directory is exposed, not its parent). Skipped when absent; the fallback
            isolation hides nothing, so needs none.
        base_uid: worker *i* runs code as uid/gid ``base + i`` when the host is root,
            which makes RLIMIT_NPROC effective and isolates runs from the worker; ``base``
            is the first range from ``base_uid`` (in steps of 256) that no other sandbox
            on the host holds (a lock file per range), so sandboxes never share uids.
        tmp_size: bytes of the private ``/tmp`` tmpfs of each worker (bubblewrap), where
            its runs write: the hard bound of every run's ``Limits.disk``.
        grace: seconds the host waits past ``wall_time`` before it declares a worker
            dead, kills it and starts a new one.
        start_timeout: seconds a worker may take to report ready.
        languages: the languages to offer (names of ``Language``); ``None`` offers every
            language whose toolchain is found on the host.
        typescript_path: the ``typescript`` npm package directory; ``None`` looks in
            ``.tools/node_modules`` beside the virtualenv, then the global node_modules.
        compile_limits: limits of one compile (compilers need far more memory, processes,
            files and time than the programs they build).
        compile_cache_dir: where compiled artifacts are kept (content-addressed); ``None``
            makes a private directory under /var/tmp, removed when the sandbox closes.
        compile_cache_entries: artifacts kept; the least recently used go first.
    """

    isolation: IsolationMode = "auto"
    workers: int = 0
    limits: Limits = field(default_factory=Limits)
    strict: bool = False
    bwrap_path: str | None = None
    node_path: str | None = None
    python_path: str | None = None
    visible_paths: tuple[str, ...] = ("/etc",)
    extra_ro_binds: tuple[str, ...] = ()
    base_uid: int = 61000
    tmp_size: int = 256 << 20
    grace: float = 2.0
    start_timeout: float = 15.0
    languages: tuple[str, ...] | None = None
    typescript_path: str | None = None
    compile_limits: Limits = field(default_factory=lambda: Limits(
        wall_time=60.0, cpu_time=60.0, memory=4 * _GIB, processes=256,
        file_size=256 << 20, open_files=1024, output=256 << 10, disk=1 * _GIB,
        files=100_000))
    compile_cache_dir: str | None = None
    compile_cache_entries: int = 512
