"""Model names as callers choose them: how long one may be, and which configured wildcard
serves one.

A model name (a request's, a key's) and a key's alias are short: a wildcard (`echo/*`)
serves any model name, and one of megabytes was served, memoised by the router and kept as
a metrics label. A name no plain entry serves is served by the first wildcard pattern, in
config order, that matches it (`serving_pattern`): the router picks its deployments so,
and a key's spend is priced so (`keys.Prices`)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import TypeVar

__all__ = ["MAX_NAME_CHARS", "serving_pattern"]

MAX_NAME_CHARS = 256

T = TypeVar("T")


def serving_pattern(name: str, patterns: Iterable[tuple[str, T]]) -> tuple[str, T] | None:
    """The first of `patterns` ((pattern, value), in config order) that matches `name`."""
    for pattern, value in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return pattern, value
    return None
