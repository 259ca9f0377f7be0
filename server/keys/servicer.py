"""KeyService over gRPC (the interceptor has already required the master key, but for a
virtual key's GetKey of itself).

An update changes the fields its mask names, with GenerateKey's bounds; a key stored
before those bounds (more metadata or models than a key may now hold) is changed only by
an update that brings it within them. It holds for the next call authenticated with the
key (on PostgreSQL, in other processes once their cached lookup expires: see `_store`); a
call already running keeps the key as it was when the call began, but for the model
calls services make for it, which read the key afresh (`Authenticator.admit_model_call`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2

from scillm.keys.v1 import keys_pb2 as pb
from scillm.keys.v1 import keys_pb2_grpc

from ..errors import ErrorTable, StatusError
from ..names import MAX_NAME_CHARS
from ._auth import Authenticator, token_from_metadata
from ._store import KeyRecord
from .errors import (
    DuplicateKeyAlias,
    Forbidden,
    KeyRateLimited,
    KeysDisabled,
    Unauthenticated,
    UnknownKey,
)

__all__ = ["DEFAULT_PAGE_SIZE", "ERRORS", "LAST_EXPIRY_S", "MAX_KEY_MODELS",
           "MAX_METADATA_BYTES", "MAX_METADATA_ENTRIES", "MAX_PAGE_SIZE", "UPDATABLE_FIELDS",
           "KeyServicer", "record_to_proto"]

#: The latest expiry a Timestamp can carry (9999-12-31T23:59:59Z): a key expiring later
#: was stored and then could not be described (INTERNAL, its secret never returned).
LAST_EXPIRY_S = 253_402_300_799
#: A key's record is read by every call it authenticates: unbounded, one key could hold
#: megabytes of metadata or 100,000 model names, loaded and parsed per call. The bounds
#: are far above what an operator describes a key with (a team, an owner, a few tags) or
#: lets it call; bytes are those of the metadata's keys and values in UTF-8 (as stored).
MAX_METADATA_ENTRIES = 64
MAX_METADATA_BYTES = 16 * 1024
#: Model names a key may list (each at most MAX_NAME_CHARS).
MAX_KEY_MODELS = 1024
#: Keys a ListKeys page holds at most (LiteLLM's /key/list bound), and when it names none.
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 10
#: What an UpdateKey may change: the fields its `update_mask` may name (GenerateKey's).
UPDATABLE_FIELDS = ("key_alias", "models", "duration", "max_budget", "rpm_limit",
                    "tpm_limit", "metadata")


ERRORS: ErrorTable = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    KeyRateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    KeysDisabled: grpc.StatusCode.FAILED_PRECONDITION,
    UnknownKey: grpc.StatusCode.NOT_FOUND,
    # As a stored run's id asked for again: the caller chooses another.
    DuplicateKeyAlias: grpc.StatusCode.ALREADY_EXISTS,
}


def record_to_proto(record: KeyRecord) -> pb.VirtualKey:
    """A key's description, without its secret."""
    out = pb.VirtualKey(key_id=record.key_id, key_alias=record.key_alias,
                        models=list(record.models), max_budget=record.max_budget,
                        spend=record.spend, rpm_limit=record.rpm_limit,
                        tpm_limit=record.tpm_limit, metadata=record.metadata)
    out.create_time.FromNanoseconds(int(record.created_at * 1e9))
    if record.expires_at is not None:
        out.expire_time.FromNanoseconds(int(record.expires_at * 1e9))
    return out


def _metadata_problem(metadata: Mapping[str, str]) -> str | None:
    """What puts `metadata` past MAX_METADATA_ENTRIES or MAX_METADATA_BYTES, if anything."""
    if len(metadata) > MAX_METADATA_ENTRIES:
        return (f"metadata may have at most {MAX_METADATA_ENTRIES} entries (it has "
                f"{len(metadata)})")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > MAX_METADATA_BYTES:
        return (f"metadata may hold at most {MAX_METADATA_BYTES} bytes of keys and values "
                f"in UTF-8 (it holds {size})")
    return None


def _models_problem(models: Sequence[str]) -> tuple[str, str] | None:
    """The field at fault and why, when `models` lists too many or a name of no meaning."""
    if len(models) > MAX_KEY_MODELS:
        return "models", (f"models may list at most {MAX_KEY_MODELS} models (it lists "
                          f"{len(models)})")
    for i, model in enumerate(models):
        if not model or len(model) > MAX_NAME_CHARS:
            return f"models[{i}]", (f"models[{i}] must be a model name of 1 to "
                                    f"{MAX_NAME_CHARS} characters")
    return None


def _alias_problem(alias: str) -> str | None:
    if len(alias) > MAX_NAME_CHARS:
        return f"key_alias must be at most {MAX_NAME_CHARS} characters"
    return None


def _invalid(problem: str | None, param: str) -> None:
    if problem is not None:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, problem, param=param)


def _check_fields(request: pb.GenerateKeyRequest | pb.UpdateKeyRequest,
                  named: Collection[str]) -> None:
    """INVALID_ARGUMENT naming the first of the `named` fields of `request` out of bounds."""
    for name in ("max_budget", "rpm_limit", "tpm_limit"):
        # `not >= 0`: NaN too (the store then failed with INTERNAL); and no infinity
        if name in named and not 0 <= getattr(request, name) < math.inf:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{name} must be a finite number >= 0", param=name)
    if "key_alias" in named:
        _invalid(_alias_problem(request.key_alias), "key_alias")
    if "models" in named and (found := _models_problem(request.models)) is not None:
        _invalid(found[1], found[0])
    if "metadata" in named:
        _invalid(_metadata_problem(request.metadata), "metadata")


