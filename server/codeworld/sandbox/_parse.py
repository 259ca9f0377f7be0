"""Reading a caller's source: every way it cannot be read is a ``SyntaxError``.

``ast.parse`` raises ``SyntaxError`` for bad syntax, but ``ValueError`` for a NUL byte and
``MemoryError`` or ``RecursionError`` for nesting past the parser's limits
(``x = ---…1``, ``1 + 1 + …``): a caller's source then failed the whole call as a bug.
"""

from __future__ import annotations

import ast


class UnreadableSource(SyntaxError):
    """Source no parser or compiler should be handed: a NUL byte, or (Python) nesting
    past the parser's limits. Unlike a syntax error, it is no program at all."""


def parse_python(source: str) -> ast.Module:
    """``ast.parse(source)``; raises ``SyntaxError`` (``UnreadableSource`` for the
    failures above) and nothing else."""
    check_readable(source)
    try:
        return ast.parse(source)
    except (MemoryError, RecursionError):
        raise UnreadableSource("source nests too deeply for the Python parser") from None


def check_readable(source: str) -> None:
    """Raise ``UnreadableSource`` for source in any language holding a NUL byte."""
    if "\x00" in source:
        raise UnreadableSource("source holds a NUL byte")
