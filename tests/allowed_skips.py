"""The one list of skips the suite allows: components this machine kind cannot have.

Everything else a test needs is installed by `scripts/install` (provers, bubblewrap, Redis,
PostgreSQL, the compilers of every CodeWorld language, Go included, node, chromium, the
local model), so a test that skips for any other reason hides a broken fixture or a
missing install step. `tests/conftest.py` therefore fails the session when a test skips
(or xfails) for a reason that does not come from `skip_without` below, and lists each one.

A skip allowed here reads ``missing <component>: <why this machine kind has none>``.
"""

from __future__ import annotations

import shutil

import pytest

__all__ = ["ALLOWED", "PREFIX", "allowed", "skip_without"]

#: component -> (the executable that shows it is there, why this machine kind has none).
ALLOWED: dict[str, tuple[str, str]] = {
    "lean": ("lean", "no Lean 4 toolchain installs on this machine kind (neither Debian nor "
                     "PyPI ships one); the Lean rules are tested against a stand-in `lean`"),
}

#: How an allowed skip's reason starts.
PREFIX = "missing "


def skip_without(component: str) -> None:
    """Skip the calling test when `component` (a key of `ALLOWED`) is absent here."""
    executable, why = ALLOWED[component]
    if shutil.which(executable) is None:
        pytest.skip(f"{PREFIX}{component}: {why}")


def allowed(reason: str) -> bool:
    """Whether a skip's reason is one `skip_without` gives."""
    text = reason.removeprefix("Skipped: ")
    return any(text == f"{PREFIX}{name}: {why}" for name, (_, why) in ALLOWED.items())
