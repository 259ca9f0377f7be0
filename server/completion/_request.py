"""Checking a caller's OpenAI request and splitting off SciLLM's routing options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..names import MAX_NAME_CHARS
from . import _output
from ._settings import MAX_TTL_S
from .errors import InvalidRequest

__all__ = ["DETERMINISTIC_SEED", "MAX_RETRIES", "Options", "check", "check_model", "options",
           "upstream_body"]

DETERMINISTIC_SEED = 0
#: The most retries one call may ask for (`scillm.num_retries`, `routing.num_retries`):
#: each may sleep up to `backoff_max_s`, and the upstream pays for every one.
MAX_RETRIES = 20
_NOT_UPSTREAM = frozenset({"model", "stream", "stream_options", "scillm"})
_SCILLM_KEYS = frozenset({"fallbacks", "timeout_s", "num_retries", "cache", "deterministic"})
_CACHE_KEYS = frozenset({"bypass", "no_store", "ttl_s", "namespace", "max_age_s", "enabled"})
#: OpenAI's ranges of the sampling numbers.
_RANGES = (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0), ("presence_penalty", -2.0, 2.0),
           ("frequency_penalty", -2.0, 2.0))


@dataclass(frozen=True)
class Options:
    """The request's `scillm` routing options (None means: use the settings)."""

    fallbacks: tuple[str, ...] | None = None
    timeout_s: float | None = None
    num_retries: int | None = None
    cache_bypass: bool = False
    cache_no_store: bool = False
    cache_ttl_s: float | None = None
    cache_namespace: str | None = None
    cache_max_age_s: float | None = None
    #: True opts in to a `default_off` cache, False leaves the cache out; None: configured.
    cache_enabled: bool | None = None
    deterministic: bool = False


_NO_OPTIONS = Options()


def check_model(model: Any) -> str:
    """A model name a caller may ask for: a non-empty string of at most `MAX_NAME_CHARS`
    (a wildcard serves any name, and one of megabytes was served, memoised by the router
    and kept as a metrics label)."""
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model must be a non-empty string", param="model")
    if len(model) > MAX_NAME_CHARS:
        raise InvalidRequest(f"model names are at most {MAX_NAME_CHARS} characters",
                             param="model")
    return model


def check(request: Mapping[str, Any]) -> str:
    """Validate the fields the gateway relies on; return the model name."""
    model = check_model(request.get("model"))
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a role",
                                 param=f"messages[{i}]")
    n = request.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
        raise InvalidRequest("n must be an integer from 1 to 128", param="n")
    for key in ("max_tokens", "max_completion_tokens"):
        value = request.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise InvalidRequest(f"{key} must be a non-negative integer", param=key)
    for key, low, high in _RANGES:
        value = request.get(key)
        # `not <=`: NaN too. Checked here, on the JSON every door's request becomes, so a
        # value that came in `extra_body` (gRPC's catch-all Struct) is checked as well.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not low <= value <= high):
            raise InvalidRequest(f"{key} must be between {low:g} and {high:g}", param=key)
    if request.get("top_logprobs") is not None and not (
            type(request["top_logprobs"]) is int and 0 <= request["top_logprobs"] <= 20):
        raise InvalidRequest("top_logprobs must be between 0 and 20", param="top_logprobs")
    stop = request.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise InvalidRequest("stop must be a string or a list of strings", param="stop")
    fmt = request.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in (
            "text", "json_object", "json_schema")):
        raise InvalidRequest("response_format.type must be text, json_object or json_schema",
                             param="response_format")
    schema = _output.schema_of(fmt)
    if schema is not None:
        _output.check_schema(schema)
    return model


def options(request: Mapping[str, Any]) -> Options:
    """Parse the optional `scillm` key."""
    raw = request.get("scillm")
    if raw is None:
        return _NO_OPTIONS
    if not isinstance(raw, dict):
        raise InvalidRequest("scillm must be an object", param="scillm")
    unknown = set(raw) - _SCILLM_KEYS
    if unknown:
        raise InvalidRequest(f"unknown scillm option(s): {', '.join(sorted(unknown))}",
                             param="scillm")
    cache = raw.get("cache") or {}
    if not isinstance(cache, dict) or set(cache) - _CACHE_KEYS:
        raise InvalidRequest(f"scillm.cache takes {', '.join(sorted(_CACHE_KEYS))}",
                             param="scillm.cache")
    fallbacks = raw.get("fallbacks")
    if fallbacks is not None and not (
            isinstance(fallbacks, list) and all(isinstance(f, str) for f in fallbacks)):
        raise InvalidRequest("scillm.fallbacks must be a list of model names",
                             param="scillm.fallbacks")
    try:
        return Options(
            fallbacks=tuple(fallbacks) if fallbacks is not None else None,
            timeout_s=_positive(raw.get("timeout_s")),
            num_retries=_retries(raw.get("num_retries")),
            cache_bypass=bool(cache.get("bypass", False)),
            cache_no_store=bool(cache.get("no_store", False)),
            cache_ttl_s=_ttl(cache.get("ttl_s")),
            cache_namespace=_namespace(cache.get("namespace")),
            cache_max_age_s=_non_negative(cache.get("max_age_s")),
            cache_enabled=bool(cache["enabled"]) if cache.get("enabled") is not None else None,
            deterministic=bool(raw.get("deterministic", False)),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"bad scillm option: {exc}", param="scillm") from None


#: The longest cache namespace: it is part of every cache key a call makes.
MAX_NAMESPACE_CHARS = 256


def _namespace(value: Any) -> str | None:
    """A cache namespace: a short name of printable characters (it was any request's size,
    and every key the call made that long), or None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_NAMESPACE_CHARS \
            or not value.isprintable():
        raise InvalidRequest(f"scillm.cache.namespace must be a name of at most "
                             f"{MAX_NAMESPACE_CHARS} printable characters",
                             param="scillm.cache.namespace")
    return value


def _ttl(value: Any) -> float | None:
    """A cache entry's time to live: positive, and at most `MAX_TTL_S`."""
    ttl = _positive(value)
    if ttl is not None and ttl > MAX_TTL_S:
        raise InvalidRequest(f"scillm.cache.ttl_s must be at most {MAX_TTL_S:.0f} s (ten "
                             "years)", param="scillm.cache.ttl_s")
    return ttl


def _positive(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not 0 < number < float("inf"):  # NaN and infinity too
        raise ValueError(f"{value!r} is not a positive number")
    return number


def _retries(value: Any) -> int | None:
    """`num_retries`: a whole number of at most `MAX_RETRIES`, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise InvalidRequest(f"scillm.num_retries must be a whole number between 0 and "
                             f"{MAX_RETRIES}, not {value!r}", param="scillm.num_retries")
    return value


def _non_negative(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not number >= 0:
        raise ValueError(f"{value!r} is negative")
    return number


def upstream_body(request: Mapping[str, Any], opts: Options) -> dict[str, Any]:
    """The request as sent upstream: routing keys dropped, deterministic mode applied.

    A shallow copy: nested values are shared with the caller's request and never mutated.
    """
    body = {k: v for k, v in request.items() if k not in _NOT_UPSTREAM}
    if opts.deterministic:
        body["temperature"] = 0
        body["top_p"] = 1
        body.setdefault("seed", DETERMINISTIC_SEED)
    return body
