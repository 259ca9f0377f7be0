"""LiteLLM's key-management bodies <-> KeyService messages.

    POST /key/generate {"key_alias", "models": [...], "duration": "30d" | "1h" | seconds,
                        "max_budget", "rpm_limit", "tpm_limit", "metadata": {...}}
    POST /key/update   {"key": <secret or key_id>, any of generate's fields}: those sent
                       change (null: back to none), the others stay
    GET  /key/list     ?page=1&size=10&key_alias=...&return_full_object=true

LiteLLM's fields that would limit or name a key in ways these keys do not implement
(`budget_duration`, `key`, `max_parallel_requests`, per-model limits, ...) are refused,
naming them; fields that only describe a key are accepted and not kept; a field LiteLLM
does not have either (`max_buget`) is refused, naming the closest known one. A limit of 0
is refused too: the proto cannot tell it from no limit (leave the field out for that).
An update refuses the same fields, and `spend` whatever its value (LiteLLM's update sets
the spend: `"spend": 0` would have been taken for a reset that did not happen).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from google.protobuf import field_mask_pb2

from scillm.clients.errors import InvalidRequestError
from scillm.keys.v1 import keys_pb2 as pb

__all__ = ["generate_request", "info_json", "list_json", "list_request", "parse_duration",
           "update_request"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The longest Duration a proto can carry (10,000 years).
_MAX_SECONDS = 315_576_000_000
_MAX_INT = 2**63 - 1
#: The latest expiry a Timestamp can carry: 9999-12-31T23:59:59Z.
_LAST_EXPIRY = 253_402_300_799


def parse_duration(value: Any) -> float | None:
    """Seconds from `30d`, `1h`, `15m`, `45s` or a number; None for no expiry (null, or
    LiteLLM's deprecated "-1")."""
    if value is None or value == "" or (isinstance(value, str) and value.strip() == "-1"):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*",
                                                        value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise InvalidRequestError(f"duration {value!r}: use e.g. 30d, 12h, 15m or seconds, "
                                  "or null for no expiry", param="duration")
    if not math.isfinite(seconds) or not 0 < seconds <= _MAX_SECONDS:
        raise InvalidRequestError(f"duration must be positive and at most {_MAX_SECONDS} s",
                                  param="duration")
    return seconds


#: The fields a key keeps.
_HONOURED = ("key_alias", "models", "duration", "max_budget", "rpm_limit", "tpm_limit",
             "metadata")
#: LiteLLM's fields that only describe a key (who it is for): accepted, not kept.
_DESCRIBING = ("user_id", "team_id", "agent_id", "organization_id", "project_id", "tags")

#: LiteLLM's `/key/generate` fields that limit or name a key, which SciLLM's keys do not
#: implement. Ignored, each left the caller believing in a limit (a budget reset, a cap
#: on parallel requests, per-model budgets) or a key value that did not exist. A value
#: that sets nothing (null, false, an empty text, list or object; LiteLLM's defaults) is
#: accepted.
_NOT_HONOURED = {
    "key": "key values are generated: a value of your choosing cannot be set",
    "spend": "a key's spend starts at 0",
    "budget_duration": "budgets do not reset: max_budget is spent once",
    "budget_limits": "budgets do not reset: max_budget is spent once",
    "budget_id": "there are no shared budgets: give the key a max_budget",
    "budget_fallbacks": "a key over its budget is refused, not sent to other models",
    "soft_budget": "there are no soft budgets, only max_budget",
    "max_parallel_requests": "there is no cap on parallel requests (rpm_limit, tpm_limit "
                             "and the mesh's max_streams_per_key are)",
    "rpm_limit_type": "rpm_limit is one kind of limit: a key's requests per minute",
    "tpm_limit_type": "tpm_limit is one kind of limit: a key's tokens per minute",
    "model_max_budget": "budgets are per key, not per model",
    "model_rpm_limit": "rate limits are per key, not per model",
    "model_tpm_limit": "rate limits are per key, not per model",
    "key_type": "keys have one type: they call their models; management needs the "
                "master key",
    "allowed_routes": "a key reaches every route its models allow",
    "allowed_passthrough_routes": "there are no passthrough routes",
    "allowed_vector_store_indexes": "there are no vector stores",
    "object_permission": "keys carry no permissions beyond their models",
    "access_group_ids": "there are no access groups: name the key's models",
    "permissions": "keys carry no permissions beyond their models",
    "blocked": "a key is blocked by deleting it",
    "guardrails": "there are no guardrails",
    "policies": "there are no policies",
    "prompts": "there are no managed prompts",
    "enforced_params": "there are no enforced parameters",
    "aliases": "there are no model aliases per key",
    "config": "there is no configuration per key",
    "router_settings": "there are no router settings per key",
    "allowed_cache_controls": "every key may use the cache controls",
    "auto_rotate": "keys are not rotated: generate a new key and delete the old one",
    "rotation_interval": "keys are not rotated: generate a new key and delete the old one",
    "send_invite_email": "no invitation e-mail is sent",
}
#: Values of a refused field that set nothing besides null, false and empty ones:
#: LiteLLM's defaults, which its clients may send.
_SETS_NOTHING: dict[str, tuple[object, ...]] = {"spend": (0,), "key_type": ("default",)}


def _sets_nothing(field: str, value: Any) -> bool:
    if value is None or value is False:
        return True
    if isinstance(value, str | list | dict) and not value:
        return True
    return not isinstance(value, bool) and value in _SETS_NOTHING.get(field, ())


def _refuse_unknown(body: Mapping[str, Any]) -> None:
    """A field no LiteLLM key has (`max_buget`, `rpm`) was dropped: a key with no limit
    came back. Each is named, with the closest field a key takes."""
    known = (*_HONOURED, *_DESCRIBING)
    unknown = [name for name in body if name not in known and name not in _NOT_HONOURED]
    if not unknown:
        return
    named = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        named.append(f"{str(name)!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise InvalidRequestError(
        f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(named)}: a key takes "
        f"{', '.join(_HONOURED)}, and LiteLLM's {', '.join(_DESCRIBING)} (not kept)",
        param=str(unknown[0]))


