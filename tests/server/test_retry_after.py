"""`server/retry_after.py`: a Retry-After is a finite wait of at most a day, or none."""

from __future__ import annotations

import email.utils

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from scillm.server.completion._retry import parse_retry_after
from scillm.server.errors import StatusError, to_status
from scillm.server.retry_after import MAX_RETRY_AFTER_S, retry_after_s

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), (" 2.5 ", 2.5), ("0", 0.0), ("-5", 0.0), ("86401", MAX_RETRY_AFTER_S),
    ("1e400", None), ("inf", None), ("-inf", None), ("Infinity", None), ("nan", None),
    ("", None), ("  ", None), ("soon", None), (None, None),
    (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
    (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
    (email.utils.formatdate(NOW + 7 * 86_400, usegmt=True), MAX_RETRY_AFTER_S),
    ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_S),
])
def test_a_retry_after_is_a_finite_wait_of_at_most_a_day(value: str | None,
                                                         seconds: float | None) -> None:
    assert retry_after_s(value, NOW) == seconds


def test_retry_after_ms_first_and_an_unreadable_one_falls_back() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "nan", "retry-after": "9"}) == 9.0
    assert parse_retry_after({"retry-after-ms": "inf"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize("wait", [float("inf"), float("nan"), 1e300, -3.0])
def test_the_status_mapping_survives_any_wait_an_error_carries(wait: float) -> None:
    """`to_status` reports every failure: a wait it cannot hold must not break it."""
    exc = StatusError(grpc.StatusCode.UNAVAILABLE, "busy", retry_after_s=wait)
    message, raw = to_status(grpc.StatusCode.UNAVAILABLE, "busy", exc, "req-1")
    delays = []
    for detail in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            delays.append(info.retry_delay.ToMilliseconds())
    assert message == "busy"
    assert delays == ([] if wait != wait or wait == float("inf") else
                      [min(max(0, int(wait * 1000)), int(MAX_RETRY_AFTER_S * 1000))])
