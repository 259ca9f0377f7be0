"""Code tools: one per language profile, run through a `CodeExecutor` (the sandbox)."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._tools import ToolOutput
from .errors import ToolArgumentsError, ToolExecutionError

__all__ = [
    "PROFILES",
    "CodeExecutor",
    "CodeOutcome",
    "CodeTool",
    "LanguageProfile",
    "available_languages",
    "check_bash",
]


@dataclass(frozen=True)
class CodeOutcome:
    """The result of running a program."""

    #: `ok`, or why it did not finish normally (`error`, `timeout`, `memory`, `killed`, ...).
    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    #: Wall-clock seconds.
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.exit_code in (0, None)


@runtime_checkable
class CodeExecutor(Protocol):
    """Runs source code in isolation: CodeWorld's sandbox, or a test double."""

    def supports(self, language: str) -> bool:
        """Whether `language` can run here (its toolchain is installed and reachable)."""

    async def execute(self, language: str, source: str, *, timeout_s: float) -> CodeOutcome:
        """Run `source` as a program in `language`; raise only if it could not be started."""


@dataclass(frozen=True)
class LanguageProfile:
    """How one language is offered as a code tool."""

    language: str
    #: Tags of fenced code blocks run by auto-run (```python).
    fence_tags: tuple[str, ...]
    #: Executables that must be on PATH for the language to be offered.
    requires: tuple[str, ...]
    #: What the tool runs, for the model.
    blurb: str

    @property
    def tool_name(self) -> str:
        return f"run_{self.language}"


PROFILES: Mapping[str, LanguageProfile] = {
    "python": LanguageProfile("python", ("python", "py", "python3"), (),
                              "a Python 3 program; print what you want to see"),
    "javascript": LanguageProfile("javascript", ("javascript", "js", "node"), ("node",),
                                  "a JavaScript program with Node.js; use console.log"),
    "bash": LanguageProfile("bash", ("bash", "sh", "shell"), ("bash",),
                            "a bash script using only allowed commands"),
    "typescript": LanguageProfile("typescript", ("typescript", "ts"), ("node",),
                                  "a TypeScript program (checked by tsc, run on Node.js); "
                                  "use console.log"),
    "c": LanguageProfile("c", ("c",), ("gcc",), "a C17 program (int main(void)) built by gcc"),
    "cpp": LanguageProfile("cpp", ("cpp", "c++", "cxx"), ("g++",),
                           "a C++17 program (int main()) built by g++"),
    "java": LanguageProfile("java", ("java",), ("javac", "java"),
                            "a Java program (a public class with main(String[]))"),
    "go": LanguageProfile("go", ("go", "golang"), ("go",),
                          "a Go program (package main, func main)"),
    "rust": LanguageProfile("rust", ("rust", "rs"), ("rustc",),
                            "a Rust program (fn main)"),
}


def available_languages(languages: tuple[str, ...],
                        which: Callable[[str], str | None] = shutil.which) -> tuple[str, ...]:
    """The languages whose toolchains are installed (python is always there)."""
    return tuple(lang for lang in languages
                 if all(which(exe) is not None for exe in PROFILES[lang].requires))


_SEPARATORS = {";", "|", "||", "&", "&&", "(", ")", "!", "{", "}", ";;"}
_LEADING_KEYWORDS = {"then", "else", "do", "if", "elif", "while", "until", "time"}
_OPAQUE_KEYWORDS = {"for", "case", "select", "function"}
_CLOSING_KEYWORDS = {"fi", "done", "esac", "in"}
_FORBIDDEN = ("`", "$(", "<(", ">(")


