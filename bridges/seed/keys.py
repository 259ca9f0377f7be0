"""LiteLLM's key-management bodies <-> KeyService messages.

    POST /key/generate {"key_alias", "models": [...], "duration": "30d" | "1h" | seconds,
                        "max_budget", "rpm_limit", "tpm_limit", "metadata": {...}}

LiteLLM's fields that would limit or name a key in ways these keys do not implement
(`budget_duration`, `key`, `max_parallel_requests`, per-model limits, ...) are refused,
naming them; fields that only describe a key are accepted and not kept.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from scillm.clients.errors import InvalidRequestError
from scillm.keys.v1 import keys_pb2 as pb

__all__ = ["generate_request", "info_json", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The longest Duration a proto can carry (10,000 years).
_MAX_SECONDS = 315_576_000_000
_MAX_INT = 2**63 - 1


def parse_duration(value: Any) -> float | None:
    """Seconds from `30d`, `1h`, `15m`, `45s` or a number; None for no expiry."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*",
                                                        value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise InvalidRequestError(f"duration {value!r}: use e.g. 30d, 12h, 15m or seconds",
                                  param="duration")
    if not math.isfinite(seconds) or not 0 < seconds <= _MAX_SECONDS:
        raise InvalidRequestError(f"duration must be positive and at most {_MAX_SECONDS} s",
                                  param="duration")
    return seconds


#: LiteLLM's `/key/generate` fields that limit or name a key, which SciLLM's keys do not
#: implement. Ignored, each left the caller believing in a limit (a budget reset, a cap
#: on parallel requests, per-model budgets) or a key value that did not exist; fields
#: that only describe a key (team_id, user_id, tags, ...) are accepted and not kept.
_NOT_HONOURED = {
    "key": "key values are generated: a value of your choosing cannot be set",
    "budget_duration": "budgets do not reset: max_budget is spent once",
    "soft_budget": "there are no soft budgets, only max_budget",
    "max_parallel_requests": "there is no cap on parallel requests (rpm_limit, tpm_limit "
                             "and the mesh's max_streams_per_key are)",
    "model_max_budget": "budgets are per key, not per model",
    "model_rpm_limit": "rate limits are per key, not per model",
    "model_tpm_limit": "rate limits are per key, not per model",
    "allowed_routes": "a key reaches every route its models allow",
    "permissions": "keys carry no permissions beyond their models",
    "blocked": "a key is blocked by deleting it",
    "guardrails": "there are no guardrails",
    "enforced_params": "there are no enforced parameters",
    "aliases": "there are no model aliases per key",
    "allowed_cache_controls": "every key may use the cache controls",
}


def _refuse_not_honoured(body: Mapping[str, Any]) -> None:
    for field, why in _NOT_HONOURED.items():
        if body.get(field) is not None:
            raise InvalidRequestError(f"'{field}' is not supported by SciLLM's keys: {why}",
                                      param=field)


def _whole(body: Mapping[str, Any], key: str) -> int:
    """A rate limit: a whole number (1.5 requests a minute was floored to 1)."""
    value = _number(body, key)
    if not value.is_integer():
        raise InvalidRequestError(f"'{key}' must be a whole number", param=key)
    return int(value)


def _number(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 \
            or not math.isfinite(value) or value > _MAX_INT:
        raise InvalidRequestError(f"'{key}' must be a non-negative number below 2**63",
                                  param=key)
    return float(value)


def generate_request(body: Mapping[str, Any]) -> pb.GenerateKeyRequest:
    """A GenerateKeyRequest from LiteLLM's `/key/generate` body."""
    _refuse_not_honoured(body)
    models = body.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise InvalidRequestError("'models' must be an array of model names", param="models")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise InvalidRequestError("'metadata' must be an object", param="metadata")
    alias = body.get("key_alias")
    if alias is not None and not isinstance(alias, str):
        raise InvalidRequestError("'key_alias' must be a string", param="key_alias")
    req = pb.GenerateKeyRequest(
        key_alias=alias or "", models=models,
        max_budget=_number(body, "max_budget"), rpm_limit=_whole(body, "rpm_limit"),
        tpm_limit=_whole(body, "tpm_limit"),
        # The proto's metadata holds text: a value that is not a string is kept as its
        # JSON (it was Python's repr: {'b': 1}).
        metadata={str(k): v if isinstance(v, str) else json.dumps(v)
                  for k, v in metadata.items()})
    seconds = parse_duration(body.get("duration"))
    if seconds is not None:
        req.duration.FromNanoseconds(int(seconds * 1e9))
    return req


def info_json(info: pb.VirtualKey) -> dict[str, Any]:
    """A key's description in LiteLLM's field names."""
    return {"key_id": info.key_id, "key_alias": info.key_alias, "models": list(info.models),
            "expires": info.expire_time.ToJsonString() if info.HasField("expire_time") else None,
            "max_budget": info.max_budget or None, "spend": info.spend,
            "rpm_limit": info.rpm_limit or None, "tpm_limit": info.tpm_limit or None,
            "metadata": dict(info.metadata),
            "created_at": info.create_time.ToJsonString()}
