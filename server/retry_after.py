"""Reading a `Retry-After` an upstream sent, the one way every caller of a server here does.

RFC 9110 gives `Retry-After` as delay-seconds (digits) or an HTTP date. Read with `float`,
a careless or hostile server's `inf`, `nan` or `1e400` became a wait of no end: the
deployment cooled down for good, and turning the wait into a protobuf Duration
(`RetryInfo`, the routing record) raised OverflowError, so a call that had succeeded on
another deployment answered INTERNAL. Here a value that is not a finite number of seconds
is no Retry-After at all (None), a negative one or a date in the past is 0, and any wait
is at most `MAX_RETRY_AFTER_S` (a day: a quota that resets tomorrow still cools its
deployment down until then, and a Duration always holds it).
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime

__all__ = ["MAX_RETRY_AFTER_S", "clamp_wait", "retry_after_s"]

#: The longest wait a Retry-After is taken to ask for.
MAX_RETRY_AFTER_S = 86_400.0


def clamp_wait(seconds: float) -> float | None:
    """`seconds` as a wait: None when not a finite number, else within [0, a day]."""
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def retry_after_s(value: str | None, now: float | None = None, *,
                  scale: float = 1.0) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds (times `scale`, 0.001 for
    `retry-after-ms`) or an HTTP date; None when there is none or it is not readable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return clamp_wait(float(text) * scale)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError):
        return None
    return clamp_wait(when.timestamp() - (time.time() if now is None else now))
