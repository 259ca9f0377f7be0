"""`CodeExecutor` over CodeWorld's sandbox (`scillm.server.codeworld.sandbox.Sandbox`).

Every language the sandbox offers runs as a program: Python, JavaScript and TypeScript as
scripts; C, C++, Java, Rust and Go compiled inside the sandbox (once per distinct source:
the sandbox keeps a content-addressed compile cache, and the compile step has its own
time and memory limits, `SandboxSettings.compile_limits`), then executed under the tool's
limits. A compile error is a failed result whose stderr holds the compiler's message.
Bash runs as a Python program inside the same sandbox that starts `bash -c` (so it has
the same isolation and limits); the agent's allowlist is checked before. The shell tool's
commands (`run_command`) run the same way, by argv with no shell, with the toolchains'
directories on PATH, the run's private directory as home and working directory, and the
sandbox's compile limits (toolchains reserve address space up front).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
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

_COMMAND_WRAPPER = """\
import os, subprocess, sys
argv, home = {argv}, os.getcwd()
env = {{"PATH": {path}, "HOME": home, "TMPDIR": home, "LC_ALL": "C",
       "GOCACHE": home + "/.gocache", "GOPATH": home + "/go", "CARGO_HOME": home + "/.cargo"}}
try:
    done = subprocess.run(argv, env=env)
except OSError as exc:
    print(argv[0] + ": " + str(exc.strerror), file=sys.stderr)
    sys.exit(127)
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
        if language == "bash":
            source = _BASH_WRAPPER.format(bash=self._bash, source=json.dumps(source))
            return await self._run("python", source, timeout_s, wrapped=True)
        return await self._run(language, source, timeout_s, wrapped=False)

    async def run_command(self, argv: Sequence[str], *, timeout_s: float) -> CodeOutcome:
        """Run `argv` (no shell) in the sandbox; exit code 127 when it cannot start."""
        source = _COMMAND_WRAPPER.format(argv=json.dumps(list(argv)),
                                         path=json.dumps(self._command_path()))
        # Toolchains (go, node, cargo) reserve address space up front and spawn processes:
        # commands get the compile limits, with the tool's time.
        return await self._run("python", source, timeout_s, wrapped=True,
                               base=self._sandbox.settings.compile_limits)

    def _command_path(self) -> str:
        """The directories of the host's toolchains (bound in the sandbox), then the system's."""
        dirs: list[str] = []
        for chain in self._sandbox.toolchains():
            for exe in (chain.compiler, chain.runtime):
                if chain.available and exe:
                    folder = os.path.dirname(exe)
                    if folder not in dirs:
                        dirs.append(folder)
        return ":".join([*dirs, "/usr/local/bin", "/usr/bin", "/bin"])

    async def _run(self, language: str, source: str, timeout_s: float, *,
                   wrapped: bool, base: Limits | None = None) -> CodeOutcome:
        base = base or self._limits or self._sandbox.settings.limits
        limits = dataclasses.replace(base, wall_time=max(0.05, min(timeout_s, self._max_wall_s)))
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
