"""OpenAI-compatible provider and the router against a real, fault-injecting upstream."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from completion_upstream import (
    EngineFactory,
    FakeTime,
    Upstream,
    drop_mid_stream,
    endless_stream,
    invalid_json,
    malformed_sse,
    ok,
    openai_chunks,
    reply,
    send_json,
    slow,
    sse_event,
    sse_head,
    status,
)

from scillm.server.completion import (
    AuthenticationError,
    ContextWindowExceeded,
    ProviderUnavailable,
    RateLimited,
    RetryHooks,
    StreamChunk,
    StreamEnd,
    UpstreamError,
    UpstreamTimeout,
)

MSG = [{"role": "user", "content": "hi there"}]


def config(up: Upstream, *models: str, **router: Any) -> dict[str, Any]:
    return {"model_list": [
        {"model_name": m.split("@")[0], "litellm_params": {
            "model": f"openai/{m.split('@')[-1]}", "api_base": f"{up.url}/v1"}}
        for m in models], "router_settings": router}


async def test_complete_ok_and_request_shape(upstream: Upstream,
                                             make_engine: EngineFactory) -> None:
    engine = await make_engine(config(upstream, "gpt@up-a"))
    done = await engine.complete({"model": "gpt", "messages": MSG, "scillm": {"timeout_s": 5}})
    assert done.response["choices"][0]["message"]["content"] == "hi there"
    path, headers, body = upstream.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "up-a"
    assert "scillm" not in body and "authorization" not in headers
    assert done.routing.deployment == "gpt#0" and done.routing.provider == "openai"


async def test_api_key_from_environment(upstream: Upstream) -> None:
    from scillm.server.completion import CompletionEngine, CompletionSettings
    cfg = {"model_list": [{"model_name": "m", "litellm_params": {
        "model": "openai/x", "api_base": upstream.url, "api_key": "os.environ/UP_KEY",
        "extra_headers": {"x-team": "sci"}}}]}
    settings = CompletionSettings.from_mapping(cfg, environ={"UP_KEY": "sk-123"})
    assert "sk-123" not in repr(settings)
    engine = CompletionEngine(settings)
    await engine.start()
    try:
        await engine.complete({"model": "m", "messages": MSG})
        headers = upstream.requests[0][1]
        assert headers["authorization"] == "Bearer sk-123" and headers["x-team"] == "sci"
    finally:
        await engine.close()
    missing = CompletionEngine(CompletionSettings.from_mapping(cfg, environ={}))
    with pytest.raises(ProviderUnavailable, match="UP_KEY"):
        await missing.complete({"model": "m", "messages": MSG})
    await missing.close()


async def test_429_retry_after_then_ok(upstream: Upstream, make_engine: EngineFactory,
                                       fake_time: FakeTime) -> None:
    upstream.plan("a", status(429, {"retry-after": "3"}), status(503), ok)
    retries: list[tuple[str, int, float]] = []
    hooks = RetryHooks(on_retry=lambda d, n, s, e: retries.append((d, n, s)))
    engine = await make_engine(config(upstream, "gpt@a"), hooks=hooks)
    done = await engine.complete({"model": "gpt", "messages": MSG})
    assert done.routing.attempts == 3 and done.routing.last_retry_after_s == 3.0
    assert fake_time.sleeps[0] == 3.0 and len(fake_time.sleeps) == 2
    assert done.routing.total_sleep_s == pytest.approx(sum(fake_time.sleeps))
    assert [r[1] for r in retries] == [1, 2]


async def test_retry_after_http_date_and_ms(upstream: Upstream, make_engine: EngineFactory,
                                            fake_time: FakeTime) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    upstream.plan("a", status(429, {"retry-after": later}), status(429, {
        "retry-after-ms": "1500", "retry-after": "99"}), ok)
    engine = await make_engine(config(upstream, "gpt@a"))
    await engine.complete({"model": "gpt", "messages": MSG})
    assert 28 <= fake_time.sleeps[0] <= 30 and fake_time.sleeps[1] == 1.5


async def test_retries_exhausted_and_not_retried(upstream: Upstream,
                                                 make_engine: EngineFactory) -> None:
    upstream.plan("a", status(500))
    upstream.plan("b", status(400))
    upstream.plan("c", status(401))
    engine = await make_engine(config(upstream, "ga@a", "gb@b", "gc@c", num_retries=2))
    with pytest.raises(UpstreamError) as info:
        await engine.complete({"model": "ga", "messages": MSG})
    assert info.value.status == 500 and upstream.calls("a") == 3
    with pytest.raises(UpstreamError):
        await engine.complete({"model": "gb", "messages": MSG})
    assert upstream.calls("b") == 1
    with pytest.raises(AuthenticationError):
        await engine.complete({"model": "gc", "messages": MSG})


async def test_retry_budget_stops_long_retry_after(upstream: Upstream,
                                                   make_engine: EngineFactory) -> None:
    upstream.plan("a", status(429, {"retry-after": "600"}))
    engine = await make_engine(config(upstream, "gpt@a", retry_budget_s=60))
    with pytest.raises(RateLimited) as info:
        await engine.complete({"model": "gpt", "messages": MSG})
    assert info.value.retry_after_s == 600 and upstream.calls("a") == 1


async def test_context_window_fallback(upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("small", status(400, body={"error": {
        "message": "too long", "code": "context_length_exceeded"}}))
    cfg = config(upstream, "small@small", "big@big",
                 context_window_fallbacks=[{"small": ["big"]}])
    engine = await make_engine(cfg)
    done = await engine.complete({"model": "small", "messages": MSG})
    assert done.routing.fallback_used and done.routing.fallback_model == "big"
    plain = await make_engine(config(upstream, "small@small"))
    with pytest.raises(ContextWindowExceeded):
        await plain.complete({"model": "small", "messages": MSG})


async def test_fallbacks_without_loops(upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("a", status(503))
    upstream.plan("b", status(503))
    cfg = config(upstream, "ma@a", "mb@b", "mc@c", num_retries=0,
                 fallbacks=[{"ma": ["mb", "ma", "mc"]}, {"mb": ["ma"]}])
    engine = await make_engine(cfg)
    done = await engine.complete({"model": "ma", "messages": MSG})
    assert done.routing.fallback_model == "mc" and done.routing.attempts == 3
    with pytest.raises(UpstreamError):  # per-request fallbacks override; mb -> ma only once
        await engine.complete({"model": "mb", "messages": MSG, "scillm": {"fallbacks": ["ma"]}})


async def test_a_failed_fallback_says_why_the_model_asked_for_failed_first(
        make_engine: EngineFactory) -> None:
    """With no API keys set, the README's config answered only 'claude needs an API key:
    set ANTHROPIC_API_KEY', saying nothing of the model the caller asked for."""
    cfg = {"model_list": [
        {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o-mini",
                                                 "api_key": "os.environ/OPENAI_API_KEY"}},
        {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-sonnet-4-5",
                                                    "api_key": "os.environ/ANTHROPIC_API_KEY"}}],
        "router_settings": {"fallbacks": [{"gpt": ["claude"]}], "num_retries": 0}}
    engine = await make_engine(cfg)
    with pytest.raises(ProviderUnavailable) as info:
        await engine.complete({"model": "gpt", "messages": MSG})
    assert "ANTHROPIC_API_KEY" in str(info.value) and "OPENAI_API_KEY" in str(info.value)
    assert "'gpt' failed first" in info.value.message, info.value.message


