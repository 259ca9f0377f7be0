"""The codex-agent provider (`codex-agent/<model>`): a Codex sidecar over OpenAI's wire.

A Codex sidecar (`scillm codex-sidecar`, or the seed's) is an OpenAI-compatible server in
front of the Codex CLI. Per call this provider

- POSTs `<base>/v1/chat/completions`, `<base>` being the deployment's `api_base`, else
  `$CODEX_AGENT_API_BASE` (resolved with the settings; a trailing `/v1` is tolerated);
- sends a fresh `X-Codex-Session` (its own retries share it) and, when the deployment is
  configured so (`force_local: true`, or `CODEX_AGENT_FORCE_LOCAL=1`),
  `X-Codex-Force-Local: 1`, which makes a forwarding sidecar run the CLI itself;
- copies `reasoning_effort` into `reasoning: {effort}` (a `reasoning` object of the
  caller's keeps its own effort), passes `response_format` through, and keeps the system
  messages plus the last 8 others, so a long conversation does not rot the agent's
  context;
- retries a 5xx answer or a transport error itself, up to `retries` times, with
  full-jitter backoff (uniform in [0, min(1.5 s, 0.12 s * 2**n)], never less than a
  Retry-After), drawn from `random.Random(seed)` when the request carries a `seed` (so a
  deterministic request sleeps the same each time). A 429 is not retried here: the router
  handles it. What it did is the routing record's `retry_stats`.

The HTTP itself (pooled connections, SSE, error mapping) is the OpenAI provider's.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx

from ._openai import OpenAIProvider
from ._provider import ProviderCall
from ._retry import backoff_delay
from ._types import RetryStats
from .errors import (
    AuthenticationError,
    CompletionError,
    ContextWindowExceeded,
    ProviderUnavailable,
    UpstreamError,
)

__all__ = ["MAX_HISTORY", "CodexAgentProvider", "keep_recent", "sidecar_base"]

#: Messages kept besides the system messages.
MAX_HISTORY = 8
RETRIES = 2
BACKOFF_BASE_S = 0.12
BACKOFF_MAX_S = 1.5


def sidecar_base(api_base: str) -> str:
    """The sidecar's root URL: `api_base` without trailing slashes and `/v1`."""
    base = api_base.strip().rstrip("/")
    return base[:-3].rstrip("/") if base.endswith("/v1") else base


def keep_recent(messages: list[Any], limit: int = MAX_HISTORY) -> list[Any]:
    """The system messages, in place, and the last `limit` others."""
    others = [m for m in messages if not _is_system(m)]
    if len(others) <= limit:
        return messages
    keep = {id(m) for m in others[-limit:]} if limit > 0 else set()
    return [m for m in messages if _is_system(m) or id(m) in keep]


def _is_system(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") in ("system", "developer")


def _body(body: dict[str, Any]) -> dict[str, Any]:
    out = dict(body)
    messages = body.get("messages")
    if isinstance(messages, list):
        out["messages"] = keep_recent(messages)
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort:
        reasoning = body.get("reasoning")
        out["reasoning"] = ({"effort": effort, **reasoning} if isinstance(reasoning, dict)
                            else {"effort": effort})
    return out


def _rng(body: dict[str, Any]) -> random.Random:
    seed = body.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return random.Random(seed)
    return random.Random()


class CodexAgentProvider:
    """OpenAI's wire to a Codex sidecar, with its own retries; see the module docstring."""

    name = "codex-agent"

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *,
                 retries: int = RETRIES,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._inner = OpenAIProvider(transport)
        self._retries = retries
        self._sleep = sleep

    def _prepare(self, call: ProviderCall) -> tuple[ProviderCall, RetryStats]:
        dep = call.deployment
        if not dep.api_base:
            raise ProviderUnavailable(
                f"deployment {dep.id} ({dep.model}) has no Codex sidecar: set api_base in "
                f"its litellm_params or CODEX_AGENT_API_BASE (`scillm codex-sidecar` "
                f"starts one)")
        headers = (*dep.headers, ("X-Codex-Session", uuid.uuid4().hex))
        sidecar = replace(dep, api_base=f"{sidecar_base(dep.api_base)}/v1", headers=headers)
        stats = RetryStats()
        if call.routing is not None:
            call.routing.retry_stats = stats
        return replace(call, deployment=sidecar, body=_body(call.body)), stats

    async def _after_failure(self, exc: CompletionError, stats: RetryStats, attempt: int,
                             rng: random.Random) -> None:
        """Record a failed request; sleep before the next one, or raise `exc`."""
        status = exc.status if isinstance(exc, UpstreamError | AuthenticationError) else None
        code = status or 0
        stats.attempts += 1
        stats.failures += 1
        stats.statuses.append(code)
        stats.final_status = code
        if stats.first_failure_status is None:
            stats.first_failure_status = code
        retryable = (isinstance(exc, UpstreamError) and not isinstance(exc, ContextWindowExceeded)
                     and (status is None or status >= 500))
        if not retryable or attempt >= self._retries:
            raise exc
        delay = backoff_delay(attempt, rng, base_s=BACKOFF_BASE_S, max_s=BACKOFF_MAX_S,
                              retry_after_s=exc.retry_after_s
                              if isinstance(exc, UpstreamError) else None)
        stats.total_sleep_s += delay
        await self._sleep(delay)

    @staticmethod
    def _answered(stats: RetryStats) -> None:
        stats.attempts += 1
        stats.statuses.append(200)
        stats.final_status = 200

    async def complete(self, call: ProviderCall) -> dict[str, Any]:
        prepared, stats = self._prepare(call)
        rng = _rng(call.body)
        attempt = 0
        while True:
            try:
                response = await self._inner.complete(prepared)
            except (UpstreamError, AuthenticationError) as exc:
                await self._after_failure(exc, stats, attempt, rng)
                attempt += 1
                continue
            self._answered(stats)
            return response

    async def stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        """Retries happen before the first chunk only; a failure after it is raised."""
        prepared, stats = self._prepare(call)
        rng = _rng(call.body)
        attempt = 0
        while True:
            chunks = self._inner.stream(prepared)
            try:
                first = await anext(chunks, None)
            except (UpstreamError, AuthenticationError) as exc:
                await chunks.aclose()
                await self._after_failure(exc, stats, attempt, rng)
                attempt += 1
                continue
            except BaseException:
                await chunks.aclose()
                raise
            break
        self._answered(stats)
        try:
            if first is not None:
                yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    async def close(self) -> None:
        await self._inner.close()
