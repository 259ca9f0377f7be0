"""Fenced code blocks in a model's reply, read in time linear in the reply's length.

A block opens with three backticks, an optional tag (letters, digits, `_`, `+`, `-`,
after spaces or tabs) and the rest of its line, and closes at the next three backticks.
The regex that read them before (`` ```[ \\t]*([\\w+-]*)[^\\n]*\\n(.*?)``` ``) let its two
header parts share characters: a reply of three backticks and 120,000 letters with no
line end took it 8 s of backtracking, on the event loop every call of the mesh shares.
"""

from __future__ import annotations

import string
from collections.abc import Iterator

__all__ = ["fenced_blocks"]

_FENCE = "```"
_TAG_CHARS = frozenset(string.ascii_letters + string.digits + "_+-")


def fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    """Each fenced block of `text` in order: (its tag, as written; its body)."""
    at = 0
    while (start := text.find(_FENCE, at)) >= 0:
        line_end = text.find("\n", start + len(_FENCE))
        if line_end < 0:
            return
        end = text.find(_FENCE, line_end + 1)
        if end < 0:
            return
        header = text[start + len(_FENCE):line_end].lstrip(" \t")
        length = 0
        while length < len(header) and header[length] in _TAG_CHARS:
            length += 1
        yield header[:length], text[line_end + 1:end]
        at = end + len(_FENCE)
