"""Field readers the seed envelopes share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scillm.clients.errors import InvalidRequestError

__all__ = ["flag"]


def flag(body: Mapping[str, Any], key: str, default: bool = False, *,
         param: str | None = None) -> bool:
    """`body[key]`, a JSON boolean (`default` when absent or null). Read with bool(), the
    string "false" was true: `"auto_run_code": "false"` turned code running on."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        name = param or key
        raise InvalidRequestError(f"'{name}' must be true or false, not {value!r}"[:200],
                                  param=name)
    return value
