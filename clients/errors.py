"""Errors raised by SciLLM's clients and wire translation.

    ScillmError
     ├── InvalidRequestError   a request refused before it was sent (names the parameter)
     ├── RPCError              a call that failed on the server (carries the gRPC status code,
     │                         the message and the request id)
     ├── BudgetExceeded        a batch's budget ran out before the request was sent
     ├── ModelNotAvailable     preflight: no served model matches the name (suggestions)
     └── ModelListError        preflight: the model list could not be fetched
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

__all__ = ["BudgetExceeded", "InvalidRequestError", "ModelListError", "ModelNotAvailable",
           "RPCError", "ScillmError"]


class ScillmError(Exception):
    """Base of every error SciLLM's clients raise."""


class InvalidRequestError(ScillmError):
    """The request is malformed; `param` names the offending field (OpenAI's `param`)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class RPCError(ScillmError):
    """A gRPC call failed; `code` is the canonical status code.

    The server's `google.rpc.Status` details are unpacked: `reason` and `info`
    (ErrorInfo), `param` (the first BadRequest field), `retry_after_s` (RetryInfo),
    `upstream_status` (the provider's HTTP status, when there was one).
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, request_id: str = "",
                 reason: str = "", info: dict[str, str] | None = None,
                 param: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.reason = reason
        self.info = info or {}
        self.param = param
        self.retry_after_s = retry_after_s

    @property
    def upstream_status(self) -> int | None:
        """The upstream provider's HTTP status, when the error came from one."""
        raw = self.info.get("upstream_status")
        return int(raw) if raw and raw.isdigit() else None

    @classmethod
    def from_aio(cls, err: grpc.aio.AioRpcError) -> RPCError:
        """Wrap an `AioRpcError`, unpacking its status details and request id."""
        from google.rpc import error_details_pb2, status_pb2

        request_id, reason, param, retry = "", "", None, None
        info: dict[str, str] = {}
        metadata = [*(err.initial_metadata() or ()), *(err.trailing_metadata() or ())]
        for key, value in metadata:
            if key == "x-request-id" and not request_id:
                request_id = str(value)
            elif key == "grpc-status-details-bin" and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                        ei = error_details_pb2.ErrorInfo()
                        detail.Unpack(ei)
                        reason, info = ei.reason, dict(ei.metadata)
                    elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                        br = error_details_pb2.BadRequest()
                        detail.Unpack(br)
                        if br.field_violations:
                            param = br.field_violations[0].field
                    elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        ri = error_details_pb2.RetryInfo()
                        detail.Unpack(ri)
                        retry = ri.retry_delay.ToMilliseconds() / 1000
        return cls(err.code(), err.details() or "", request_id=request_id or
                   info.get("request_id", ""), reason=reason, info=info, param=param,
                   retry_after_s=retry)


class BudgetExceeded(ScillmError):
    """A batch's budget was spent before this request was sent, so it never was."""


class ModelNotAvailable(ScillmError):
    """No model the mesh serves matches `model`; `suggestions` are close names, and
    `candidates` the names it matched equally well when it was ambiguous."""

    def __init__(self, message: str, *, model: str, suggestions: Sequence[str] = (),
                 candidates: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.model = model
        self.suggestions = list(suggestions)
        self.candidates = list(candidates)


class ModelListError(ScillmError):
    """The model list (`GET /v1/models`) could not be fetched."""
