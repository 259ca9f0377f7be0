"""`CodeExecutor` over CodeWorld's sandbox (`scillm.server.codeworld.sandbox.Sandbox`).

The sandbox runs Python and JavaScript. Bash runs as a Python program inside the same
sandbox that starts `bash -c` (so it has the same isolation and limits); the agent's
allowlist is checked before.

Rust and Go run the same way: a Python program in the sandbox writes the source to the
run's private directory (under the sandbox's `/tmp`), compiles it with the host's
toolchain and executes the binary. They are offered only when the toolchain was found
(`find_toolchain`) and its directory is visible in the sandbox: outside the hidden paths,
or listed in `SandboxSettings.extra_ro_binds` (bound read-only, its hidden parent stays
hidden). Limits: the whole run has the tool's wall time, and each process the run's CPU
time; compilers need far more address space than programs, so the run starts with
`RLIMIT_AS = max(limits.memory, compile_memory)` (2 GiB by default) and lowers it to
`limits.memory` (irreversibly) before it executes the binary. A compile error is a failed
result whose stderr holds the compiler's message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._code import CodeOutcome
from ._toolchains import COMPILED_LANGUAGES, Toolchain, find_toolchains

if TYPE_CHECKING:
    from ..codeworld.sandbox import Limits, Sandbox

__all__ = ["SandboxExecutor"]

_BASH_WRAPPER = """\
import subprocess, sys
done = subprocess.run([{bash!r}, "-c", {source}], env={{"PATH": "/usr/bin:/bin", "LC_ALL": "C"}})
sys.exit(done.returncode)
"""

_COMPILED_WRAPPER = """\
import os, resource, subprocess, sys
here = os.getcwd()
env = {{"PATH": {path!r}, "HOME": here, "TMPDIR": here, "LC_ALL": "C", **{env!r}}}
env.update((key, os.path.join(here, name)) for key, name in {dirs!r}.items())
with open({file!r}, "w", encoding="utf-8") as f:
    f.write({source})
built = subprocess.run({build!r}, env=env)
if built.returncode != 0:
    sys.stderr.write("compilation failed\\n")
    sys.exit(1)
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
done = subprocess.run(["./main"], env=env)
if done.returncode < 0:
    sys.stderr.write(f"killed by signal {{-done.returncode}}\\n")
    sys.exit(128 - done.returncode)
sys.exit(done.returncode)
"""


@dataclass(frozen=True)
class _Build:
    """How a compiled language is built in the run's directory (into `./main`)."""

    file: str
    #: Arguments of the compiler.
    args: tuple[str, ...]
    #: Extra environment of the compiler and the program.
    env: Mapping[str, str] = field(default_factory=dict)
    #: Environment variables naming directories created in the run's directory.
    dirs: Mapping[str, str] = field(default_factory=dict)


_BUILDS: Mapping[str, _Build] = {
    "rust": _Build("main.rs", ("--edition=2021", "-O", "-C", "codegen-units=1",
                               "-o", "main", "main.rs")),
    "go": _Build("main.go", ("build", "-p", "1", "-o", "main", "main.go"),
                 {"GOTOOLCHAIN": "local", "GOTELEMETRY": "off", "CGO_ENABLED": "0",
                  "GOFLAGS": "", "GOMAXPROCS": "2"},
                 {"GOCACHE": ".gocache", "GOPATH": ".gopath"}),
}


class SandboxExecutor:
    """Runs code tools in a started `Sandbox` (the caller owns its lifecycle)."""

    def __init__(self, sandbox: Sandbox, *, limits: Limits | None = None,
                 max_wall_s: float = 120.0, toolchains: Mapping[str, Toolchain] | None = None,
                 compile_memory: int = 2 << 30) -> None:
        """`limits` (default: the sandbox's) apply with `wall_time` set to the tool timeout.

        `toolchains` (default: `find_toolchains()`, which runs each driver once) are the
        compilers of Rust and Go; `compile_memory` is the address space a compile gets.
        """
        self._sandbox = sandbox
        self._limits = limits
        self._max_wall_s = max_wall_s
        self._bash = shutil.which("bash")
        self._toolchains = dict(find_toolchains() if toolchains is None else toolchains)
        self._compile_memory = compile_memory

    def supports(self, language: str) -> bool:
        return self.unavailable(language) is None

    def unavailable(self, language: str) -> str | None:
        """Why `language` cannot run in this sandbox; None when it can."""
        native = {str(lang) for lang in self._sandbox.languages}
        if language in ("bash", *COMPILED_LANGUAGES) and "python" not in native:
            return "the sandbox cannot run python"
        if language == "bash":
            return None if self._bash is not None else "bash is not installed"
        if language in COMPILED_LANGUAGES:
            return self._toolchain_problem(language)
        return None if language in native else f"the sandbox cannot run {language}"

    def _toolchain_problem(self, language: str) -> str | None:
        chain = self._toolchains.get(language) or Toolchain(language, reason="not looked up")
        if not chain.found or chain.root is None:
            return f"{language}: {chain.reason}"
        settings = self._sandbox.settings
        hidden = next((h for h in settings.hidden_paths if _under(chain.root, h)), None)
        if hidden is not None and not any(_under(chain.root, b)
                                          for b in settings.extra_ro_binds):
            return (f"{language}: the toolchain {chain.root} is under {hidden}, which the "
                    "sandbox hides; add it to SandboxSettings.extra_ro_binds")
        return None

    async def execute(self, language: str, source: str, *, timeout_s: float) -> CodeOutcome:
        base = self._limits or self._sandbox.settings.limits
        limits = dataclasses.replace(base, wall_time=max(0.05, min(timeout_s, self._max_wall_s)))
        wrapped = language == "bash" or language in COMPILED_LANGUAGES
        if language == "bash":
            source = _BASH_WRAPPER.format(bash=self._bash, source=json.dumps(source))
            language = "python"
        elif language in COMPILED_LANGUAGES:
            source = self._compiled(language, source, limits.memory)
            limits = dataclasses.replace(limits, memory=max(limits.memory,
                                                            self._compile_memory))
            language = "python"
        ex = await self._sandbox.run(language, source, limits=limits)
        stderr, exit_code = ex.stderr, ex.exit_code
        if wrapped and ex.error_type == "SystemExit" and ex.error_message.isdigit():
            exit_code = int(ex.error_message)  # the wrapped program's own exit status
        elif not ex.ok and ex.error_type and ex.error_message not in stderr:
            stderr = f"{stderr}{ex.error_type}: {ex.error_message}".strip()
        status = ex.status.value
        if not ex.ok and ex.reason and ex.reason != "exception" and not ex.reason.startswith(
                "exit"):
            status = f"{status} ({ex.reason})"
        return CodeOutcome(status=status, stdout=ex.stdout, stderr=stderr,
                           exit_code=exit_code, wall_s=ex.wall)

    def _compiled(self, language: str, source: str, memory: int) -> str:
        """The Python program that compiles `source` and runs the binary."""
        chain = self._toolchains[language]
        assert chain.root is not None and chain.compiler is not None
        build = _BUILDS[language]
        return _COMPILED_WRAPPER.format(
            path=f"{chain.root}/bin:/usr/bin:/bin", env=dict(build.env), dirs=dict(build.dirs),
            file=build.file, source=json.dumps(source), build=[chain.compiler, *build.args],
            memory=memory)


def _under(path: str, root: str) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
