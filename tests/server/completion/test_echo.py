"""The engine with the echo provider: the contract the servicer relies on."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from meshutil import RunningMesh

import scillm.server.completion as completion
from scillm.clients import ScillmClient
from scillm.server.completion import (
    CompletionEngine,
    CompletionSettings,
    InvalidRequest,
    ModelNotFound,
    StreamChunk,
    StreamEnd,
)


def msg(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


@pytest.fixture
async def engine() -> Any:
    e = CompletionEngine(CompletionSettings.default())
    await e.start()
    yield e
    await e.close()


def test_public_api_is_pinned() -> None:
    assert sorted(completion.__all__) == [
        "AuthenticationError", "CacheSettings", "CacheStats", "Completed", "CompletionEngine",
        "CompletionError", "CompletionSettings", "ContextWindowExceeded", "DeploymentSettings",
        "Embedded", "InvalidRequest", "ModelNotFound", "ProviderUnavailable", "RateLimited",
        "RetryHooks", "RouterSettings", "Routing", "Secret", "StreamChunk", "StreamEnd",
        "StreamEvent", "UpstreamError", "UpstreamTimeout", "estimated_usage", "model_prices",
        "resolve_env"]


async def test_echo_complete(engine: CompletionEngine) -> None:
    done = await engine.complete({"model": "echo/test", "messages": msg("hello big world")})
    assert done.response["object"] == "chat.completion"
    choice = done.response["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "hello big world"}
    assert choice["finish_reason"] == "stop"
    assert done.response["usage"] == {"prompt_tokens": 5, "completion_tokens": 3,
                                      "total_tokens": 8}
    assert done.routing.provider == "echo" and done.routing.attempts == 1
    assert not done.cache_hit and done.json_valid is None


async def test_echo_max_tokens_stop_and_n(engine: CompletionEngine) -> None:
    done = await engine.complete({"model": "echo/a", "messages": msg("one two three four"),
                                  "max_completion_tokens": 2, "n": 3})
    assert [c["message"]["content"] for c in done.response["choices"]] == ["one two"] * 3
    assert {c["finish_reason"] for c in done.response["choices"]} == {"length"}
    # OpenAI counts every answer's tokens: a priced echo deployment charges all n of them
    assert done.response["usage"]["completion_tokens"] == 2 * 3
    events = [e async for e in engine.stream({"model": "echo/a", "n": 3,
                                              "messages": msg("one two three four")})]
    assert isinstance(events[-1], StreamEnd) and events[-1].usage["completion_tokens"] == 4 * 3
    done = await engine.complete({"model": "echo/a", "messages": msg("one two. three"),
                                  "stop": ["."]})
    assert done.response["choices"][0]["message"]["content"] == "one two"
    assert done.response["choices"][0]["finish_reason"] == "stop"


async def test_echo_content_parts(engine: CompletionEngine) -> None:
    parts = [{"type": "text", "text": "alpha "}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "beta"}]
    done = await engine.complete({"model": "echo/p", "messages": [
        {"role": "user", "content": parts}]})
    assert done.response["choices"][0]["message"]["content"] == "alpha beta"


async def test_echo_stream(engine: CompletionEngine) -> None:
    request = {"model": "echo/s", "messages": msg("a b c")}
    events = [e async for e in engine.stream(request)]
    chunks = [e.chunk for e in events if isinstance(e, StreamChunk)]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "a b c" and len(chunks) == 5
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    end = events[-1]
    assert isinstance(end, StreamEnd) and not end.cache_hit and not end.cache_lookup
    assert end.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert engine.cache_stats() is None  # no cache unless configured


async def test_deterministic_mode_sets_sampling(engine: CompletionEngine) -> None:
    done = await engine.complete({"model": "echo/d", "messages": msg("z"), "temperature": 1.3,
                                  "scillm": {"deterministic": True}})
    assert done.response["choices"][0]["message"]["content"] == "z"


async def test_json_valid_reported(engine: CompletionEngine) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
        "additionalProperties": False}}}
    good = await engine.complete({"model": "echo/j", "messages": msg('{"a": 1}'),
                                  "response_format": fmt})
    assert good.json_valid is True
    bad = await engine.complete({"model": "echo/j", "messages": msg('{"a": "x"}'),
                                 "response_format": fmt})
    assert bad.json_valid is False
    obj = await engine.complete({"model": "echo/j", "messages": msg("[1]"),
                                 "response_format": {"type": "json_object"}})
    assert obj.json_valid is False


@pytest.mark.parametrize("schema", [
    {"type": 5},  # TypeError inside the validator
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]},
    {"$ref": "https://example.com/schema.json"},  # would be fetched, or fail
])
async def test_a_schema_that_is_no_schema_is_the_callers_error(engine: CompletionEngine,
                                                              schema: dict[str, object]) -> None:
    """A json_schema response format whose schema is not one (a type of 5, a $ref that
    leads nowhere) failed the call after the upstream had answered, as an INTERNAL error
    (TypeError, _WrappedReferencingError). It is the caller's error, naming the schema: up
    front for a $ref leading nowhere (a walk of the schema), else when the reply is
    checked (the metaschema check up front cost 9.6 s of the event loop for 3.5 MB)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    with pytest.raises(InvalidRequest) as info:
        await engine.complete({"model": "echo/j", "messages": msg('{"a": [1]}'),
                               "response_format": fmt})
    assert info.value.param == "response_format.json_schema.schema"
    with pytest.raises(InvalidRequest):
        [e async for e in engine.stream({"model": "echo/j", "messages": msg('{"a": 1}'),
                                         "response_format": fmt})]
    recursive = {"type": "object", "properties": {"next": {"$ref": "#"}}}  # a valid one
    ok = {"type": "json_schema", "json_schema": {"name": "t", "schema": recursive}}
    done = await engine.complete({"model": "echo/j", "messages": msg('{"next": {}}'),
                                  "response_format": ok})
    assert done.json_valid is True


