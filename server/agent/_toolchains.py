"""Compiled-language toolchains of the code tools: found by CodeWorld's sandbox.

The sandbox looks for each compiler once, binds its tree read-only when it lives under a
hidden home (rustup's ``~/.rustup``), compiles sources inside the sandbox and caches the
artifacts by content (see ``scillm.server.codeworld.sandbox``). This module names the
languages and offers the lookup on its own, for callers that want to know before a
sandbox exists.
"""

from __future__ import annotations

import os
import shutil
import sys

from ..codeworld.sandbox import Language, Toolchain
from ..codeworld.sandbox._toolchains import find_toolchain

__all__ = ["COMPILED_LANGUAGES", "Toolchain", "find_toolchains"]

#: Languages compiled in the sandbox before they run.
COMPILED_LANGUAGES: tuple[str, ...] = ("typescript", "c", "cpp", "java", "rust", "go")


def find_toolchains(languages: tuple[str, ...] = COMPILED_LANGUAGES) -> dict[str, Toolchain]:
    """Each language's toolchain on this host (``.available``, or ``.reason`` why not)."""
    python, node = os.path.realpath(sys.executable), shutil.which("node")
    return {lang: find_toolchain(Language(lang), python=python, node=node)
            for lang in languages}
