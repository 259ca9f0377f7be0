"""The shell tool: `run_shell` runs one command line as argv, allowed by prefix, in the sandbox.

No shell interprets the command: it is split into words the way a POSIX shell quotes
(`shlex.split`), and the words are the program and its arguments. `|`, `;`, `>`, `$x` and
globs are ordinary characters. A command runs only when its first words equal one of the
allowed prefixes (`git status` allows `git status --short`, not `git push`); the sandbox
the code tools use is the isolation, the allowlist is the policy in front of it.

The seed's language profiles are named presets of prefixes (`SHELL_PRESETS`); `echo` is
always allowed once any prefix or preset is, as in the seed.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ._code import CodeOutcome, format_outcome
from ._tools import ToolOutput
from .errors import AgentConfigError, ToolArgumentsError, ToolExecutionError

__all__ = ["SHELL_PRESETS", "CommandExecutor", "ShellTool", "check_command", "shell_prefixes"]

#: The seed's language profiles: the commands each language's work needs.
SHELL_PRESETS: Mapping[str, tuple[str, ...]] = {
    "python": ("python", "python3"),
    "javascript": ("node", "npm", "npx"),
    "rust": ("cargo", "rustc"),
    "go": ("go",),
    "bash": ("bash", "sh"),
}

#: Allowed whenever the shell tool is on.
_ALWAYS = ("echo",)


@runtime_checkable
class CommandExecutor(Protocol):
    """Runs a program by argv in isolation (the sandbox); no shell in between."""

    async def run_command(self, argv: Sequence[str], *, timeout_s: float) -> CodeOutcome:
        """Run `argv`; raise only if it could not be started."""


def shell_prefixes(allowlist: Iterable[str], presets: Iterable[str]
                   ) -> tuple[tuple[str, ...], ...]:
    """The allowed argv prefixes; AgentConfigError for an unknown preset or an empty entry.

    Empty when neither an allowlist nor a preset is given (the tool is then not offered).
    """
    entries: list[str] = []
    for name in presets:
        if name not in SHELL_PRESETS:
            raise AgentConfigError(f"unknown shell preset {name!r}; choose from "
                                   f"{', '.join(SHELL_PRESETS)}", param="shell_presets")
        entries.extend(SHELL_PRESETS[name])
    entries.extend(allowlist)
    if not entries:
        return ()
    out: list[tuple[str, ...]] = []
    for entry in (*entries, *_ALWAYS):
        try:
            words = tuple(shlex.split(entry))
        except ValueError as exc:
            raise AgentConfigError(f"shell allowlist entry {entry!r}: {exc}",
                                   param="shell_allowlist") from exc
        if not words:
            raise AgentConfigError("a shell allowlist entry is empty", param="shell_allowlist")
        if words not in out:
            out.append(words)
    return tuple(out)


def check_command(command: str, prefixes: Sequence[tuple[str, ...]]) -> list[str]:
    """`command` split into argv; ToolArgumentsError unless it starts with an allowed prefix."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ToolArgumentsError(f"run_shell: cannot split the command: {exc}",
                                 tool="run_shell") from exc
    if not argv:
        raise ToolArgumentsError("run_shell: the command is empty", tool="run_shell")
    if not any(tuple(argv[:len(p)]) == p for p in prefixes):
        allowed = ", ".join(" ".join(p) for p in prefixes)
        raise ToolArgumentsError(f"run_shell: {shlex.join(argv[:2])!r} is not allowed; "
                                 f"commands must start with one of: {allowed}",
                                 tool="run_shell")
    return argv


class ShellTool:
    """`run_shell`: one command line, split into argv, run through a CommandExecutor."""

    name = "run_shell"

    def __init__(self, executor: CommandExecutor, prefixes: Sequence[tuple[str, ...]]) -> None:
        self._executor = executor
        self._prefixes = tuple(prefixes)

    @property
    def description(self) -> str:
        allowed = ", ".join(" ".join(p) for p in self._prefixes)
        return ("Run one command (no shell: no pipes, redirections, variables or globs; "
                "quote arguments as in a shell). Returns the exit status, stdout and "
                f"stderr. Commands must start with one of: {allowed}.")

    @property
    def parameters(self) -> Mapping[str, Any]:
        return {"type": "object", "properties": {"command": {
            "type": "string", "description": "The command line, e.g. `python3 -c 'print(1)'`."}},
            "required": ["command"], "additionalProperties": False}

    async def call(self, arguments: Mapping[str, Any], *, timeout_s: float) -> ToolOutput:
        command = arguments.get("command", arguments.get("cmd"))
        if not isinstance(command, str):
            raise ToolArgumentsError("run_shell needs a string argument 'command'",
                                     tool=self.name)
        argv = check_command(command, self._prefixes)
        try:
            outcome = await self._executor.run_command(argv, timeout_s=timeout_s)
        except Exception as exc:  # the executor's own failure, reported to the model
            raise ToolExecutionError(f"run_shell: the sandbox failed: {type(exc).__name__}: "
                                     f"{exc}", tool=self.name) from exc
        return ToolOutput(format_outcome(outcome), is_error=not outcome.ok,
                          exit_code=outcome.exit_code, stdout=outcome.stdout,
                          stderr=outcome.stderr)