async def test_json_valid_reported_for_streams_without_a_cache(engine: CompletionEngine,
                                                               ) -> None:
    for text, valid in (('{"a": 1}', True), ("[1]", False)):
        events = [e async for e in engine.stream({"model": "echo/j", "messages": msg(text),
                                                  "response_format": {"type": "json_object"}})]
        end = events[-1]
        assert isinstance(end, StreamEnd) and end.json_valid is valid


async def test_unknown_model_suggests(engine: CompletionEngine) -> None:
    with pytest.raises(ModelNotFound) as info:
        await engine.complete({"model": "local/gema", "messages": msg("x")})
    assert info.value.suggestions == ["local/gemma"]
    assert "did you mean local/gemma" in str(info.value)


@pytest.mark.parametrize("request_, param", [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "echo/x", "messages": []}, "messages"),
    ({"model": "echo/x", "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ({"model": "echo/x", "messages": [{"role": "user", "content": "x"}],
      "scillm": {"nope": 1}}, "scillm"),
])
async def test_invalid_requests(engine: CompletionEngine, request_: dict[str, Any],
                                param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        await engine.complete(request_)
    assert info.value.param == param


def test_model_names() -> None:
    engine = CompletionEngine(CompletionSettings.default())
    assert set(engine.model_names()) == {"echo/*", "local/gemma"}


async def test_an_answer_is_at_most_its_context(engine: CompletionEngine) -> None:
    """The echo is in the embedded defaults: a 1 MiB prompt with n=128 was answered with
    134 MB (and streamed as 4 GB). An answer holds at most MAX_TOKENS words."""
    from scillm.server.completion._echo import MAX_TOKENS

    long = "w " * (MAX_TOKENS * 3)
    done = await engine.complete({"model": "echo/x", "n": 4, "messages": msg(long)})
    for choice in done.response["choices"]:
        assert len(choice["message"]["content"].split()) == MAX_TOKENS
        assert choice["finish_reason"] == "length"
    asked = await engine.complete({"model": "echo/x", "max_tokens": 10**6, "messages": msg(long)})
    assert asked.response["usage"]["completion_tokens"] == MAX_TOKENS
    words = [e for e in [e async for e in engine.stream({"model": "echo/x",
                                                          "messages": msg(long)})]
             if isinstance(e, StreamChunk) and e.chunk["choices"]
             and e.chunk["choices"][0]["delta"].get("content")]
    assert len(words) == MAX_TOKENS



async def test_deeply_nested_json_is_not_valid_json_not_internal(mesh: RunningMesh) -> None:
    """A json_object reply nested 100,000 deep made checking it raise RecursionError: the
    call failed INTERNAL (gRPC) or 500 (HTTP). It is JSON no reader takes: not valid."""
    deep = "[" * 100_000 + "]" * 100_000
    request = {"model": "echo/x", "messages": [{"role": "user", "content": deep}],
               "response_format": {"type": "json_object"}}
    async with ScillmClient(mesh.grpc_target) as client:
        reply = await client.completion.create(request)
        assert reply.HasField("json_valid") and reply.json_valid is False
        events = [e async for e in client.completion.stream(request)]
        assert events[-1].HasField("end")
    async with httpx.AsyncClient(base_url=mesh.http_url, timeout=60) as http:
        answer = await http.post("/v1/chat/completions", json=request)
    assert answer.status_code == 200, answer.text
