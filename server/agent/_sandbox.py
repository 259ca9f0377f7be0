"""`CodeExecutor` over CodeWorld's sandbox (`scillm.server.codeworld.sandbox.Sandbox`).

Every language the sandbox offers runs as a program: Python, JavaScript and TypeScript as
scripts; C, C++, Java, Rust and Go compiled inside the sandbox (once per distinct source:
the sandbox keeps a content-addressed compile cache, and the compile step has its own
time and memory limits, `SandboxSettings.compile_limits`), then executed under the tool's
limits. A compile error is a failed result whose stderr holds the compiler's message.
Bash runs as a Python program inside the same sandbox that starts `bash -c` (so it has
the same isolation and limits); the agent's allowlist is checked before.
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
        return self.unavailable(language) is None

    def unavailable(self, language: str) -> str | None:
        """Why `language` cannot run in this sandbox; None when it can."""
        chains = {str(t.language): t for t in self._sandbox.toolchains()}
        if language == "bash":
            if not chains["python"].available:
                return "the sandbox cannot run python"
            return None if self._bash is not None else "bash is not installed"
        chain = chains.get(language)
        if chain is None:
            return f"the sandbox has no language {language!r}"
        return None if chain.available else f"{language}: {chain.reason}"

    async def execute(self, language: str, source: str, *, timeout_s: float) -> CodeOutcome:
        base = self._limits or self._sandbox.settings.limits
        limits = dataclasses.replace(base, wall_time=max(0.05, min(timeout_s, self._max_wall_s)))
        wrapped = language == "bash"
        if wrapped:
            source = _BASH_WRAPPER.format(bash=self._bash, source=json.dumps(source))
            language = "python"
        ex = await self._sandbox.run(language, source, limits=limits)
        stderr, exit_code = ex.stderr, ex.exit_code
        if wrapped and ex.error_type == "SystemExit" and ex.error_message.isdigit():
            exit_code = int(ex.error_message)  # the wrapped program's own exit status
        elif not ex.ok and ex.error_type and ex.error_type != "ExitStatus" \
                and ex.error_message not in stderr:
            stderr = f"{stderr}{ex.error_type}: {ex.error_message}".strip()
        if ex.reason.startswith("compile"):
            stderr = f"compilation failed\n{stderr}"
        status = ex.status.value
        if not ex.ok and ex.reason and ex.reason != "exception" and not ex.reason.startswith(
                "exit"):
            status = f"{status} ({ex.reason})"
        return CodeOutcome(status=status, stdout=ex.stdout, stderr=stderr,
                           exit_code=exit_code, wall_s=ex.wall)