def _without_comments(source: str) -> str:
    """`source` without its comments as bash reads them: a `#` outside quotes that starts
    a word, to the end of its line (shlex took any `#` for one, and to the end of the
    script: `echo a#b; id` and `echo x # note` then a line `id` ran id unchecked)."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(source):
        ch = source[i]
        if quote:
            if ch == "\\" and quote == '"' and i + 1 < len(source):
                out.append(source[i:i + 2])
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch == "\\" and i + 1 < len(source):
            out.append(source[i:i + 2])
            i += 2
            continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (not out or out[-1][-1] in " \t\n;&|()<>"):
            end = source.find("\n", i)
            i = len(source) if end < 0 else end
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def check_bash(source: str, allowlist: tuple[str, ...]) -> None:
    """Raise ToolArgumentsError if the script runs a command outside `allowlist`.

    A policy check in front of the sandbox (which is the real isolation): command
    substitution is refused, and the first word of every simple command must be allowed.
    """
    for token in _FORBIDDEN:
        if token in source:
            raise ToolArgumentsError(f"bash: {token!r} is not allowed", tool="run_bash")
    lexer = shlex.shlex(_without_comments(source).replace("\n", " ; "), posix=True,
                        punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # comments are gone, bash's way; shlex's way read `a#b; id` as one
    allowed = set(allowlist)
    at_start, skipping, target = True, False, False
    try:
        words = list(lexer)
    except ValueError as exc:
        raise ToolArgumentsError(f"bash: cannot parse script: {exc}", tool="run_bash") from exc
    for word in words:
        if target:  # the file (or descriptor) of a redirection
            target = False
            continue
        if "<" in word or ">" in word:
            # A redirection's operator; its file is the next word, and the command may come
            # after both: `</dev/null id` runs id (it was taken for a file and not checked).
            target = True
            continue
        if word in _SEPARATORS or set(word) <= set(";|&()"):
            at_start, skipping = True, False
            continue
        if skipping or not at_start:
            continue
        if word in _LEADING_KEYWORDS:
            continue
        if word in _OPAQUE_KEYWORDS:
            skipping = True
            continue
        if word in _CLOSING_KEYWORDS or _is_assignment(word):
            continue
        if word not in allowed:
            raise ToolArgumentsError(f"bash: command {word!r} is not allowed; allowed: "
                                     f"{', '.join(sorted(allowed))}", tool="run_bash")
        at_start = False


def _is_assignment(word: str) -> bool:
    name, eq, _ = word.partition("=")
    return bool(eq) and name.replace("_", "a").isalnum() and not name[0].isdigit()


class CodeTool:
    """`run_<language>`: runs the `code` argument through the executor."""

    def __init__(self, profile: LanguageProfile, executor: CodeExecutor, *,
                 bash_allowlist: tuple[str, ...] = ()) -> None:
        self.profile = profile
        self._executor = executor
        self._allowlist = bash_allowlist

    @property
    def name(self) -> str:
        return self.profile.tool_name

    @property
    def description(self) -> str:
        text = f"Run {self.profile.blurb}. Returns the exit status, stdout and stderr."
        if self.profile.language == "bash":
            text += f" Allowed commands: {', '.join(sorted(self._allowlist))}."
        return text

    @property
    def parameters(self) -> Mapping[str, Any]:
        return {"type": "object", "properties": {"code": {
            "type": "string", "description": f"The {self.profile.language} source to run."}},
            "required": ["code"], "additionalProperties": False}

    async def call(self, arguments: Mapping[str, Any], *, timeout_s: float) -> ToolOutput:
        code = arguments.get("code")
        if not isinstance(code, str) or not code.strip():
            raise ToolArgumentsError(f"{self.name} needs a non-empty string argument 'code'",
                                     tool=self.name)
        return await self.run_source(code, timeout_s=timeout_s)

    async def run_source(self, code: str, *, timeout_s: float) -> ToolOutput:
        """Run source directly (auto-run of fenced blocks comes here too)."""
        if self.profile.language == "bash":
            check_bash(code, self._allowlist)
        try:
            outcome = await self._executor.execute(self.profile.language, code,
                                                   timeout_s=timeout_s)
        except ToolExecutionError:
            raise
        except Exception as exc:  # the executor's own failure, reported to the model
            raise ToolExecutionError(f"{self.name}: the sandbox failed: "
                                     f"{type(exc).__name__}: {exc}", tool=self.name) from exc
        return ToolOutput(format_outcome(outcome), is_error=not outcome.ok,
                          exit_code=outcome.exit_code, stdout=outcome.stdout,
                          stderr=outcome.stderr)


def format_outcome(outcome: CodeOutcome) -> str:
    """The outcome as text for the model (deterministic: no timings)."""
    lines = [f"status: {outcome.status}"]
    if outcome.exit_code is not None:
        lines.append(f"exit_code: {outcome.exit_code}")
    lines.append(f"stdout:\n{outcome.stdout}" if outcome.stdout else "stdout: (empty)")
    if outcome.stderr:
        lines.append(f"stderr:\n{outcome.stderr}")
    return "\n".join(lines)
