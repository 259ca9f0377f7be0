"""Embeddings on the engine (`CompletionEngine.embed`), against a loopback upstream speaking
OpenAI's embeddings wire format: the request it gets, retries honouring Retry-After,
fallbacks, replies of the wrong shape, providers with no embeddings, the echo provider's
vectors and LiteLLM's road. Time is injected: a Retry-After is read, never slept."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import pytest
from completion_upstream import (
    EngineFactory,
    FakeTime,
    Upstream,
    embedding_vector,
    embeddings,
    embeddings_as_floats,
    embeddings_reply,
    invalid_json,
    slow,
    status,
)

from scillm.server.completion import InvalidRequest, ModelNotFound, UpstreamError, UpstreamTimeout
from scillm.server.completion._echo import DIMENSIONS, MAX_VALUES, echo_vector


def _openai(up: Upstream, *names: str, **router: Any) -> dict[str, Any]:
    """One deployment per name, `openai/<name>` at the upstream, model name = name."""
    return {"model_list": [{"model_name": n, "litellm_params": {
        "model": f"openai/{n}", "api_base": f"{up.url}/v1", "api_key": "sk-test"}}
        for n in names], "router_settings": router}


def _floats(vector: Any) -> list[float]:
    return [float(x) for x in vector]


async def test_an_openai_upstream_gets_the_real_wire_request_and_its_order_is_kept(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("text-embedding-3-small", embeddings)
    engine = await make_engine({"model_list": [{"model_name": "small", "litellm_params": {
        "model": "openai/text-embedding-3-small", "api_base": f"{upstream.url}/v1",
        "api_key": "sk-test"}}]})
    done = await engine.embed({"model": "small", "input": ["alpha", "be"], "dimensions": 3,
                               "user": "u1", "input_type": "query"})
    path, headers, body = upstream.requests[-1]
    assert path == "/v1/embeddings"
    assert headers["authorization"] == "Bearer sk-test"
    # Asked for base64, OpenAI's own (2/5 of the floats' JSON), whatever the caller's own.
    assert body == {"model": "text-embedding-3-small", "input": ["alpha", "be"],
                    "dimensions": 3, "user": "u1", "input_type": "query",
                    "encoding_format": "base64"}
    # The upstream listed them in reverse: each vector is its input's, by `index`.
    assert [_floats(v) for v in done.vectors] == [embedding_vector("alpha"),
                                                  embedding_vector("be")]
    assert done.usage is not None and done.usage["prompt_tokens"] == 8
    assert done.model == "text-embedding-3-small"
    assert (done.routing.provider, done.routing.attempts) == ("openai", 1)


async def test_a_429_with_retry_after_is_retried_after_that_wait(
        upstream: Upstream, make_engine: EngineFactory, fake_time: FakeTime) -> None:
    upstream.plan("e", status(429, {"retry-after": "3"}), embeddings)
    engine = await make_engine(_openai(upstream, "e", num_retries=2))
    done = await engine.embed({"model": "e", "input": ["x"]})
    assert _floats(done.vectors[0]) == embedding_vector("x")
    assert upstream.calls("e") == 2 and done.routing.attempts == 2
    assert fake_time.sleeps and fake_time.sleeps[0] >= 3.0
    assert done.routing.last_retry_after_s == 3.0


async def test_a_failing_model_falls_back(upstream: Upstream, make_engine: EngineFactory,
                                          fake_time: FakeTime) -> None:
    upstream.plan("down", status(500))
    upstream.plan("backup", embeddings)
    engine = await make_engine(_openai(upstream, "down", "backup", num_retries=1,
                                       fallbacks=[{"down": ["backup"]}]))
    done = await engine.embed({"model": "down", "input": ["x", "y"]})
    assert upstream.calls("down") == 2  # tried, retried, then the fallback
    assert (done.routing.fallback_used, done.routing.fallback_model) == (True, "backup")
    assert [_floats(v) for v in done.vectors] == [embedding_vector("x"), embedding_vector("y")]


async def test_a_callers_fallbacks_are_taken_too(upstream: Upstream,
                                                 make_engine: EngineFactory) -> None:
    upstream.plan("down", status(503))
    upstream.plan("backup", embeddings)
    engine = await make_engine(_openai(upstream, "down", "backup", num_retries=0))
    done = await engine.embed({"model": "down", "input": "x".split(),
                               "scillm": {"fallbacks": ["backup"]}})
    assert done.routing.fallback_model == "backup"


def _b64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


async def test_an_upstream_answering_base64_is_decoded(upstream: Upstream,
                                                       make_engine: EngineFactory) -> None:
    upstream.plan("e", embeddings_reply({"object": "list", "model": "e", "data": [
        {"object": "embedding", "index": 0, "embedding": _b64([0.5, -2.0, 1.0])}],
        "usage": {"prompt_tokens": 1, "total_tokens": 1}}))
    engine = await make_engine(_openai(upstream, "e"))
    done = await engine.embed({"model": "e", "input": ["x"], "encoding_format": "float"})
    assert _floats(done.vectors[0]) == [0.5, -2.0, 1.0]
    assert upstream.requests[-1][2]["encoding_format"] == "base64"  # the caller's is the door's


async def test_an_upstream_ignoring_base64_is_read_from_its_floats(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    """An OpenAI-compatible server that knows no `encoding_format` answers floats: read
    as well; `dimensions` reaches it as asked."""
    upstream.plan("e", embeddings_as_floats)
    engine = await make_engine(_openai(upstream, "e"))
    done = await engine.embed({"model": "e", "input": ["ab", "c"], "dimensions": 3})
    assert [_floats(v) for v in done.vectors] == [embedding_vector("ab"),
                                                  embedding_vector("c")]
    asked = upstream.requests[-1][2]
    assert (asked["encoding_format"], asked["dimensions"]) == ("base64", 3)


def _list(*items: Any) -> dict[str, Any]:
    return {"object": "list", "model": "e", "data": list(items),
            "usage": {"prompt_tokens": 1, "total_tokens": 1}}


@pytest.mark.parametrize("reply", [
    pytest.param(None, id="invalid-json"),
    pytest.param({"object": "list"}, id="no-data"),
    pytest.param(["not", "an", "object"], id="an-array"),
    pytest.param(_list(), id="too-few"),
    pytest.param(_list({"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [2.0]}),
                 id="too-many"),
    pytest.param(_list({"index": 1, "embedding": [1.0]}, {"index": 1, "embedding": [2.0]}),
                 id="an-index-twice"),
    pytest.param(_list({"index": 0, "embedding": ["1.0"]}), id="a-string-number"),
    pytest.param(_list({"index": 0, "embedding": [True]}), id="a-boolean"),
    pytest.param(_list({"index": 0, "embedding": [1e300]}), id="past-float32"),
    pytest.param(_list({"index": 0, "embedding": []}), id="empty-vector"),
    pytest.param(_list({"index": 0, "embedding": "%%%"}), id="not-base64"),
    pytest.param(_list({"index": 0, "embedding": "AAAA"}), id="base64-not-float32s"),
    pytest.param(_list({"index": 0, "embedding": "AACAfw=="}), id="base64-infinity"),
    pytest.param(_list({"index": 0, "embedding": None}), id="null"),
    pytest.param(_list({"index": "0", "embedding": [1.0]}), id="string-index"),
])
async def test_a_reply_of_another_shape_is_an_upstream_error(
        upstream: Upstream, make_engine: EngineFactory, reply: Any) -> None:
    """Single input, so a one-vector list would be right: each of these is refused as the
    upstream's fault (502 at the door), never read as vectors nor raised as a crash."""
    upstream.plan("e", invalid_json if reply is None else embeddings_reply(reply))
    engine = await make_engine(_openai(upstream, "e", num_retries=0))
    with pytest.raises(UpstreamError) as caught:
        await engine.embed({"model": "e", "input": ["x"]})
    assert type(caught.value) is UpstreamError and caught.value.status is None


