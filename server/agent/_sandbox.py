"""`CodeExecutor` over CodeWorld's sandbox (`scillm.server.codeworld.sandbox.Sandbox`).

The sandbox runs Python and JavaScript. Bash runs as a Python program inside the same
sandbox that starts `bash -c` (so it has the same isolation and limits); the agent's
allowlist is checked before. Go and Rust are not offered through the sandbox: their
toolchains are not visible inside it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from typing import TYPE_CHECKING

from ._code import CodeOutcome

if TYPE_CHECKING:
    from ..codeworld.sandbox import Limits, Sandbox

__all__ = ["SandboxExecutor"]

_BASH_WRAPPER = """\
import subprocess, sys
done = subprocess.run([{bash!r}, "-c", {source}], env={{"PATH": "/usr/bin:/bin", "LC_ALL": "C"}})
sys.exit(done.returncode)
"""


class SandboxExecutor:
    """Runs code tools in a started `Sandbox` (the caller owns its lifecycle)."""

    def __init__(self, sandbox: Sandbox, *, limits: Limits | None = None,
                 max_wall_s: float = 120.0) -> None:
        """`limits` (default: the sandbox's) apply with `wall_time` set to the tool timeout."""
        self._sandbox = sandbox
        self._limits = limits
        self._max_wall_s = max_wall_s
        self._bash = shutil.which("bash")

    def supports(self, language: str) -> bool:
        native = {str(lang) for lang in self._sandbox.languages}
        if language == "bash":
            return "python" in native and self._bash is not None
        return language in native

    async def execute(self, language: str, source: str, *, timeout_s: float) -> CodeOutcome:
        base = self._limits or self._sandbox.settings.limits
        limits = dataclasses.replace(base, wall_time=max(0.05, min(timeout_s, self._max_wall_s)))
        if language == "bash":
            source = _BASH_WRAPPER.format(bash=self._bash, source=json.dumps(source))
            language = "python"
        ex = await self._sandbox.run(language, source, limits=limits)
        stderr = ex.stderr
        if not ex.ok and ex.error_type and ex.error_message not in stderr:
            stderr = f"{stderr}{ex.error_type}: {ex.error_message}".strip()
        status = ex.status.value
        if not ex.ok and ex.reason and ex.reason != "exception" and not ex.reason.startswith(
                "exit"):
            status = f"{status} ({ex.reason})"
        return CodeOutcome(status=status, stdout=ex.stdout, stderr=stderr,
                           exit_code=ex.exit_code, wall_s=ex.wall)
