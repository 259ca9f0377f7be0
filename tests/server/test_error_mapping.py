"""The error mapping, table by table: domain errors -> gRPC status with rich details
(server/errors.py), and gRPC status -> HTTP status and OpenAI's body
(bridges/openai/errors.py). The README's table is written out here, so that changing an
entry fails a test; the doors themselves are tested through real servers elsewhere
(test_upstream_faults.py, test_layouts.py, test_keys.py)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from scillm.bridges.openai.errors import STATUS_TABLE, error_body, from_exception
from scillm.clients.errors import InvalidRequestError, RPCError
from scillm.server.errors import BASE_TABLE, StatusError, status_for, to_status

C = grpc.StatusCode

# README, "Errors": the one gRPC -> HTTP table.
README_TABLE = {
    C.INVALID_ARGUMENT: 400, C.FAILED_PRECONDITION: 400, C.UNAUTHENTICATED: 401,
    C.PERMISSION_DENIED: 403, C.NOT_FOUND: 404, C.DEADLINE_EXCEEDED: 408,
    C.RESOURCE_EXHAUSTED: 429, C.UNIMPLEMENTED: 501, C.UNAVAILABLE: 503, C.INTERNAL: 500,
    C.UNKNOWN: 500, C.DATA_LOSS: 500, C.OUT_OF_RANGE: 400, C.ABORTED: 409,
    C.ALREADY_EXISTS: 409, C.CANCELLED: 499,
}
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 408: "timeout_error", 409: "conflict_error",
         429: "rate_limit_error", 499: "cancelled", 501: "not_implemented_error",
         503: "service_unavailable_error", 500: "api_error"}


def _rpc(code: grpc.StatusCode, **fields: object) -> RPCError:
    return RPCError(code, "it failed", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("code", list(README_TABLE))
def test_every_status_has_its_http_status_and_type(code: grpc.StatusCode) -> None:
    status, body, headers = from_exception(_rpc(code))
    assert (status, body["error"]["type"]) == (README_TABLE[code], TYPES[README_TABLE[code]])
    assert STATUS_TABLE[code] == (README_TABLE[code], TYPES[README_TABLE[code]])
    assert body["error"]["message"] == "it failed" and headers == {}
    assert body["error"]["code"] == code.name.lower() and body["error"]["param"] is None


def test_a_status_outside_the_table_is_500() -> None:
    assert set(STATUS_TABLE) == set(README_TABLE)
    status, body, _ = from_exception(_rpc(C.OK))
    assert (status, body["error"]["type"]) == (500, "api_error")


def test_an_upstream_failure_is_a_bad_gateway() -> None:
    for error in (_rpc(C.UNAVAILABLE, info={"upstream_status": "502"}),
                  _rpc(C.UNAVAILABLE, reason="UpstreamError")):
        status, body, _ = from_exception(error)
        assert (status, body["error"]["type"]) == (502, "upstream_error")
    status, _, _ = from_exception(_rpc(C.UNAVAILABLE, reason="Other"))
    assert status == 503
    status, _, _ = from_exception(_rpc(C.INTERNAL, reason="UpstreamError"))
    assert status == 500


def test_an_oversized_request_is_413_and_other_exhaustion_429() -> None:
    status, body, _ = from_exception(_rpc(C.RESOURCE_EXHAUSTED, reason="RequestTooLarge"))
    assert (status, body["error"]["type"], body["error"]["code"]) == (
        413, "invalid_request_error", "RequestTooLarge")
    status, body, _ = from_exception(_rpc(C.INVALID_ARGUMENT, reason="RequestTooLarge"))
    assert status == 400
    assert from_exception(_rpc(C.RESOURCE_EXHAUSTED, reason="KeyRateLimited"))[0] == 429


@pytest.mark.parametrize(("seconds", "header"), [(7.0, "7"), (0.2, "1"), (2.5, "2"),
                                                  (2.6, "3"), (0.0, "1")])
def test_retry_after_is_whole_seconds_at_least_one(seconds: float, header: str) -> None:
    _, _, headers = from_exception(_rpc(C.RESOURCE_EXHAUSTED, retry_after_s=seconds))
    assert headers == {"retry-after": header}


def test_codes_params_and_a_missing_model() -> None:
    _, body, _ = from_exception(_rpc(C.NOT_FOUND, reason="ModelNotFound", param="model"))
    assert body == error_body("it failed", "not_found_error", param="model",
                              code="model_not_found")
    _, body, _ = from_exception(_rpc(C.NOT_FOUND, reason="NoSuchRun"))
    assert body["error"]["code"] == "NoSuchRun"
    _, body, _ = from_exception(_rpc(C.PERMISSION_DENIED, reason="ModelNotFound"))
    assert body["error"]["code"] == "ModelNotFound"


def test_a_bad_request_found_in_the_shim_and_anything_else() -> None:
    assert from_exception(InvalidRequestError("no messages", param="messages")) == (
        400, {"error": {"message": "no messages", "type": "invalid_request_error",
                        "param": "messages", "code": None}}, {})
    assert from_exception(RuntimeError("secret detail")) == (
        500, {"error": {"message": "internal error", "type": "api_error", "param": None,
                        "code": None}}, {})


# --------------------------------------------------------------------------- gRPC side


class Domain(Exception):
    pass


class Narrower(Domain):
    pass


def test_status_for_looks_an_error_up_by_its_most_specific_class() -> None:
    table = {Domain: C.INVALID_ARGUMENT, Narrower: C.NOT_FOUND, **BASE_TABLE}
    assert status_for(Domain(), table) == C.INVALID_ARGUMENT
    assert status_for(Narrower(), table) == C.NOT_FOUND
    assert status_for(NotImplementedError(), table) == C.UNIMPLEMENTED
    assert status_for(InvalidRequestError("x"), table) == C.INVALID_ARGUMENT
    assert status_for(ValueError("x"), table) is None  # INTERNAL, never a 400
    assert status_for(StatusError(C.ABORTED, "x"), {}) == C.ABORTED
    assert status_for(_rpc(C.UNAVAILABLE), {}) == C.UNAVAILABLE  # another service's code


def _details(raw: bytes) -> tuple[status_pb2.Status, list[object]]:
    status = status_pb2.Status.FromString(raw)
    out: list[object] = []
    for packed in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest,
                     error_details_pb2.RetryInfo):
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                out.append(message)
    assert len(out) == len(status.details)
    return status, out


def test_to_status_carries_the_request_id_the_field_and_when_to_retry() -> None:
    error = StatusError(C.RESOURCE_EXHAUSTED, "slow down", param="rpm", retry_after_s=1.25)
    message, raw = to_status(C.RESOURCE_EXHAUSTED, "slow down", error, "req-1")
    status, (info, bad, retry) = _details(raw)
    assert message == "slow down" and status.message == "slow down"
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert (info.reason, info.domain, dict(info.metadata)) == (  # type: ignore[attr-defined]
        "StatusError", "scillm.dev", {"request_id": "req-1"})
    assert [(v.field, v.description) for v in bad.field_violations] == [  # type: ignore[attr-defined]
        ("rpm", "slow down")]
    assert retry.retry_delay.ToMilliseconds() == 1250  # type: ignore[attr-defined]


def test_to_status_without_an_exception_or_details() -> None:
    _, raw = to_status(C.UNAVAILABLE, "down", None, "r")
    status, details = _details(raw)
    assert status.code == code_pb2.UNAVAILABLE and len(details) == 1
    assert details[0].reason == "UNAVAILABLE"  # type: ignore[attr-defined]


def test_to_status_keeps_an_upstream_http_status() -> None:
    class Upstream(Exception):
        status = 429
        param = ""

    _, raw = to_status(C.UNAVAILABLE, "m", Upstream(), "r")
    _, details = _details(raw)
    assert dict(details[0].metadata) == {  # type: ignore[attr-defined]
        "request_id": "r", "upstream_status": "429"}
    assert len(details) == 1  # an empty param names no field

    class NotANumber(Exception):
        status = "429"

    _, raw = to_status(C.UNAVAILABLE, "m", NotANumber(), "r")
    assert "upstream_status" not in _details(raw)[1][0].metadata  # type: ignore[attr-defined]
