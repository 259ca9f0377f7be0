"""Batches of completions over one channel: results as they finish, under a budget.

    budget = Budget(max_tokens=50_000)
    async for result in parallel_as_completed(requests, concurrency=8, budget=budget):
        print(result.index, result.content or result.error)
    print(budget.skipped)          # indexes never sent: the budget ran out first

Requests are sent in order, at most `concurrency` at a time. A `Budget` stops the batch
from *sending* more once the tokens (or the cost, from per-model prices) of the answers
so far reach its limit; requests already in flight finish and are counted, so a batch may
overshoot by what up to `concurrency - 1` requests use. A request never sent is yielded
as a result with `skipped=True` and a `BudgetExceeded` error. With a `ModelCatalog`
(`preflight=`) each request's model is resolved before it is sent (`gpt4o` -> `gpt-4o`),
and the result says what it resolved to; a model that resolves to nothing is an error
result and is not sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from ._client import ScillmClient
from ._litellm import acompletion, default_target
from ._models import ModelCatalog, ModelResolution
from .errors import BudgetExceeded, InvalidRequestError

__all__ = ["BatchResult", "Budget", "parallel_acompletions", "parallel_as_completed"]


@dataclass(frozen=True)
class BatchResult:
    """One request's outcome: its OpenAI `chat.completion` dict, or the error."""

    index: int
    request: Mapping[str, Any]
    response: dict[str, Any] | None = None
    error: BaseException | None = None
    #: True when the budget ran out before the request was sent.
    skipped: bool = False
    #: What preflight resolved the request's model to, when a catalog was given.
    resolved: ModelResolution | None = None

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def content(self) -> str | None:
        """The first choice's text, or None."""
        if self.response is None:
            return None
        choices = self.response.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None


@dataclass
class Budget:
    """A batch's spending limit: `max_tokens` (total tokens of the answers' usage) and/or
    `max_cost_usd`, priced per model by `prices` (`{model: (USD per prompt token, USD per
    completion token)}`, every model of the batch needed). The spent amounts and the
    indexes of the requests it stopped (`skipped`) are kept here for the caller."""

    max_tokens: int | None = None
    max_cost_usd: float | None = None
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    spent_tokens: int = 0
    spent_cost_usd: float = 0.0
    skipped: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError("max_tokens must not be negative")
        if self.max_cost_usd is not None and self.max_cost_usd < 0:
            raise ValueError("max_cost_usd must not be negative")

    @property
    def exhausted(self) -> bool:
        """Whether a limit is reached: no new request may be sent."""
        return ((self.max_tokens is not None and self.spent_tokens >= self.max_tokens)
                or (self.max_cost_usd is not None
                    and self.spent_cost_usd >= self.max_cost_usd))

    def check_priced(self, models: Sequence[str]) -> None:
        """With a cost limit, refuse a batch holding a model without a price."""
        if self.max_cost_usd is None:
            return
        missing = sorted({m for m in models if m not in self.prices})
        if missing:
            raise InvalidRequestError(f"the budget's max_cost_usd needs prices for "
                                      f"{', '.join(missing)}", param="prices")

    def charge(self, model: str, usage: Mapping[str, Any] | None) -> None:
        """Count one answer's usage."""
        usage = usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        self.spent_tokens += int(usage.get("total_tokens") or prompt + completion)
        per_prompt, per_completion = self.prices.get(model, (0.0, 0.0))
        self.spent_cost_usd += prompt * per_prompt + completion * per_completion


async def parallel_as_completed(
    requests: Sequence[Mapping[str, Any]], *, concurrency: int = 8,
    budget: Budget | None = None, preflight: ModelCatalog | None = None,
    target: str | None = None, client: ScillmClient | None = None, timeout: float = 600.0,
) -> AsyncGenerator[BatchResult, None]:
    """Yield each request's `BatchResult` as it finishes (see the module docstring).

    `client` reuses an open client; else one is opened on `target` (`$SCILLM_TARGET`,
    127.0.0.1:50051) and closed at the end. Leaving the loop early cancels the requests
    in flight.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if budget is not None:
        budget.check_priced([str(r.get("model")) for r in requests])
    owned = client is None
    active = client or ScillmClient(default_target(target))

    async def one(index: int, request: Mapping[str, Any]) -> BatchResult:
        body = dict(request)
        resolved = None
        try:
            if preflight is not None:
                resolved = await preflight.resolve(str(body.get("model")))
                body["model"] = resolved.model
            model, messages = body.pop("model", None), body.pop("messages", None)
            if not isinstance(model, str) or not isinstance(messages, list):
                raise InvalidRequestError("each request needs a model and a messages list")
            reply = await acompletion(model, messages, client=active, timeout=timeout, **body)
        except Exception as exc:  # one request's failure is its result, not the batch's
            return BatchResult(index, request, error=exc, resolved=resolved)
        return BatchResult(index, request, response=reply, resolved=resolved)

    waiting = list(enumerate(requests))
    waiting.reverse()
    running: set[asyncio.Task[BatchResult]] = set()
    try:
        while waiting or running:
            while waiting and len(running) < concurrency and not (
                    budget is not None and budget.exhausted):
                running.add(asyncio.ensure_future(one(*waiting.pop())))
            if budget is not None and budget.exhausted:
                while waiting:
                    index, request = waiting.pop()
                    budget.skipped.append(index)
                    yield BatchResult(index, request, skipped=True, error=BudgetExceeded(
                        f"not sent: the budget was spent ({budget.spent_tokens} tokens, "
                        f"${budget.spent_cost_usd:.4f})"))
            if not running:
                break
            finished, running = await asyncio.wait(running,
                                                   return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(finished, key=lambda t: t.result().index):
                result = task.result()
                if budget is not None and result.response is not None:
                    budget.charge(str(result.request.get("model")),
                                  result.response.get("usage"))
                yield result
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if owned:
            await active.close()


async def parallel_acompletions(requests: Sequence[Mapping[str, Any]], *,
                                concurrency: int = 8, preserve_order: bool = True,
                                return_exceptions: bool = True, target: str | None = None,
                                timeout: float = 600.0, budget: Budget | None = None,
                                client: ScillmClient | None = None) -> list[Any]:
    """Fan out many requests (each OpenAI's request dict) over one channel, collected.

    With preserve_order the results line up with `requests`, else they come in
    completion order. With return_exceptions a failure (a `BudgetExceeded` for a request
    the budget stopped) is returned in its slot instead of raised.
    """
    results: list[BatchResult] = []
    batch = parallel_as_completed(requests, concurrency=concurrency, budget=budget,
                                  target=target, client=client, timeout=timeout)
    async with aclosing(batch):  # an error raised here cancels the requests in flight
        async for result in batch:
            if result.error is not None and not return_exceptions:
                raise result.error
            results.append(result)
    if preserve_order:
        results.sort(key=lambda r: r.index)
    return [r.response if r.error is None else r.error for r in results]
