"""Field readers the seed envelopes share.

A JSON number lands in a proto field of fixed range: `int32`, `int64`, `double`, or a
`Duration` (at most 10,000 years). One past that range raised inside the door (OverflowError,
"Value out of range") and answered 500; these readers refuse it, naming the field (400).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from google.protobuf import duration_pb2

from scillm.clients.errors import InvalidRequestError

__all__ = ["INT32", "INT64", "MAX_SECONDS", "duration", "flag", "number", "seconds", "whole"]

#: The largest value of an `int32` field.
INT32 = 2**31 - 1
#: The largest value of an `int64` field.
INT64 = 2**63 - 1
#: The longest `Duration` a proto carries (10,000 years), in seconds.
MAX_SECONDS = 315_576_000_000


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


def _checked(value: Any, param: str, low: float, high: float, what: str) -> int | float:
    """`value` when it is a JSON number (not a boolean) from `low` to `high` (never NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not low <= value <= high:
        raise InvalidRequestError(f"'{param}' must be {what} from {low:g} to {high:g}, not "
                                  f"{value!r}"[:200], param=param)
    return value


def number(value: Any, param: str, *, low: float = -sys.float_info.max,
           high: float = sys.float_info.max) -> float:
    """A `double` field: a finite number from `low` to `high`."""
    return float(_checked(value, param, low, high, "a number"))


def whole(value: Any, param: str, *, low: int = 0, high: int = INT32) -> int:
    """An integer field (`int32` by default): a number from `low` to `high`, its fraction
    dropped (JSON writes 1e9 as a float)."""
    return int(_checked(value, param, low, high, "a number"))


def seconds(value: Any, param: str) -> float:
    """A positive number of seconds, at most `MAX_SECONDS` (what a `Duration` holds)."""
    given = float(_checked(value, param, 0, MAX_SECONDS, "a number of seconds"))
    if given <= 0:
        raise InvalidRequestError(f"'{param}' must be a positive number of seconds",
                                  param=param)
    return given


def duration(value: Any, param: str) -> duration_pb2.Duration:
    """A `Duration` field: `seconds(value, param)` as one."""
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(seconds(value, param) * 1e9))
    return out