async def test_slow_first_byte_times_out(upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("a", slow(1.0), ok)
    engine = await make_engine(config(upstream, "gpt@a", num_retries=0), real_time=True)
    with pytest.raises(UpstreamTimeout):
        await engine.complete({"model": "gpt", "messages": MSG, "scillm": {"timeout_s": 0.2}})
    upstream.plan("b", slow(1.0), ok)
    retrying = await make_engine(config(upstream, "gpt@b", num_retries=1, backoff_base_s=0.01),
                                 real_time=True)
    done = await retrying.complete({"model": "gpt", "messages": MSG,
                                    "scillm": {"timeout_s": 0.2}})
    assert done.routing.attempts == 2


async def test_invalid_json_reply(upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("a", invalid_json, ok)
    engine = await make_engine(config(upstream, "gpt@a", num_retries=0))
    with pytest.raises(UpstreamError, match="invalid JSON"):
        await engine.complete({"model": "gpt", "messages": MSG})
    done = await engine.complete({"model": "gpt", "messages": MSG, "scillm": {"num_retries": 1}})
    assert done.routing.attempts == 1


async def test_json_schema_falls_back_to_json_object(upstream: Upstream,
                                                     make_engine: EngineFactory) -> None:
    upstream.plan("a", status(400, body={"error": {"message": "json_schema unsupported"}}),
                  reply('{"answer": 42}'))
    engine = await make_engine(config(upstream, "gpt@a"))
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}}}}}
    done = await engine.complete({"model": "gpt", "messages": MSG, "response_format": fmt})
    assert done.json_valid is True
    second = upstream.requests[1][2]
    assert second["response_format"] == {"type": "json_object"}
    assert "JSON schema" in second["messages"][0]["content"]


