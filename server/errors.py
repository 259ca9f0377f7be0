"""Mapping of domain errors to gRPC status codes, with `google.rpc.Status` details.

Domain packages define their own error hierarchies and know nothing of gRPC. Each
servicer module exports a table `{ErrorType: grpc.StatusCode}`; the error-mapping
interceptor looks an exception up by its class hierarchy and aborts the call with the
code, the message, and rich details (`ErrorInfo` with the request id, `BadRequest`
naming a field where the error has `param`, `RetryInfo` where it has `retry_after_s`).
Anything not in a table is INTERNAL, logged with its request id; its text is not
sent to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from scillm.clients.errors import InvalidRequestError, RPCError

from .retry_after import clamp_wait

__all__ = ["ErrorTable", "StatusError", "Unavailable", "status_for", "to_status"]

log = logging.getLogger("scillm.errors")

ErrorTable = Mapping[type[BaseException], grpc.StatusCode]

DOMAIN = "scillm.dev"


class Unavailable(Exception):
    """Something the call needs cannot be reached now (a store whose server went away):
    UNAVAILABLE with the reason, which a caller may retry, in every service."""


class StatusError(Exception):
    """Raised by servicers to abort with a specific code (validation failures mostly)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, param: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


BASE_TABLE: dict[type[BaseException], grpc.StatusCode] = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    # generated servicer bases raise it for RPCs a servicer does not override
    NotImplementedError: grpc.StatusCode.UNIMPLEMENTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: BaseException, table: ErrorTable) -> grpc.StatusCode | None:
    """The status code for `exc` by its most specific class in `table`, else None."""
    if isinstance(exc, StatusError | RPCError):
        return exc.code  # RPCError: a call to another service failed; keep its code
    for cls in type(exc).__mro__:
        code = table.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return None


def to_status(code: grpc.StatusCode, message: str, exc: BaseException | None,
              request_id: str) -> tuple[str, bytes]:
    """The message and serialized `google.rpc.Status` (for `grpc-status-details-bin`)."""
    details: list[Any] = []
    info = error_details_pb2.ErrorInfo(
        reason=type(exc).__name__ if exc is not None else code.name, domain=DOMAIN,
        metadata={"request_id": request_id})
    upstream = getattr(exc, "status", None)
    if isinstance(upstream, int):
        info.metadata["upstream_status"] = str(upstream)
    upstream_code = getattr(exc, "upstream_code", None)
    if isinstance(upstream_code, str) and upstream_code:
        info.metadata["upstream_code"] = upstream_code
    details.append(info)
    param = getattr(exc, "param", None)
    if param:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=str(param), description=message)]))
    retry_after = getattr(exc, "retry_after_s", None)
    # Clamped again here: this mapping is what reports every other failure, so no value
    # an error carries may break it (OverflowError on `inf`, ValueError past a Duration).
    wait = clamp_wait(float(retry_after)) if retry_after is not None else None
    if wait is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(wait * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    status = status_pb2.Status(code=getattr(code_pb2, code.name, code_pb2.UNKNOWN),
                               message=message, details=packed)
    return message, status.SerializeToString()
