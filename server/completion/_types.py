"""Results of the Completion engine: a finished completion, or a stream of events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CacheStats", "Completed", "RetryStats", "Routing", "StreamChunk", "StreamEnd",
           "StreamEvent"]


@dataclass
class RetryStats:
    """The HTTP requests one provider call made, for providers that retry on their own.

    `statuses` holds each request's HTTP status in order, 0 for a transport error;
    `first_failure_status` is None when no request failed.
    """

    attempts: int = 0
    failures: int = 0
    total_sleep_s: float = 0.0
    final_status: int = 0
    first_failure_status: int | None = None
    statuses: list[int] = field(default_factory=list)


@dataclass
class Routing:
    """How a request was served.

    `deployment` is the id of the deployment that answered, `provider` its kind
    (`echo`, `openai`, `anthropic`, `local`, `litellm`, or `cache`). `fallback_model`
    is the model name that answered when `fallback_used`, else "". `attempts` counts
    upstream calls (retries included), `total_sleep_s` the backoff slept, and
    `last_retry_after_s` the last Retry-After the upstream sent. `retry_stats` is set by
    a provider that retries inside its own call (codex-agent), for the call that
    answered or failed last.
    """

    deployment: str = ""
    provider: str = ""
    fallback_used: bool = False
    fallback_model: str = ""
    attempts: int = 0
    total_sleep_s: float = 0.0
    last_retry_after_s: float | None = None
    strategy: str = ""
    #: Seconds spent waiting on upstream calls (retry sleeps excluded), for the overhead.
    upstream_s: float = 0.0
    retry_stats: RetryStats | None = None


@dataclass
class Completed:
    """A finished completion: an OpenAI `chat.completion` object and how it was made.

    `json_valid` is None unless the request asked for JSON (`response_format`), then
    whether the first choice's content parsed (and matched the schema, if one was given).
    `cache_lookup` says whether the response cache was consulted at all.
    """

    response: dict[str, Any]
    routing: Routing
    cache_hit: bool
    json_valid: bool | None
    cache_lookup: bool = False


@dataclass
class StreamChunk:
    """One OpenAI `chat.completion.chunk` object."""

    chunk: dict[str, Any]


@dataclass
class StreamEnd:
    """The last event of every stream: usage (when the upstream reported it) and routing.

    `cache_lookup` says whether the response cache was consulted at all.
    """

    usage: dict[str, Any] | None
    routing: Routing
    cache_hit: bool
    json_valid: bool | None = None
    cache_lookup: bool = False


StreamEvent = StreamChunk | StreamEnd
"""What `CompletionEngine.stream` yields: chunks, then exactly one `StreamEnd`."""


@dataclass(frozen=True)
class CacheStats:
    """Counters of the response cache since the engine started."""

    hits: int
    misses: int
    stores: int
    backend: str