async def test_stream_ok_with_usage(upstream: Upstream, make_engine: EngineFactory) -> None:
    engine = await make_engine(config(upstream, "gpt@a"))
    events = [e async for e in engine.stream({"model": "gpt", "messages": MSG, "stream": True})]
    text = "".join(e.chunk["choices"][0]["delta"].get("content") or ""
                   for e in events if isinstance(e, StreamChunk))
    assert text == "hi there"
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.usage == {
        "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert upstream.requests[0][2]["stream_options"] == {"include_usage": True}


async def _stream_of(upstream: Upstream, make_engine: EngineFactory,
                     events: Any) -> list[Any]:
    """The engine's events for a stream of `gpt` whose upstream sends `events(request)`
    (each an SSE data line's JSON text), then `[DONE]`."""
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        sse_head(w)
        for data in [*events(req), "[DONE]"]:
            sse_event(w, data)
        w.write(b"0\r\n\r\n")
        return True
    upstream.plan("a", act)
    engine = await make_engine(config(upstream, "gpt@a"))
    return [e async for e in engine.stream({"model": "gpt", "messages": MSG, "stream": True})]


async def test_a_streams_usage_on_its_finish_chunk_is_kept(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    """vLLM- and DeepSeek-style servers send the usage on the last chunk that has choices
    (the finish), not on a chunk of its own: the stream's usage was zero (the key paid
    nothing, the caller's include_usage chunk said 0), and the finish chunk is kept."""
    def with_usage_on_finish(req: dict[str, Any]) -> list[str]:
        *body, finish, alone = [json.loads(c) for c in openai_chunks(req, "hi there")]
        return [json.dumps(d) for d in [*body, {**finish, "usage": alone["usage"]}]]
    events = await _stream_of(upstream, make_engine, with_usage_on_finish)
    chunks = [e.chunk for e in events if isinstance(e, StreamChunk)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.usage == {
        "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_a_deployments_max_tokens_is_the_default_the_upstream_gets(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    """`litellm_params.max_tokens` was read but sent only by the Anthropic and local
    providers: an OpenAI-compatible upstream got no cap. A request's own cap wins."""
    cfg = config(upstream, "gpt@a")
    cfg["model_list"][0]["litellm_params"]["max_tokens"] = 3
    engine = await make_engine(cfg)
    await engine.complete({"model": "gpt", "messages": MSG})
    await engine.complete({"model": "gpt", "messages": MSG, "max_tokens": 7})
    await engine.complete({"model": "gpt", "messages": MSG, "max_completion_tokens": 9})
    [e async for e in engine.stream({"model": "gpt", "messages": MSG, "stream": True})]
    sent = [body for _, _, body in upstream.requests]
    assert [b.get("max_tokens") for b in sent] == [3, 7, None, 3]
    assert sent[2]["max_completion_tokens"] == 9


async def test_a_deployments_stream_timeout_bounds_its_streams(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    """`litellm_params.stream_timeout` (LiteLLM: the timeout of streamed calls) was
    accepted and read by nothing: a stream waited the whole `timeout`."""
    cfg = config(upstream, "gpt@a", num_retries=0)
    cfg["model_list"][0]["litellm_params"].update(timeout=30, stream_timeout=0.3)
    upstream.plan("a", slow(1.5))
    engine = await make_engine(cfg)
    with pytest.raises(UpstreamTimeout):
        async for _ in engine.stream({"model": "gpt", "messages": MSG, "stream": True}):
            pass
    done = await engine.complete({"model": "gpt", "messages": MSG})  # the unary timeout
    assert done.response["choices"][0]["message"]["content"] == "hi there"


async def test_an_emoji_split_between_two_chunks_reaches_the_caller_whole(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    """An upstream that escapes text as UTF-16 may cut a surrogate pair between two
    chunks (`"A \\ud83d"`, then `"\\ude00 B"`): the first half alone could not enter a
    protobuf string, and the stream died with "surrogates not allowed". The pair is joined
    across chunks; a half that never finds its other half becomes U+FFFD."""
    def split_pair(req: dict[str, Any]) -> list[str]:
        base = json.dumps(json.loads(openai_chunks(req, "x")[1]))
        return [base.replace('"content": " x"', '"content": "%s"')
                .replace('"content": "x"', '"content": "%s"') % text
                for text in ("A \\ud83d", "\\ude00 B \\udc00", " end \\ud83d")]
    events = await _stream_of(upstream, make_engine, split_pair)
    text = "".join(e.chunk["choices"][0]["delta"].get("content") or ""
                   for e in events if isinstance(e, StreamChunk))
    assert text == "A \U0001F600 B \ufffd end ", ascii(text)
    assert isinstance(events[-1], StreamEnd)


async def test_stream_dropped_midway_raises(upstream: Upstream,
                                            make_engine: EngineFactory) -> None:
    upstream.plan("a", drop_mid_stream)
    engine = await make_engine(config(upstream, "gpt@a"))
    seen: list[Any] = []
    with pytest.raises(UpstreamError):
        async for event in engine.stream({"model": "gpt", "messages": MSG}):
            seen.append(event)
    assert seen  # chunks before the drop arrived; no retry after the first chunk
    assert upstream.calls("a") == 1


async def test_malformed_sse_is_retried_before_first_chunk(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("a", malformed_sse, ok)
    engine = await make_engine(config(upstream, "gpt@a"))
    events = [e async for e in engine.stream({"model": "gpt", "messages": MSG})]
    assert isinstance(events[-1], StreamEnd) and events[-1].routing.attempts == 2
    upstream.plan("b", malformed_sse)
    strict = await make_engine(config(upstream, "gpt@b", num_retries=0))
    with pytest.raises(UpstreamError, match="malformed SSE"):
        _ = [e async for e in strict.stream({"model": "gpt", "messages": MSG})]


async def test_cancelling_the_consumer_closes_upstream(upstream: Upstream,
                                                       make_engine: EngineFactory) -> None:
    upstream.plan("a", endless_stream)
    engine = await make_engine(config(upstream, "gpt@a"), real_time=True)
    got_chunk = asyncio.Event()

    async def consume() -> None:
        async with aclosing(engine.stream({"model": "gpt", "messages": MSG})) as events:
            async for _ in events:
                got_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_chunk.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(upstream.disconnected.wait(), 2)


async def test_cooldown_moves_traffic(upstream: Upstream, make_engine: EngineFactory,
                                      fake_time: FakeTime) -> None:
    upstream.plan("bad", status(429, {"retry-after": "0"}))
    engine = await make_engine(config(upstream, "gpt@bad", "gpt@good", cooldown_time=30))
    for _ in range(6):
        done = await engine.complete({"model": "gpt", "messages": MSG})
        assert done.response["choices"][0]["message"]["content"] == "hi there"
    assert upstream.calls("bad") == 1  # cooled down after its 429
    fake_time.now += 31
    for _ in range(8):
        await engine.complete({"model": "gpt", "messages": MSG})
    assert upstream.calls("bad") == 2


def _quoting_the_key(code: int, in_band: bool = False, extra: str = "") -> Any:
    """An upstream whose error quotes the key it was sent, as some OpenAI-compatible
    servers do (OpenAI's own masks it)."""
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        sent = up.requests[-1][1].get("authorization", "").removeprefix("Bearer ")
        error = {"error": {"message": f"Incorrect API key provided: {sent}.{extra}"}}
        if in_band:
            sse_head(w)
            sse_event(w, json.dumps(error))
            w.write(b"0\r\n\r\n")
        else:
            send_json(w, code, error)
        return True
    return act


@pytest.mark.parametrize("key", ["x", "EMPTY"])
async def test_a_short_key_is_blanked_where_it_stands_alone_not_inside_words(
        upstream: Upstream, make_engine: EngineFactory, key: str) -> None:
    """Local servers take any key (`x`, vLLM's `EMPTY`): every occurrence was blanked, so
    "maximum context" read "ma[redacted]imum conte[redacted]t". A short key is blanked
    where it stands as a word of its own; the quoted key still is."""
    upstream.plan("a", _quoting_the_key(400, extra=" maximum context; EMPTYING x-ray"))
    models = config(upstream, "g@a")
    models["model_list"][0]["litellm_params"]["api_key"] = key
    engine = await make_engine(models)
    with pytest.raises(UpstreamError) as info:
        await engine.complete({"model": "g", "messages": MSG})
    text = str(info.value)
    assert "Incorrect API key provided: [redacted]." in text, text
    assert "maximum context; EMPTYING" in text, text


async def test_an_upstream_error_never_shows_the_callers_the_operators_key(
        upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("a", _quoting_the_key(401))
    upstream.plan("b", _quoting_the_key(400))
    upstream.plan("c", _quoting_the_key(200, in_band=True))
    models = config(upstream, "ga@a", "gb@b", "gc@c")
    for entry in models["model_list"]:
        entry["litellm_params"]["api_key"] = "sk-operator-secret-123"
    engine = await make_engine(models)
    said = []
    for model, kind in (("ga", AuthenticationError), ("gb", UpstreamError)):
        with pytest.raises(kind) as info:
            await engine.complete({"model": model, "messages": MSG})
        said.append(str(info.value))
    with pytest.raises(UpstreamError) as in_band:
        [e async for e in engine.stream({"model": "gc", "messages": MSG})]
    said.append(str(in_band.value))
    assert upstream.requests[0][1]["authorization"] == "Bearer sk-operator-secret-123"
    for text in said:
        assert "sk-operator-secret-123" not in text and "[redacted]" in text, text
