"""Strict mode: an AST deny-list for Python sources (opt-in, on top of the sandbox).

Rejected: importing ``os``, ``subprocess``, ``socket``, ``ctypes`` (and a few kin such as
``sys``, ``shutil``, ``multiprocessing``, ``pty``, ``signal``); calling ``eval``, ``exec``,
``compile``, ``__import__``, ``globals``, ``breakpoint``; ``open`` with a write mode; and
attribute access to dunder escape hatches (``__subclasses__``, ``__globals__``, ...).
It is a lint, not a boundary: the sandbox is the boundary.
"""

from __future__ import annotations

import ast

from ..errors import InvalidSource, PolicyViolation
from ._parse import parse_python

DENIED_MODULES = frozenset({
    "os", "subprocess", "socket", "ctypes", "sys", "shutil", "multiprocessing", "pty",
    "signal", "threading", "importlib", "builtins", "posix", "_posixsubprocess", "mmap",
    "resource", "fcntl", "asyncio", "http", "urllib", "ftplib", "telnetlib", "pathlib",
})
DENIED_CALLS = frozenset({
    "eval", "exec", "compile", "__import__", "globals", "breakpoint", "vars", "getattr",
    "setattr", "delattr", "input",
})
DENIED_ATTRIBUTES = frozenset({
    "__subclasses__", "__globals__", "__builtins__", "__code__", "__closure__", "__bases__",
    "__mro__", "__dict__", "__getattribute__", "f_globals", "f_locals", "gi_frame",
})
_WRITE_MODES = frozenset("wax+")


def check_policy(source: str, *, strategy: str | None = None) -> None:
    """Raise ``PolicyViolation`` naming the first denied construct of ``source``.

    Raises ``InvalidSource`` when the source does not parse.
    """
    try:
        tree = parse_python(source)
    except SyntaxError as exc:
        raise InvalidSource(f"syntax error: {exc}", strategy=strategy) from exc
    for node in ast.walk(tree):
        problem = _problem(node)
        if problem is not None:
            line = getattr(node, "lineno", "?")
            raise PolicyViolation(f"line {line}: {problem}", strategy=strategy)


def _problem(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] in DENIED_MODULES:
                return f"import of {alias.name} is denied"
    if isinstance(node, ast.ImportFrom) and node.module is not None:
        if node.module.split(".")[0] in DENIED_MODULES:
            return f"import from {node.module} is denied"
    if isinstance(node, ast.Attribute) and node.attr in DENIED_ATTRIBUTES:
        return f"attribute {node.attr} is denied"
    if isinstance(node, ast.Name) and node.id in DENIED_CALLS:
        return f"{node.id} is denied"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
        mode = _open_mode(node)
        if mode is None or _WRITE_MODES & set(mode):
            return "open() for writing is denied"
    return None


def _open_mode(call: ast.Call) -> str | None:
    """The literal mode of an open() call; ``None`` when it is not a literal."""
    mode: ast.expr | None = call.args[1] if len(call.args) > 1 else None
    for keyword in call.keywords:
        if keyword.arg == "mode":
            mode = keyword.value
    if mode is None:
        return "r"
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return mode.value
    return None
