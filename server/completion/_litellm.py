"""Any other `provider/model` through LiteLLM, when the `scillm[litellm]` extra is installed."""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator
from typing import Any

from ._provider import ProviderCall
from .errors import (
    AuthenticationError,
    CompletionError,
    ContextWindowExceeded,
    ProviderUnavailable,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = ["LiteLLMProvider"]

EXTRA = "scillm[litellm]"


class LiteLLMProvider:
    """Delegates to `litellm.acompletion`; LiteLLM is imported on first use only."""

    name = "litellm"

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._litellm: Any = None

    def _lib(self, call: ProviderCall) -> Any:
        if self._litellm is None:
            try:
                self._litellm = importlib.import_module("litellm")
            except ImportError:
                raise ProviderUnavailable(
                    f"model {call.deployment.model!r} (provider {self._kind!r}) needs the "
                    f"{EXTRA} extra: pip install '{EXTRA}'") from None
        return self._litellm

    def _kwargs(self, call: ProviderCall) -> dict[str, Any]:
        dep = call.deployment
        kwargs: dict[str, Any] = {**call.body, "model": dep.model.split("/", 1)[0] + "/"
                                  + call.model, "timeout": call.timeout_s, "num_retries": 0}
        if dep.api_base:
            kwargs["api_base"] = dep.api_base
        if dep.api_key is not None:
            kwargs["api_key"] = dep.api_key.value
        if dep.headers:
            kwargs["extra_headers"] = dict(dep.headers)
        return kwargs

    async def complete(self, call: ProviderCall) -> dict[str, Any]:
        lib = self._lib(call)
        try:
            response = await lib.acompletion(**self._kwargs(call))
        except Exception as exc:
            raise _mapped(exc, call) from exc
        data: dict[str, Any] = response.model_dump()
        return data

    async def stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        lib = self._lib(call)
        kwargs = self._kwargs(call)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
        try:
            chunks = await lib.acompletion(**kwargs)
            async for chunk in chunks:
                yield chunk.model_dump()
        except Exception as exc:
            raise _mapped(exc, call) from exc

    async def close(self) -> None:
        return None


def _mapped(exc: Exception, call: ProviderCall) -> CompletionError:
    """LiteLLM's exceptions by class name and status code (they subclass OpenAI's)."""
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    where = f"{call.deployment.id}: {name}: {exc}"
    if name == "ContextWindowExceededError":
        return ContextWindowExceeded(where, status=status)
    if name == "Timeout" or status == 408:
        return UpstreamTimeout(where, status=status)
    if status in (401, 403) or name == "AuthenticationError":
        return AuthenticationError(where)
    if status == 429:
        return RateLimited(where, status=status)
    return UpstreamError(where, status=status if isinstance(status, int) else None)
