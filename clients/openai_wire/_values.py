"""The OpenAI wire's tables (roles, finish reasons, the request keys handled) and the
checks every conversion uses on a caller's values; a bad value raises InvalidRequestError
naming the parameter."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from scillm.completion.v1 import completion_pb2 as pb

from ..errors import InvalidRequestError
from ..structs import whole_numbers

ROLES: dict[str, int] = {
    "system": pb.ROLE_SYSTEM,
    "developer": pb.ROLE_DEVELOPER,
    "user": pb.ROLE_USER,
    "assistant": pb.ROLE_ASSISTANT,
    "tool": pb.ROLE_TOOL,
}
_ROLE_NAMES = {v: k for k, v in ROLES.items()}

FINISH_REASONS: dict[str, int] = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "function_call": pb.FINISH_REASON_TOOL_CALLS,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
}
_FINISH_NAMES = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
    pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
}
_TOOL_CHOICE = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}
_TOOL_CHOICE_NAMES = {v: k for k, v in _TOOL_CHOICE.items()}
_FORMATS = {
    "text": pb.RESPONSE_FORMAT_TYPE_TEXT,
    "json_object": pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
    "json_schema": pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
}
_FORMAT_NAMES = {v: k for k, v in _FORMATS.items()}

# Request keys handled explicitly; anything else goes to extra_body.
_OPTIONAL_NUMBERS = {
    "n": int,
    "seed": int,
    "temperature": float,
    "top_p": float,
    "max_completion_tokens": int,
    "max_tokens": int,
    "top_logprobs": int,
    "presence_penalty": float,
    "frequency_penalty": float,
}
#: Integer fields wider than int32.
_INT64 = {"seed"}
_INT_BOUNDS = {32: 2**31, 64: 2**63}
#: The `scillm` routing options (and `cache` keys) the proto carries; others are refused.
_SCILLM_KEYS = frozenset({"fallbacks", "timeout_s", "num_retries", "deterministic", "cache",
                          "session_id", "track"})
_CACHE_KEYS = frozenset({"bypass", "no_store", "ttl_s", "namespace", "max_age_s", "enabled"})
#: LiteLLM's per-request cache controls (the top-level `cache` object), each a CacheOptions
#: field: no-cache → bypass, no-store → no_store, ttl, s-maxage → max_age, namespace,
#: use-cache → enabled (as is the top-level `caching` flag).
_LITELLM_CACHE_KEYS = frozenset({"no-cache", "no-store", "ttl", "s-maxage", "s-max-age",
                                 "namespace", "use-cache"})
#: google.protobuf.Duration's range, in seconds.
_MAX_DURATION_S = 315_576_000_000
_HANDLED = {
    "model", "messages", "tools", "tool_choice", "response_format", "stop", "logprobs",
    "reasoning_effort", "user", "metadata", "parallel_tool_calls", "stream",
    "stream_options", "scillm", "cache", "caching", *_OPTIONAL_NUMBERS,
}


#: The deepest nesting of objects and arrays a JSON value carried in a `Struct` may have
#: (the top level is 1). Each object level is three nested protobuf messages (Struct, its
#: map entry, Value), and protobuf's parsers stop at 100 levels: past about 30, a request
#: would fail to cross a gRPC wire; 24 leaves room for the messages around it.
MAX_JSON_DEPTH = 24


def _check_json(value: Any, param: str, depth: int = 1) -> None:
    """Refuse what a `Struct` cannot hold: NaN, infinities, integers beyond a double, and
    nesting past MAX_JSON_DEPTH."""
    if isinstance(value, Mapping | list | tuple) and depth > MAX_JSON_DEPTH:
        raise InvalidRequestError(f"'{param}' is nested more than {MAX_JSON_DEPTH} levels "
                                  "deep", param=param)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequestError(f"'{param}' holds a non-finite number", param=param)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            raise InvalidRequestError(f"'{param}' holds a number too large for a double",
                                      param=param) from None
    if isinstance(value, Mapping):
        for item in value.values():
            _check_json(item, param, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json(item, param, depth + 1)


def struct_from_json(value: Any, param: str) -> struct_pb2.Struct:
    """A JSON object as a `Struct`; InvalidRequestError naming `param` for anything a Struct
    cannot hold or a gRPC wire cannot carry (see `_check_json`)."""
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"'{param}' must be a JSON object", param=param)
    _check_json(value, param)
    out = struct_pb2.Struct()
    try:
        out.update(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequestError(f"'{param}' is not valid JSON: {exc}", param=param) from exc
    return out


def text_from_json(value: Any, param: str) -> str:
    """A JSON object as JSON text, its keys in their order and its integers whole (what a
    Struct loses); InvalidRequestError naming `param` as for `struct_from_json`."""
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"'{param}' must be a JSON object", param=param)
    _check_json(value, param)
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"'{param}' is not valid JSON: {exc}", param=param) from exc


def json_from_text(text: str, param: str) -> dict[str, Any]:
    """JSON text a caller sent for an object (`*_json` fields): the object, its keys in
    their order; InvalidRequestError naming `param` for anything else."""
    try:
        value = json.loads(text, parse_constant=_not_a_number)
    except RecursionError:
        raise InvalidRequestError(f"'{param}' is nested too deep to read",
                                  param=param) from None
    except ValueError as exc:
        raise InvalidRequestError(f"'{param}' is not valid JSON: {exc}", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"'{param}' must be a JSON object", param=param)
    _check_json(value, param)
    return value


def extras_text(source: Mapping[str, Any], known: frozenset[str], param: str | None) -> str:
    """The fields of `source` outside `known` (those the contract does not type), as JSON
    text for an `extra_json` field; "" when none. A caller's (`param` names where) must be
    JSON a Struct could hold (InvalidRequestError naming the field); an upstream's
    (`param` None) is kept when it serialises, else left out."""
    extra = {k: v for k, v in source.items() if k not in known}
    if not extra:
        return ""
    try:
        if param is not None:
            for key, value in extra.items():
                _check_json(value, f"{param}.{key}")
        return json.dumps(extra, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=param is None)
    except (ValueError, TypeError, RecursionError) as exc:
        if param is None:
            return ""
        raise InvalidRequestError(f"'{param}' holds a field that is not JSON: {exc}",
                                  param=param) from None


def add_extras(out: dict[str, Any], text: str, param: str | None = None) -> None:
    """The fields of an `extra_json` into `out`, where the typed fields are already (they
    win). A caller's unreadable text (`param` names the field) is InvalidRequestError; an
    upstream's is left out."""
    if not text:
        return
    if param is not None:
        extra = json_from_text(text, param)
    else:
        try:
            extra = json.loads(text)
        except (ValueError, RecursionError):
            return
        if not isinstance(extra, dict):
            return
    for key, value in extra.items():
        out.setdefault(key, value)


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def struct_to_json(value: struct_pb2.Struct, param: str) -> dict[str, Any]:
    """A `Struct` as JSON; InvalidRequestError naming `param` when it holds what JSON cannot
    (a NaN or infinite number: the binary wire carries one, and json_format refuses it
    with a ValueError that was an INTERNAL error)."""
    try:
        out: dict[str, Any] = whole_numbers(json_format.MessageToDict(value))
    except ValueError as exc:
        raise InvalidRequestError(f"'{param}' holds a non-finite number ({exc})",
                                  param=param) from None
    return out


