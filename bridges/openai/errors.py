"""OpenAI's error body and the one status table from gRPC codes to HTTP statuses."""

from __future__ import annotations

from typing import Any

import grpc
from starlette.responses import JSONResponse

from scillm.clients.errors import InvalidRequestError, RPCError

__all__ = ["STATUS_TABLE", "error_body", "error_response", "from_exception"]

#: gRPC status -> (HTTP status, OpenAI error type).
STATUS_TABLE: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (408, "timeout_error"),
    grpc.StatusCode.ABORTED: (409, "conflict_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.INTERNAL: (500, "api_error"),
    grpc.StatusCode.UNKNOWN: (500, "api_error"),
    grpc.StatusCode.DATA_LOSS: (500, "api_error"),
}


#: The mesh's reasons that OpenAI has a code of its own for, with the status they come
#: with (`UpstreamRejected`: the upstream's own code, or none).
_OPENAI_CODES: dict[str, tuple[grpc.StatusCode, str | None]] = {
    "ModelNotFound": (grpc.StatusCode.NOT_FOUND, "model_not_found"),
    "ContextWindowExceeded": (grpc.StatusCode.INVALID_ARGUMENT, "context_length_exceeded"),
    "RateLimited": (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_exceeded"),
    "UpstreamRejected": (grpc.StatusCode.INVALID_ARGUMENT, None),
}


def error_body(message: str, type_: str, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's `{"error": {...}}` body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def from_exception(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """HTTP status, OpenAI error body and extra headers for a failed call."""
    headers: dict[str, str] = {}
    if isinstance(exc, InvalidRequestError):
        return 400, error_body(exc.message, "invalid_request_error", param=exc.param), headers
    if isinstance(exc, RPCError):
        status, type_ = STATUS_TABLE.get(exc.code, (500, "api_error"))
        if exc.code == grpc.StatusCode.UNAVAILABLE and (
                exc.upstream_status is not None or exc.reason == "UpstreamError"):
            # The provider failed, answered garbage or could not be reached: bad gateway.
            status, type_ = 502, "upstream_error"
        if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED and exc.reason == "RequestTooLarge":
            status, type_ = 413, "invalid_request_error"
        if exc.code == grpc.StatusCode.ABORTED and exc.reason == "ServerShuttingDown":
            # A service cut the call at its stop's grace end (ABORTED, so that no channel
            # retries it: server/grace_end.py): the 503 this door gives its own such calls.
            status, type_ = 503, "service_unavailable_error"
        if exc.retry_after_s is not None:
            headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
        code: str | None = exc.reason or exc.code.name.lower()
        if exc.code == grpc.StatusCode.INTERNAL and exc.reason == "INTERNAL":
            code = None  # a failure nobody foresaw: OpenAI's 500 names no code
        named = _OPENAI_CODES.get(exc.reason)
        if named is not None and named[0] == exc.code:  # OpenAI's name, which clients seek
            code = named[1]
        if exc.info.get("upstream_code"):  # what the upstream said (insufficient_quota)
            code = exc.info["upstream_code"]
        return status, error_body(exc.message, type_, param=exc.param, code=code), headers
    return 500, error_body("internal error", "api_error"), headers


def error_response(exc: Exception) -> JSONResponse:
    """`from_exception` as a response: the status, OpenAI's body and the headers."""
    status, body, headers = from_exception(exc)
    return JSONResponse(body, status_code=status, headers=headers)