def _refuse_not_honoured(body: Mapping[str, Any], *, update: bool = False) -> None:
    for field, why in _NOT_HONOURED.items():
        if field == "spend" and update:
            # LiteLLM's update sets the spend: 0 is a reset there, not a default.
            if body.get(field) is not None:
                raise InvalidRequestError(
                    "'spend' is not set by an update: a key's spend is what its calls cost "
                    "(raise its max_budget, or generate a new key, for more)", param=field)
            continue
        if field in body and not _sets_nothing(field, body[field]):
            raise InvalidRequestError(f"'{field}' is not supported by SciLLM's keys: {why}",
                                      param=field)


def _limit(body: Mapping[str, Any], key: str, *, whole: bool) -> float:
    """A limit: a positive number below 2**63 (whole for a rate limit, kept exact: through
    float() a value near 2**63 became 2**63, past int64); 0 when the field is absent or
    null, which the proto reads as no limit."""
    value = body.get(key)
    if value is None:
        return 0
    # No math.isfinite: it overflows on a huge int. The comparison refuses NaN and inf.
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 <= value <= _MAX_INT:
        raise InvalidRequestError(f"'{key}' must be a positive number below 2**63",
                                  param=key)
    if value == 0:
        # LiteLLM blocks every call at 0; the proto reads 0 as no limit and cannot tell
        # it from an absent field, so the key would have had none.
        raise InvalidRequestError(
            f"'{key}' of 0: LiteLLM reads it as nothing allowed, a key as no limit, so it "
            f"is refused: leave it out (or null) for no limit, or give a positive value",
            param=key)
    if whole:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidRequestError(f"'{key}' must be a whole number", param=key)
        return int(value)
    return float(value)


def generate_request(body: Mapping[str, Any]) -> pb.GenerateKeyRequest:
    """A GenerateKeyRequest from LiteLLM's `/key/generate` body."""
    _refuse_unknown(body)
    _refuse_not_honoured(body)
    return _key_fields(body)