def _expect(value: Any, kind: type | tuple[type, ...], param: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidRequestError(f"'{param}' must be of type {names}", param=param)
    return value


def _number(value: Any, kind: type, param: str, *, bits: int = 32) -> Any:
    """A finite number; an integer (`kind` int) must fit a signed `bits`-bit field."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"'{param}' must be a number", param=param)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequestError(f"'{param}' must be a finite number", param=param)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidRequestError(f"'{param}' must be an integer", param=param)
        number = int(value)
        if not -_INT_BOUNDS[bits] <= number < _INT_BOUNDS[bits]:
            raise InvalidRequestError(f"'{param}' is out of range", param=param)
        return number
    try:
        return float(value)
    except OverflowError:
        raise InvalidRequestError(f"'{param}' is out of range", param=param) from None


def _seconds(value: Any, param: str) -> int:
    """Seconds (a finite number within a Duration's range) as whole milliseconds."""
    seconds = _number(value, float, param)
    if abs(seconds) > _MAX_DURATION_S:
        raise InvalidRequestError(f"'{param}' is out of range", param=param)
    return int(seconds * 1000)


def _duration(value: Any, param: str, *, positive: bool) -> int:
    ms = _seconds(value, param)
    if ms < 0 or (positive and ms == 0):
        kind = "positive" if positive else "non-negative"
        raise InvalidRequestError(f"'{param}' must be a {kind} number of seconds", param=param)
    return ms


def json_dumps(value: Any) -> str:
    """Compact JSON, the one encoder every wire format here uses."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