async def test_a_vector_short_is_named(upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("e", embeddings_reply(_list({"index": 0, "embedding": [1.0]})))
    engine = await make_engine(_openai(upstream, "e", num_retries=0))
    with pytest.raises(UpstreamError, match="1 embeddings for 2 inputs"):
        await engine.embed({"model": "e", "input": ["x", "y"]})


async def test_vectors_of_different_lengths_are_refused(upstream: Upstream,
                                                        make_engine: EngineFactory) -> None:
    upstream.plan("e", embeddings_reply(_list({"index": 0, "embedding": [1.0, 2.0]},
                                              {"index": 1, "embedding": [1.0]})))
    engine = await make_engine(_openai(upstream, "e", num_retries=0))
    with pytest.raises(UpstreamError, match="different lengths"):
        await engine.embed({"model": "e", "input": ["x", "y"]})


async def test_an_upstreams_error_status_keeps_its_meaning(upstream: Upstream,
                                                           make_engine: EngineFactory) -> None:
    """400 is the caller's (not retried, no fallback), as for a completion."""
    upstream.plan("e", status(400, body={"error": {"message": "dimensions too large",
                                                   "param": "dimensions"}}))
    engine = await make_engine(_openai(upstream, "e", num_retries=3))
    with pytest.raises(UpstreamError) as caught:
        await engine.embed({"model": "e", "input": ["x"], "dimensions": 99999})
    assert caught.value.status == 400 and upstream.calls("e") == 1


async def test_a_provider_without_embeddings_is_the_callers_error(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    engine = await make_engine({"model_list": [{"model_name": "claude", "litellm_params": {
        "model": "anthropic/claude-x", "api_base": upstream.url, "api_key": "sk-ant"}}]})
    with pytest.raises(InvalidRequest, match=r"'anthropic'.*serves no embeddings") as caught:
        await engine.embed({"model": "claude", "input": ["x"]})
    assert caught.value.param == "model"
    assert upstream.requests == []


@pytest.mark.parametrize(("request_", "param"), [
    ({"input": []}, "input"),
    ({"input": "text"}, "input"),  # the engine takes a list; the wire makes one
    ({"input": [""]}, "input[0]"),
    ({"input": ["a", ""]}, "input[1]"),
    ({"input": [[]]}, "input[0]"),
    ({"input": ["a", [1]]}, "input[1]"),
    ({"input": [[1, -2]]}, "input[0]"),
    ({"input": [[1, True]]}, "input[0]"),
    ({"input": ["a"] * 2049}, "input"),
    ({"input": ["a"], "dimensions": 0}, "dimensions"),
    ({"input": ["a"], "dimensions": -3}, "dimensions"),
    ({"input": ["a"], "scillm": {"cache": {"bypass": True}}}, "scillm"),
    ({"input": ["a"], "scillm": {"deterministic": True}}, "scillm"),
    ({"input": ["a"], "model": ""}, "model"),
])
async def test_what_openai_refuses_is_refused_naming_the_field(
        make_engine: EngineFactory, request_: dict[str, Any], param: str) -> None:
    engine = await make_engine({"model_list": [{"model_name": "echo/*",
                                                "litellm_params": {"model": "echo/*"}}]})
    with pytest.raises(InvalidRequest) as caught:
        await engine.embed({"model": "echo/e", **request_})
    assert caught.value.param == param


async def test_an_unknown_model_is_not_found(make_engine: EngineFactory) -> None:
    engine = await make_engine({"model_list": [{"model_name": "echo/*",
                                                "litellm_params": {"model": "echo/*"}}]})
    with pytest.raises(ModelNotFound):
        await engine.embed({"model": "nope", "input": ["x"]})


async def test_echo_vectors_are_deterministic_unit_vectors_of_their_input(
        make_engine: EngineFactory) -> None:
    engine = await make_engine({"model_list": [{"model_name": "echo/*",
                                                "litellm_params": {"model": "echo/*"}}]})
    first = await engine.embed({"model": "echo/e", "input": ["cat", "dog", "cat two"]})
    again = await engine.embed({"model": "echo/e", "input": ["cat"]})
    tokens = await engine.embed({"model": "echo/e", "input": [[1, 2], [1, 2, 3]]})
    cat, dog, cat_two = (_floats(v) for v in first.vectors)
    ids, more_ids = (_floats(v) for v in tokens.vectors)
    assert cat == _floats(again.vectors[0]) and len({*map(tuple, (cat, dog, cat_two, ids,
                                                                  more_ids))}) == 5
    assert len(cat) == DIMENSIONS
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5)
               for v in (cat, dog, ids))
    assert first.usage == {"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4}
    assert tokens.usage is not None and tokens.usage["prompt_tokens"] == 5
    assert first.model == "echo/e" and first.routing.provider == "echo"
    wide = await engine.embed({"model": "echo/e", "input": ["cat"], "dimensions": 64})
    assert len(wide.vectors[0]) == 64
    with pytest.raises(InvalidRequest):
        await engine.embed({"model": "echo/e", "input": ["cat"], "dimensions": 100_000})


async def test_echo_makes_at_most_max_values_numbers(make_engine: EngineFactory) -> None:
    """2048 inputs of 3,072 numbers held the event loop for seconds: an echo reply holds
    at most MAX_VALUES numbers (inputs x dimensions); past it, a 400 naming the field."""
    engine = await make_engine({"model_list": [{"model_name": "echo/*",
                                                "litellm_params": {"model": "echo/*"}}]})
    inputs = [f"paper {i}" for i in range(MAX_VALUES // 1024)]
    full = await engine.embed({"model": "echo/e", "input": inputs, "dimensions": 1024})
    assert [v.tobytes() for v in full.vectors] == [echo_vector(i, 1024).tobytes()
                                                   for i in inputs]
    for request, param in (({"input": [*inputs, "one more"], "dimensions": 1024}, "dimensions"),
                           ({"input": ["a"] * 2048, "dimensions": 3072}, "dimensions")):
        with pytest.raises(InvalidRequest, match=f"at most {MAX_VALUES:,}") as caught:
            await engine.embed({"model": "echo/e", **request})
        assert caught.value.param == param


async def test_litellm_embeds_through_its_own_road(upstream: Upstream,
                                                   make_engine: EngineFactory) -> None:
    """A provider LiteLLM serves (`hosted_vllm/...`): litellm.aembedding reaches the same
    OpenAI-shaped endpoint; the caller's routing options never reach LiteLLM."""
    upstream.plan("vec", embeddings)
    engine = await make_engine({"model_list": [{"model_name": "v", "litellm_params": {
        "model": "hosted_vllm/vec", "api_base": f"{upstream.url}/v1", "api_key": "x"}}]},
        real_time=True)
    done = await engine.embed({"model": "v", "input": ["ab", "c"], "dimensions": 3,
                               "scillm": {"num_retries": 0}})
    assert [_floats(v) for v in done.vectors] == [embedding_vector("ab"),
                                                  embedding_vector("c")]
    assert done.routing.provider == "litellm"
    path, _, body = upstream.requests[-1]
    assert path == "/v1/embeddings"
    assert body == {"model": "vec", "input": ["ab", "c"], "dimensions": 3}


async def test_an_upstream_slower_than_the_calls_timeout_is_a_timeout(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    """Embeddings and text completions are held to the call's timeout, as a chat completion
    is (the upstream transport's timeouts, and the engine's deadline around each attempt)."""
    upstream.plan("sleepy", slow(5.0))
    engine = await make_engine(_openai(upstream, "sleepy", num_retries=0), real_time=True)
    with pytest.raises(UpstreamTimeout):
        await engine.embed({"model": "sleepy", "input": ["a"], "scillm": {"timeout_s": 0.2}})
    with pytest.raises(UpstreamTimeout):
        await engine.text_complete({"model": "sleepy", "prompt": ["a"],
                                    "scillm": {"timeout_s": 0.2}})
