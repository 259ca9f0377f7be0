"""Any other `provider/model` through LiteLLM, when the `scillm[litellm]` extra is installed."""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncGenerator
from typing import Any

from ._provider import ProviderCall, without_secret
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

#: What a caller's request may hand to `litellm.acompletion`: OpenAI's chat parameters.
#: Anything else (api_base, base_url, api_key, extra_headers, custom_llm_provider, ...)
#: would let a caller send the operator's key, or the request, where they like.
PASSED = frozenset({
    "messages", "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "user", "tools", "tool_choice", "parallel_tool_calls", "response_format", "seed",
    "reasoning_effort", "modalities", "prediction", "audio", "service_tier", "store",
})
#: What a caller's request may hand to `litellm.aembedding` (as `PASSED`).
EMBEDDING_PASSED = frozenset({"input", "dimensions", "user"})
#: What a caller's request may hand to `litellm.atext_completion` (as `PASSED`).
TEXT_PASSED = frozenset({
    "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty",
    "frequency_penalty", "seed", "echo", "suffix", "user", "best_of", "logit_bias", "logprobs",
})


class LiteLLMProvider:
    """Delegates to `litellm.acompletion` (`litellm.aembedding` for embeddings,
    `litellm.atext_completion` for text completions, streamed or not); LiteLLM is imported
    on first use only."""

    name = "litellm"

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._litellm: Any = None

    def _lib(self, call: ProviderCall) -> Any:
        if self._litellm is None:
            # LiteLLM fetches its model price list from GitHub when imported (and retries
            # from a thread): a gateway must not call out where it was not told to. Its
            # bundled copy is used instead, unless the operator set the variable.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            try:
                self._litellm = importlib.import_module("litellm")
            except ImportError:
                raise ProviderUnavailable(
                    f"model {call.deployment.model!r} (provider {self._kind!r}) needs the "
                    f"{EXTRA} extra: pip install '{EXTRA}'") from None
        return self._litellm

    def _kwargs(self, call: ProviderCall, passed: frozenset[str] = PASSED) -> dict[str, Any]:
        dep = call.deployment
        kwargs: dict[str, Any] = {k: v for k, v in call.body.items() if k in passed}
        kwargs.update(model=dep.model.split("/", 1)[0] + "/" + call.model,
                      timeout=call.timeout_s, num_retries=0)
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

    async def embed(self, call: ProviderCall) -> dict[str, Any]:
        """`litellm.aembedding`, its reply as OpenAI's embeddings list."""
        return await self._dumped(call, "aembedding", EMBEDDING_PASSED)

    async def text_complete(self, call: ProviderCall) -> dict[str, Any]:
        """`litellm.atext_completion`, its reply as OpenAI's `text_completion`."""
        return await self._dumped(call, "atext_completion", TEXT_PASSED)

    async def text_stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        """`litellm.atext_completion(stream=True)`, its chunks as OpenAI's `text_completion`
        chunks (a null text, LiteLLM's on a finish, as "")."""
        lib = self._lib(call)
        kwargs = self._kwargs(call, TEXT_PASSED)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
        try:
            chunks = await lib.atext_completion(**kwargs)
            async for chunk in chunks:
                data: dict[str, Any] = chunk.model_dump()
                for choice in data.get("choices") or ():
                    if isinstance(choice, dict) and choice.get("text") is None:
                        choice["text"] = ""
                yield data
        except Exception as exc:
            raise _mapped(exc, call) from exc

    async def _dumped(self, call: ProviderCall, function: str,
                      passed: frozenset[str]) -> dict[str, Any]:
        """LiteLLM's `function` with what `passed` lets through; its reply as a dict."""
        lib = self._lib(call)
        try:
            response = await getattr(lib, function)(**self._kwargs(call, passed))
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
    where = without_secret(f"{call.deployment.id}: {name}: {exc}", call.deployment)
    if name == "ContextWindowExceededError":
        return ContextWindowExceeded(where, status=status)
    if name == "Timeout" or status == 408:
        return UpstreamTimeout(where, status=status)
    if status in (401, 403) or name == "AuthenticationError":
        return AuthenticationError(where)
    if status == 429:
        return RateLimited(where, status=status)
    return UpstreamError(where, status=status if isinstance(status, int) else None)
