"""The `lean4` backend: `lean --json FILE` per item (`lake env lean` in a project).

Lean prints one JSON object per message::

    {"severity": "error", "pos": {"line": 3, "column": 2},
     "endPos": {"line": 3, "column": 7}, "data": "unknown identifier 'foo'", ...}

PROVED only when lean exits 0 with no error and no "declaration uses 'sorry'" warning.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._backend import probe_version
from ._process import run_once
from ._settings import ProveSettings
from ._types import BackendInfo, CheckOutcome, Diagnostic, Limits, Obligation, Verdict

__all__ = ["LeanBackend", "parse_lean_messages", "verdict_of"]

_SORRY = "declaration uses 'sorry'"

INSTRUCTIONS = """\
You write Lean 4 proofs checked by `lean`.
Reply with one fenced code block (```lean ... ```) holding a complete Lean 4 file: the
imports you need, then `theorem <name> : <statement> := by ...`. No `sorry`, `admit`
or `axiom`: the checker rejects them."""


def _position(value: Any) -> tuple[int | None, int | None]:
    if isinstance(value, dict):
        line, column = value.get("line"), value.get("column")
        return (line if isinstance(line, int) else None,
                column if isinstance(column, int) else None)
    return None, None


def parse_lean_messages(output: str) -> list[Diagnostic]:
    """Diagnostics from `lean --json` output; other lines become error messages."""
    diagnostics: list[Diagnostic] = []
    for raw in output.splitlines():
        raw = raw.strip()
        if not raw:
            continue
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError:
            diagnostics.append(Diagnostic("error", raw))
            continue
        if not isinstance(msg, dict):
            diagnostics.append(Diagnostic("error", raw))
            continue
        severity = str(msg.get("severity", "error")).lower()
        severity = "info" if severity == "information" else severity
        line, column = _position(msg.get("pos"))
        end_line, end_column = _position(msg.get("endPos"))
        diagnostics.append(Diagnostic(severity, str(msg.get("data", "")).strip(),
                                      line, column, end_line, end_column))
    return diagnostics


def verdict_of(returncode: int, diagnostics: Sequence[Diagnostic]) -> tuple[Verdict, str]:
    """PROVED only with exit 0, no error and no sorry warning."""
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        return Verdict.FAILED, errors[0].message
    if any(_SORRY in d.message for d in diagnostics):
        return Verdict.FAILED, "the proof uses sorry"
    if returncode != 0:
        return Verdict.FAILED, f"lean exited {returncode}"
    return Verdict.PROVED, "no errors, no sorry"


class LeanBackend:
    """Lean 4 behind the `Backend` interface (one process per item)."""

    name = "lean4"

    def __init__(self, settings: ProveSettings) -> None:
        self._settings = settings
        self._info: BackendInfo | None = None
        self._slots = asyncio.Semaphore(settings.lean_pool_size)

    def _argv(self, path: Path) -> list[str]:
        s = self._settings
        if s.lean_project_dir is not None:
            return [s.lake_path, "env", s.lean_path, "--json", str(path)]
        return [s.lean_path, "--json", str(path)]

    async def info(self) -> BackendInfo:
        if self._info is None:
            s = self._settings
            if s.lean_project_dir is not None and shutil.which(s.lake_path) is None:
                self._info = BackendInfo(self.name, False,
                                         reason=f"{s.lake_path!r} is not on PATH")
            else:
                self._info = await probe_version(self.name, [s.lean_path, "--version"])
        return self._info

    def source_of(self, obligation: Obligation) -> str:
        ob = obligation
        parts = [f"import {name}" for name in ob.imports]
        parts += [p.strip("\n") for p in (ob.preamble, ob.statement, ob.proof) if p.strip()]
        return "\n".join(parts) + "\n"

    def instructions(self) -> str:
        return INSTRUCTIONS

    async def check(self, obligation: Obligation, limits: Limits) -> CheckOutcome:
        source = self.source_of(obligation)
        async with self._slots:
            with tempfile.TemporaryDirectory(prefix="scillm-lean-",
                                             dir=self._settings.scratch_dir) as tmp:
                path = Path(tmp) / "Item.lean"
                path.write_text(source)
                try:
                    result = await run_once(self._argv(path), timeout_s=limits.timeout_s,
                                            memory_mb=limits.memory_mb,
                                            cwd=self._settings.lean_project_dir)
                except TimeoutError:
                    return CheckOutcome(Verdict.TIMEOUT, source,
                                        message=f"lean killed after {limits.timeout_s:g} s")
        diagnostics = parse_lean_messages(result.output)
        if result.returncode < 0 or any("out of memory" in d.message for d in diagnostics):
            return CheckOutcome(Verdict.ERROR, source, tuple(diagnostics), message=(
                f"lean crashed (exit {result.returncode}, memory limit {limits.memory_mb} MiB)"))
        verdict, message = verdict_of(result.returncode, diagnostics)
        return CheckOutcome(verdict, source, tuple(diagnostics), message=message)

    async def start(self, *, prewarm: bool) -> None:
        del prewarm  # nothing to keep warm

    async def close(self) -> None:
        """Nothing to close: each check's process is reaped (or killed) by the check."""