def update_request(body: Mapping[str, Any]) -> pb.UpdateKeyRequest:
    """An UpdateKeyRequest from LiteLLM's `/key/update` body: the key's fields it sends
    are named in the update mask (null ones too: back to none), and no others."""
    key = body.get("key")
    if not isinstance(key, str) or not key:
        raise InvalidRequestError("'key' must name the key to change: its secret or its "
                                  "key_id", param="key")
    fields = {name: value for name, value in body.items() if name != "key"}
    _refuse_unknown(fields)
    _refuse_not_honoured(fields, update=True)
    named = [name for name in _HONOURED if name in fields]
    if not named:
        raise InvalidRequestError(f"nothing to change: send at least one of "
                                  f"{', '.join(_HONOURED)} beside 'key'")
    parsed = _key_fields(fields)
    req = pb.UpdateKeyRequest(
        key=key, key_alias=parsed.key_alias, models=parsed.models,
        max_budget=parsed.max_budget, rpm_limit=parsed.rpm_limit, tpm_limit=parsed.tpm_limit,
        metadata=parsed.metadata, update_mask=field_mask_pb2.FieldMask(paths=named))
    if parsed.HasField("duration"):
        req.duration.CopyFrom(parsed.duration)
    return req


def _key_fields(body: Mapping[str, Any]) -> pb.GenerateKeyRequest:
    """A key's fields from a generate or update body, each checked (absent or null: its
    default)."""
    models = body.get("models")
    models = [] if models is None else models
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise InvalidRequestError("'models' must be an array of model names", param="models")
    metadata = body.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping):
        raise InvalidRequestError("'metadata' must be an object", param="metadata")
    alias = body.get("key_alias")
    if alias is not None and not isinstance(alias, str):
        raise InvalidRequestError("'key_alias' must be a string", param="key_alias")
    req = pb.GenerateKeyRequest(
        key_alias=alias or "", models=models,
        max_budget=_limit(body, "max_budget", whole=False),
        rpm_limit=int(_limit(body, "rpm_limit", whole=True)),
        tpm_limit=int(_limit(body, "tpm_limit", whole=True)),
        # The proto's metadata holds text: a value that is not a string is kept as its
        # JSON (it was Python's repr: {'b': 1}).
        metadata={str(k): v if isinstance(v, str) else json.dumps(v)
                  for k, v in metadata.items()})
    seconds = parse_duration(body.get("duration"))
    if seconds is not None:
        # Past 9999-12-31 the key was stored and then could not be described: a 500,
        # and a key whose secret nobody was given.
        latest = _LAST_EXPIRY - time.time()
        if seconds > latest:
            raise InvalidRequestError(
                f"duration {body.get('duration')!r} would expire the key after "
                f"9999-12-31T23:59:59Z, the latest expiry a key can have: ask for at most "
                f"{int(latest)} s, or leave duration out for a key that never expires",
                param="duration")
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


#: `GET /key/list`'s parameters (LiteLLM's that filter by what these keys do not keep, as
#: team_id or user_id, are refused: the whole list would have come back as if filtered).
_LIST_PARAMS = ("page", "size", "key_alias", "return_full_object")
#: LiteLLM's bounds: its page size is 1 to 100.
_MAX_LIST_SIZE = 100
_MAX_INT32 = 2**31 - 1


def _whole_param(params: Mapping[str, str], name: str, default: int, top: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if not re.fullmatch(r"\d{1,12}", value.strip()) or not 1 <= int(value) <= top:
        raise InvalidRequestError(f"'{name}' must be a whole number from 1 to {top}",
                                  param=name)
    return int(value)


def list_request(params: Mapping[str, str]) -> tuple[pb.ListKeysRequest, bool]:
    """A ListKeysRequest from `/key/list`'s query parameters, and whether the keys are
    wanted in full (`return_full_object`) rather than as their ids."""
    for name in params:
        if name not in _LIST_PARAMS:
            raise InvalidRequestError(
                f"unknown parameter {name!r}: /key/list takes {', '.join(_LIST_PARAMS)} "
                "(keys keep no user, team or organization to filter by)", param=name)
    full = params.get("return_full_object", "false").strip().lower()
    if full not in ("true", "false"):
        raise InvalidRequestError("'return_full_object' must be true or false",
                                  param="return_full_object")
    return pb.ListKeysRequest(page=_whole_param(params, "page", 1, _MAX_INT32),
                              page_size=_whole_param(params, "size", 10, _MAX_LIST_SIZE),
                              key_alias=params.get("key_alias", "")), full == "true"


def list_json(reply: pb.ListKeysResponse, full: bool) -> dict[str, Any]:
    """A page of keys in LiteLLM's shape: their ids (or descriptions), and the counts."""
    size = reply.page_size or 1
    return {"keys": [info_json(k) if full else k.key_id for k in reply.keys],
            "total_count": reply.total_size, "current_page": reply.page,
            "total_pages": -(-reply.total_size // size)}
