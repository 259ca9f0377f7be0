"""Optional providers: LiteLLM and llama.cpp are extras, reported by name when missing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from completion_upstream import EngineFactory

from scillm.server.completion import ProviderUnavailable, StreamChunk, StreamEnd
from scillm.server.completion._local import LocalProvider

MSG = [{"role": "user", "content": "hi"}]


async def test_missing_litellm_extra(make_engine: EngineFactory,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)  # absent, as without the extra
    engine = await make_engine({"model_list": [{"model_name": "g", "litellm_params": {
        "model": "gemini/gemini-pro"}}]})
    with pytest.raises(ProviderUnavailable, match=r"scillm\[litellm\]"):
        await engine.complete({"model": "g", "messages": MSG})


async def test_missing_local_extra(make_engine: EngineFactory,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # scripts/install installs the extra: take llama_cpp away, as a machine without it.
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    engine = await make_engine({"model_list": [{"model_name": "local/gemma", "litellm_params": {
        "model": "local/gemma3-270m"}}]})
    with pytest.raises(ProviderUnavailable, match=r"scillm\[local\]"):
        await engine.complete({"model": "local/gemma", "messages": MSG})


class FakeLlama:
    """Stands in for llama_cpp.Llama; records the thread it runs on."""

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.prompts: list[str] = []

    def create_completion(self, prompt: str, stream: bool = False, **kwargs: Any) -> Any:
        """llama_cpp's text-completion shape (a base model continues `prompt`)."""
        self.threads.add(threading.current_thread().name)
        self.prompts.append(prompt)
        if not stream:
            return {"object": "text_completion", "created": 1, "choices": [
                {"index": 0, "text": "local hi", "finish_reason": "stop"}], "usage": None}
        return self._chunks()

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[str]:
        """One token per word, and BOS when asked."""
        return ["<bos>"] * add_bos + text.decode().split()

    def _chunks(self) -> Iterator[dict[str, Any]]:
        for word, finish in (("local", None), (" hi", "stop")):
            yield {"object": "text_completion", "created": 1, "choices": [
                {"index": 0, "text": word, "finish_reason": finish}]}


async def test_local_runs_in_one_worker_thread_and_loads_once(
        make_engine: EngineFactory) -> None:
    llama = FakeLlama()
    loads: list[str] = []

    def loader(name: str) -> FakeLlama:
        loads.append(name)
        return llama

    engine = await make_engine({"model_list": [{"model_name": "local/gemma", "litellm_params": {
        "model": "local/gemma3-270m"}}]})
    engine._providers["local"] = LocalProvider(loader)
    done = await engine.complete({"model": "local/gemma", "messages": MSG})
    assert done.response["choices"][0]["message"]["content"] == "local hi"
    events = [e async for e in engine.stream({"model": "local/gemma", "messages": MSG})]
    text = "".join(e.chunk["choices"][0]["delta"].get("content") or ""
                   for e in events if isinstance(e, StreamChunk))
    assert text == "local hi" and isinstance(events[-1], StreamEnd)
    assert events[-1].usage == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    assert loads == ["gemma3-270m"]
    assert len(llama.threads) == 1 and next(iter(llama.threads)).startswith("scillm-local")


async def test_a_caller_cannot_point_litellm_elsewhere(make_engine: EngineFactory,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Only OpenAI's chat parameters reach litellm.acompletion from a request: a caller's
    api_base, base_url, api_key or headers would send the operator's key to their server."""
    import litellm  # the scenarios extra, installed by scripts/install
    seen: list[dict[str, Any]] = []

    async def acompletion(**kwargs: Any) -> Any:
        seen.append(kwargs)
        raise litellm.exceptions.APIConnectionError(message="stop here", llm_provider="x",
                                                    model="m")

    monkeypatch.setattr(litellm, "acompletion", acompletion)
    engine = await make_engine({"model_list": [{"model_name": "g", "litellm_params": {
        "model": "gemini/gemini-pro", "api_key": "operator-secret"}}]})
    with pytest.raises(Exception):  # noqa: B017 - the stand-in refuses every call
        await engine.complete({"model": "g", "messages": MSG, "temperature": 0.5,
                               "api_base": "http://attacker.example", "base_url": "http://a",
                               "extra_headers": {"x": "y"}, "custom_llm_provider": "openai"})
    (kwargs,) = seen[:1]
    assert kwargs["api_key"] == "operator-secret" and kwargs["temperature"] == 0.5
    for key in ("api_base", "base_url", "extra_headers", "custom_llm_provider"):
        assert key not in kwargs, key


def test_loading_litellm_calls_nowhere() -> None:
    """LiteLLM fetches its price list from GitHub when imported, unless told not to: the
    provider loads it so that it resolves no host (a fresh process: LiteLLM imports once)."""
    probe = (
        "import socket\n"
        "asked = []\n"
        "def spy(host, *a, **k):\n"
        "    asked.append(host)\n"
        "    raise socket.gaierror(-2, 'offline')\n"
        "socket.getaddrinfo = spy\n"
        "from scillm.server.completion._litellm import LiteLLMProvider\n"
        "LiteLLMProvider('gemini')._lib(None)\n"
        "print(asked)\n")
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]


class LongLlama:
    """A llama_cpp.Llama whose generation runs `tokens` steps unless its stopping criteria
    say stop, asked at each token as llama.cpp asks them."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.generated: list[int] = []
        self.started = threading.Event()

    def create_completion(self, prompt: str, stream: bool = False,
                          stopping_criteria: Any = None, **kwargs: Any) -> Any:
        self.started.set()
        count = 0
        for count in range(1, self.tokens + 1):  # noqa: B007 - the count is the result
            time.sleep(0.001)
            if stopping_criteria is not None and stopping_criteria([], None):
                break
        self.generated.append(count)
        return {"object": "text_completion", "created": 1, "choices": [
            {"index": 0, "text": "x" * count, "finish_reason": "stop"}], "usage": None}


async def test_a_local_generation_nobody_waits_for_stops(make_engine: EngineFactory) -> None:
    """The local model has one worker: a unary call whose caller left (or whose deadline
    passed) kept it generating for nobody, up to the context's end, and every later call
    waited (79 s in a probe with the real Gemma). It now stops at the next token."""
    llama = LongLlama(tokens=10_000)  # 10 s of "generation"
    engine = await make_engine({"model_list": [{"model_name": "local/gemma", "litellm_params": {
        "model": "local/gemma3-270m"}}]})
    engine._providers["local"] = LocalProvider(lambda name: llama)
    call = asyncio.create_task(engine.complete({"model": "local/gemma", "messages": MSG}))
    await asyncio.to_thread(llama.started.wait, 30)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    llama.tokens = 3
    done = await engine.complete({"model": "local/gemma", "messages": MSG})
    assert done.response["choices"][0]["message"]["content"] == "xxx"
    assert len(llama.generated) == 2 and llama.generated[0] < 10_000
