"""Retry policy: which failures are retried, Retry-After parsing, full-jitter backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..retry_after import retry_after_s
from .errors import CompletionError, ContextWindowExceeded, UpstreamError, UpstreamTimeout

__all__ = ["RetryHooks", "backoff_delay", "is_retryable", "parse_retry_after"]

_RETRY_STATUS = frozenset({408, 409, 429})


def is_retryable(error: CompletionError) -> bool:
    """Retry 408, 409, 429, 5xx, timeouts and connection errors (status None)."""
    if isinstance(error, ContextWindowExceeded):
        return False
    if isinstance(error, UpstreamTimeout):
        return True
    if isinstance(error, UpstreamError):
        status = error.status
        return status is None or status in _RETRY_STATUS or status >= 500
    return False


def parse_retry_after(headers: Mapping[str, str],
                      now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or HTTP-date);
    read as `server/retry_after.py` reads any Retry-After (finite, at most a day)."""
    ms = retry_after_s(headers.get("retry-after-ms"), scale=0.001)
    if ms is not None:
        return ms
    return retry_after_s(headers.get("retry-after"), now())


def backoff_delay(attempt: int, rng: random.Random, *, base_s: float, max_s: float,
                  retry_after_s: float | None, min_s: float = 0.0) -> float:
    """Full-jitter exponential backoff for retry number `attempt` (0-based).

    The delay is uniform in [0, min(max_s, base_s * 2**attempt)], but never less than
    the upstream's Retry-After nor the configured minimum `min_s`.
    """
    delay = rng.uniform(0.0, min(max_s, base_s * (2 ** attempt)))
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return max(delay, min_s)


@dataclass(frozen=True)
class RetryHooks:
    """Callbacks the router calls; each gets the deployment id.

    `on_retry(deployment, attempt, delay_s, error)` before sleeping,
    `on_success(deployment, latency_s)` after a call, `on_failure(deployment, error)`
    after each failed call. Hooks must be quick and must not raise.
    """

    on_retry: Callable[[str, int, float, CompletionError], None] | None = None
    on_success: Callable[[str, float], None] | None = None
    on_failure: Callable[[str, CompletionError], None] | None = None