def _expiry(duration: duration_pb2.Duration) -> float:
    """When a key given `duration` from now expires; INVALID_ARGUMENT past LAST_EXPIRY_S."""
    seconds = duration.ToNanoseconds() / 1e9
    if seconds <= 0:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "duration must be positive",
                          param="duration")
    expires = time.time() + seconds
    if expires > LAST_EXPIRY_S:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                          "duration would expire the key after 9999-12-31T23:59:59Z, the "
                          "latest expiry a key can have; leave it unset for a key that never "
                          "expires", param="duration")
    return expires


def _check_stored(record: KeyRecord, named: Collection[str]) -> None:
    """FAILED_PRECONDITION when a field an update leaves as it is holds more than a key
    may now (a key stored before the bounds): the update would store it past them again,
    so it must send that field too."""
    kept: list[tuple[str, str | None]] = []
    if "metadata" not in named:
        kept.append(("metadata", _metadata_problem(record.metadata)))
    if "models" not in named:
        found = _models_problem(record.models)
        kept.append(("models", found[1] if found else None))
    if "key_alias" not in named:
        kept.append(("key_alias", _alias_problem(record.key_alias)))
    for name, problem in kept:
        if problem is not None:
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"key {record.key_id} was stored before keys were bounded and {problem}: "
                f"an update leaving {name} as it is would store it so again; send {name} "
                "in this update too, within the bounds (or cleared)", param=name)


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    """Generate, describe and revoke virtual keys."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    def _require_keys(self) -> None:
        if not self._auth.enabled:
            raise KeysDisabled("virtual keys need a master key: set SCILLM_MASTER_KEY or "
                               "general_settings.master_key in the config")

    async def GenerateKey(self, request: pb.GenerateKeyRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.GenerateKeyResponse:
        self._require_keys()
        _check_fields(request, UPDATABLE_FIELDS)
        expires = _expiry(request.duration) if request.HasField("duration") else None
        secret, record = await self._auth.store.create(
            key_alias=request.key_alias, models=tuple(request.models), expires_at=expires,
            max_budget=request.max_budget, rpm_limit=request.rpm_limit,
            tpm_limit=request.tpm_limit, metadata=dict(request.metadata))
        return pb.GenerateKeyResponse(key=secret, info=record_to_proto(record))

    async def GetKey(self, request: pb.GetKeyRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetKeyResponse:
        self._require_keys()
        # No key named: the caller's own (LiteLLM's /key/info without `key`).
        key = request.key or token_from_metadata(context.invocation_metadata()) or ""
        record = await self._auth.store.find(key) if key else None
        if record is None:
            raise UnknownKey("no such key")
        return pb.GetKeyResponse(info=record_to_proto(record))

    async def DeleteKey(self, request: pb.DeleteKeyRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.DeleteKeyResponse:
        self._require_keys()
        return pb.DeleteKeyResponse(deleted_key_ids=await self._auth.revoke(request.keys))

    async def UpdateKey(self, request: pb.UpdateKeyRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.UpdateKeyResponse:
        self._require_keys()
        named = list(dict.fromkeys(request.update_mask.paths))
        unknown = [path for path in named if path not in UPDATABLE_FIELDS]
        if not named or unknown:
            said = f"names {', '.join(map(repr, unknown))}" if unknown else "names no field"
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"update_mask {said}: an update changes some of "
                              f"{', '.join(UPDATABLE_FIELDS)}", param="update_mask")
        _check_fields(request, named)
        changes: dict[str, Any] = {}
        for name in named:
            if name == "duration":  # a new expiry from now; unset: never
                changes["expires_at"] = (_expiry(request.duration)
                                         if request.HasField("duration") else None)
            elif name == "models":
                changes["models"] = tuple(request.models)
            elif name == "metadata":
                changes["metadata"] = dict(request.metadata)
            else:
                changes[name] = getattr(request, name)
        record = await self._auth.store.find(request.key) if request.key else None
        if record is None:
            raise UnknownKey("no such key")
        _check_stored(record, named)
        updated = await self._auth.store.update(record.key_hash, **changes)
        if updated is None:  # deleted since it was found
            raise UnknownKey("no such key")
        return pb.UpdateKeyResponse(info=record_to_proto(updated))

    async def ListKeys(self, request: pb.ListKeysRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListKeysResponse:
        self._require_keys()
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"page_size must be 1 to {MAX_PAGE_SIZE} (0: "
                              f"{DEFAULT_PAGE_SIZE})", param="page_size")
        if request.page < 0:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              "page must be 1 or more (0: the first)", param="page")
        _invalid(_alias_problem(request.key_alias), "key_alias")
        size, page = request.page_size or DEFAULT_PAGE_SIZE, request.page or 1
        records, total = await self._auth.store.page(
            offset=(page - 1) * size, limit=size, key_alias=request.key_alias)
        return pb.ListKeysResponse(keys=[record_to_proto(r) for r in records],
                                   total_size=total, page=page, page_size=size)
