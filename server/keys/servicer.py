"""KeyService over gRPC (the interceptor has already required the master key)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import grpc

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

__all__ = ["ERRORS", "LAST_EXPIRY_S", "MAX_KEY_MODELS", "MAX_METADATA_BYTES",
           "MAX_METADATA_ENTRIES", "KeyServicer", "record_to_proto"]

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


def _check_metadata(metadata: Mapping[str, str]) -> None:
    """INVALID_ARGUMENT naming `metadata` past MAX_METADATA_ENTRIES or MAX_METADATA_BYTES."""
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"metadata may have at most {MAX_METADATA_ENTRIES} entries (it has "
                          f"{len(metadata)})", param="metadata")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"metadata may hold at most {MAX_METADATA_BYTES} bytes of keys and "
                          f"values in UTF-8 (it holds {size})", param="metadata")


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
        for name in ("max_budget", "rpm_limit", "tpm_limit"):
            # `not >= 0`: NaN too (the store then failed with INTERNAL); and no infinity
            if not 0 <= getattr(request, name) < math.inf:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"{name} must be a finite number >= 0", param=name)
        if len(request.key_alias) > MAX_NAME_CHARS:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"key_alias must be at most {MAX_NAME_CHARS} characters",
                              param="key_alias")
        if len(request.models) > MAX_KEY_MODELS:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"models may list at most {MAX_KEY_MODELS} models (it lists "
                              f"{len(request.models)})", param="models")
        for i, model in enumerate(request.models):
            if not model or len(model) > MAX_NAME_CHARS:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"models[{i}] must be a model name of 1 to {MAX_NAME_CHARS} "
                                  "characters", param=f"models[{i}]")
        _check_metadata(request.metadata)
        expires = None
        if request.HasField("duration"):
            seconds = request.duration.ToNanoseconds() / 1e9
            if seconds <= 0:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                  "duration must be positive", param="duration")
            expires = time.time() + seconds
            if expires > LAST_EXPIRY_S:
                raise StatusError(grpc.StatusCode.INVALID_ARGUMENT,
                                  "duration would expire the key after 9999-12-31T23:59:59Z, "
                                  "the latest expiry a key can have; leave it unset for a key "
                                  "that never expires", param="duration")
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
