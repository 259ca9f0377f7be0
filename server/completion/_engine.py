"""The Completion engine: cache, router, retries, fallbacks and output checks."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import httpx

from ..deadline import Deadline
from . import _embeddings, _output, _request, _text
from ._cache import MemoryCache, RedisCache, ResponseCache, assemble
from ._embeddings import Embedded
from ._provider import Provider, ProviderCall
from ._retry import RetryHooks, backoff_delay, is_retryable
from ._router import DeploymentState, Group, Router
from ._settings import CompletionSettings
from ._shape import reply_fits
from ._text import TextCompleted
from ._types import CacheStats, Completed, Routing, StreamChunk, StreamEnd, StreamEvent
from ._usage import clean_usage
from .errors import (
    AuthenticationError,
    CompletionError,
    ContextWindowExceeded,
    InvalidRequest,
    ModelNotFound,
    ProviderUnavailable,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = ["CompletionEngine"]

T = TypeVar("T")


class _Served(Protocol):
    """What `_routed` serves: a result with the upstream's usage and its routing."""

    usage: dict[str, Any] | None
    routing: Routing


S = TypeVar("S", bound=_Served)
_NO_HOOKS = RetryHooks()
#: A text stream's attempt, opened: its reader, first chunk, the rest, its deployment and
#: the seconds to the first chunk.
_OpenedText = tuple["_text.StreamReader", dict[str, Any] | None,
                    AsyncGenerator[Any, None], DeploymentState, float]
#: What `anext` gives back for a stream that has ended.
_ENDED: Any = object()
#: A text completion request's keys that `text_stream` sets itself.
_STREAM_KEYS = frozenset({"stream", "stream_options"})


class CompletionEngine:
    """Serves OpenAI chat completion requests over the configured deployments.

    `rng`, `clock` and `sleep` are injectable so routing and backoff are deterministic
    in tests; `transport` replaces the network of the HTTP providers.
    """

    def __init__(self, settings: CompletionSettings, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 hooks: RetryHooks = _NO_HOOKS,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self._sleep = sleep
        self._hooks = hooks
        self._transport = transport
        self._rng = rng or random.Random()
        self._router = Router(settings.model_list, settings.router, self._rng, clock)
        self._providers: dict[str, Provider] = {}
        self._cache: ResponseCache | None = None
        self._strategy = settings.router.routing_strategy

    async def start(self) -> None:
        """Open the cache backend. Providers start lazily on first use."""
        cs = self.settings.cache
        if cs.enabled and self._cache is None:
            backend = RedisCache(cs) if cs.backend == "redis" else MemoryCache(cs.max_entries)
            self._cache = ResponseCache(cs, backend)

    async def close(self) -> None:
        """Close pooled connections, worker threads and the cache."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.close()
        if self._cache is not None:
            cache, self._cache = self._cache, None
            await cache.close()

    def model_names(self) -> list[str]:
        """The configured `model_name` values (wildcards included), for /v1/models."""
        return self._router.model_names()

    def deployments_of(self, model: str) -> int:
        """How many deployments serve `model`; ModelNotFound (with close names) if none,
        InvalidRequest for a name no caller may ask for."""
        model = _request.check_model(model)
        listed = self._router.pattern(model)  # a wildcard, as /v1/models lists it
        return listed if listed is not None else len(self._router.group(model).deployments)

    def serves(self, model: str) -> bool:
        """Whether `model` names a deployment group (exactly, or through a wildcard), or is
        a wildcard pattern itself."""
        if self._router.pattern(model) is not None:
            return True
        try:
            self._router.group(model)
        except (ModelNotFound, InvalidRequest):
            return False
        return True

    def cache_stats(self) -> CacheStats | None:
        """Hit/miss/store counters, or None when caching is off."""
        return self._cache.stats() if self._cache is not None else None

    async def complete(self, request: dict[str, Any]) -> Completed:
        """Serve a non-streaming request; returns a `chat.completion` and its routing."""
        model = _request.check(request)
        opts = _request.options(request)
        body = _request.upstream_body(request, opts)
        fmt = body.get("response_format")
        self._router.group(model)  # ModelNotFound before touching the cache
        cache, key = self._cache_for(opts), None
        if cache is not None:
            key = cache.key(model, body, opts.cache_namespace)
            if not opts.cache_bypass:
                hit = await cache.get(key, opts.cache_max_age_s)
                if hit is not None:
                    return Completed(hit, self._cache_routing(), True,
                                     _output.json_validity(hit, fmt), cache_lookup=True)
        routing = Routing(strategy=self._strategy)

        async def timed(provider: Provider, call: ProviderCall,
                        state: DeploymentState) -> dict[str, Any]:
            started = time.perf_counter()
            try:
                return await self._call_complete(provider, call, state)
            finally:
                routing.upstream_s += time.perf_counter() - started

        response = await self._with_fallbacks(model, body, opts, routing, timed, stream=False)
        valid = _output.json_validity(response, fmt)
        # Not a reply the servicer refuses (502): every identical call would be refused
        # from the cache, however well the upstream answered again.
        if cache is not None and key is not None and not opts.cache_no_store \
                and valid is not False and reply_fits(response):
            await cache.set(key, response, opts.cache_ttl_s)
        return Completed(response, routing, False, valid,
                         cache_lookup=cache is not None and not opts.cache_bypass)

    async def embed(self, request: dict[str, Any]) -> Embedded:
        """Serve an embeddings request (`_embeddings`): one vector per input, routed with
        the same retries, fallbacks, timeouts and cooldowns as a completion."""
        model = _request.check_model(request.get("model"))
        inputs = _embeddings.check(request)
        return await self._routed(
            model, _embeddings.upstream_body(request), _request.options(request),
            lambda provider, call: _embeddings.attempt(provider, call, inputs))

    async def text_complete(self, request: dict[str, Any]) -> TextCompleted:
        """Serve a text completion (`_text`, OpenAI's legacy `/completions`): a
        continuation per prompt and `n`, routed as `embed` is."""
        model = _request.check_model(request.get("model"))
        choices = _text.check(request)
        return await self._routed(
            model, _text.upstream_body(request), _request.options(request),
            lambda provider, call: _text.attempt(provider, call, choices))

    async def text_stream(self, request: dict[str, Any]) -> AsyncGenerator[StreamEvent, None]:
        """Serve a streamed text completion (`_text`): `StreamChunk`s, each OpenAI's
        `text_completion` chunk read strictly (`_text.StreamReader`), then one `StreamEnd`
        with the upstream's usage. Routed as `stream` is: retries and fallbacks happen only
        before the first chunk (a first chunk of the wrong shape is the upstream's failure,
        tried again); after it an upstream failure is raised from the iterator. Never
        cached. Closing the iterator closes the upstream request at once.

        `stream` and `stream_options` in `request` are not the caller's to set: this call
        streams, and asks the upstream for its usage."""
        request = {k: v for k, v in request.items() if k not in _STREAM_KEYS}
        model = _request.check_model(request.get("model"))
        expected = _text.check(request)
        if request.get("best_of") not in (None, 1):  # as OpenAI: candidates are not streamed
            raise InvalidRequest("best_of cannot be used with a stream: the upstream picks "
                                 "the best of its candidates once they are all written",
                                 param="best_of")
        opts = _request.options(request)
        body = _text.upstream_body(request)
        routing = Routing(strategy=self._strategy)

        async def open_stream(provider: Provider, call: ProviderCall, state: DeploymentState,
                              ) -> _OpenedText:
            return await self._open_text_stream(provider, call, state, expected)

        opened = await self._with_fallbacks(model, body, opts, routing, open_stream,
                                            stream=True)
        reader, chunk, chunks, state, latency = opened
        settled = False
        try:
            async with aclosing(chunks):
                while True:
                    if chunk is not None:
                        yield StreamChunk(chunk)
                    raw = await anext(chunks, _ENDED)
                    if raw is _ENDED:
                        break
                    chunk = reader.read(raw)
                reader.end()
            settled = True
            self._router.succeeded(state, latency,
                                   int((reader.usage or {}).get("total_tokens") or 0))
        except CompletionError as exc:
            settled = True
            self._router.failed(state, exc)
            raise
        finally:
            if not settled:  # cancelled by the consumer: neither success nor failure
                self._router.release(state)
        yield StreamEnd(reader.usage, routing, False)

    async def _open_text_stream(self, provider: Provider, call: ProviderCall,
                                state: DeploymentState, expected: int) -> _OpenedText:
        """One attempt of `text_stream`: the provider's stream, read up to its first chunk
        with a choice within the call's timeout."""
        chunks = _text.stream_of(provider, call)
        reader = _text.StreamReader(call, expected)
        started = self._clock()
        first: dict[str, Any] | None = None
        try:
            async with Deadline(call.timeout_s):
                while first is None:
                    raw = await anext(chunks, _ENDED)
                    if raw is _ENDED:
                        reader.end()  # raises: no choice has finished
                        break
                    first = reader.read(raw)
        except TimeoutError:
            await _aclose(chunks)
            raise UpstreamTimeout(f"{call.deployment.id} sent nothing within "
                                  f"{call.timeout_s:g}s") from None
        except BaseException:
            await _aclose(chunks)
            raise
        latency = self._clock() - started
        if self._hooks.on_success is not None:
            self._hooks.on_success(call.deployment.id, latency)
        return reader, first, chunks, state, latency

    async def _routed(self, model: str, body: dict[str, Any], opts: _request.Options,
                      attempt: Callable[[Provider, ProviderCall], Awaitable[S]]) -> S:
        """A call other than chat's (embeddings, text), routed with chat's retries,
        fallbacks and cooldowns: `attempt` once per try within the call's timeout, its
        success recorded as a completion's; the result's routing filled in."""
        routing = Routing(strategy=self._strategy)

        async def once(provider: Provider, call: ProviderCall, state: DeploymentState) -> S:
            started, clock = time.perf_counter(), self._clock()
            try:
                async with Deadline(call.timeout_s):
                    done = await attempt(provider, call)
            except TimeoutError:
                raise UpstreamTimeout(f"{call.deployment.id} did not answer within "
                                      f"{call.timeout_s:g}s") from None
            finally:
                routing.upstream_s += time.perf_counter() - started
            latency = self._clock() - clock
            self._router.succeeded(state, latency, int((done.usage or {}).get(
                "total_tokens") or 0))
            if self._hooks.on_success is not None:
                self._hooks.on_success(call.deployment.id, latency)
            return done

        done = await self._with_fallbacks(model, body, opts, routing, once, stream=False)
        done.routing = routing
        return done

    async def stream(self, request: dict[str, Any]) -> AsyncGenerator[StreamEvent, None]:
        """Serve a streaming request: `StreamChunk`s, then one `StreamEnd`.

        Retries and fallbacks happen only before the first chunk; after it, an upstream
        failure is raised from the iterator. Closing the iterator (or cancelling its
        consumer) closes the upstream request at once.
        """
        model = _request.check(request)
        opts = _request.options(request)
        body = _request.upstream_body(request, opts)
        fmt = body.get("response_format")
        self._router.group(model)
        cache, key = self._cache_for(opts), None
        if cache is not None:
            key = cache.key(model, body, opts.cache_namespace, stream=True)
            if not opts.cache_bypass:
                hit = await cache.get(key, opts.cache_max_age_s)
                if hit is not None:  # an earlier stream, chunk by chunk as it came
                    kept, stored_usage = list(hit.get("chunks") or ()), hit.get("usage")
                    for chunk in kept:
                        yield StreamChunk(chunk)
                    valid = (None if fmt is None
                             else _output.json_validity(assemble(kept, stored_usage), fmt))
                    yield StreamEnd(stored_usage, self._cache_routing(), True, valid,
                                    cache_lookup=True)
                    return
        routing = Routing(strategy=self._strategy)
        opened = await self._with_fallbacks(model, body, opts, routing, self._open_stream,
                                            stream=True)
        first, chunks, state, started = opened
        store = key is not None and not opts.cache_no_store
        keep: list[dict[str, Any]] | None = [] if store or fmt is not None else None
        usage: dict[str, Any] | None = None
        halves: dict[tuple[Any, str], str] | None = None  # see `_join_halves`
        settled = False
        try:
            async with aclosing(chunks):
                item: dict[str, Any] | None = first
                while item is not None:
                    chunk = item
                    if chunk.get("usage") is not None:  # alone, or on the finish chunk
                        usage = clean_usage(chunk["usage"], state.settings.id)
                    if halves is not None or _SURROGATE.search(_texts(chunk)):
                        halves = _join_halves(chunk, {} if halves is None else halves)
                    if chunk.get("choices") or chunk.get("usage") is None:
                        if keep is not None:
                            keep.append(chunk)
                        yield StreamChunk(chunk)
                    item = await anext(chunks, None)
            settled = True
            self._router.succeeded(state, started, int((usage or {}).get("total_tokens") or 0))
        except CompletionError as exc:
            settled = True
            self._router.failed(state, exc)
            raise
        finally:
            if not settled:  # cancelled by the consumer: neither success nor failure
                self._router.release(state)
        valid = None if fmt is None else _output.json_validity(assemble(keep or [], usage), fmt)
        if store and cache is not None and key is not None and valid is not False:
            await cache.set(key, {"chunks": keep, "usage": usage}, opts.cache_ttl_s)
        yield StreamEnd(usage, routing, False, valid,
                        cache_lookup=cache is not None and not opts.cache_bypass)

    def _cache_for(self, opts: _request.Options) -> ResponseCache | None:
        """The cache when this call uses it: configured, and on by default or opted in."""
        cache = self._cache
        if cache is None:
            return None
        use = opts.cache_enabled
        if use is None:
            use = self.settings.cache.default_on
        return cache if use else None

    def _cache_routing(self) -> Routing:
        return Routing(deployment="cache", provider="cache", strategy=self._strategy)

    # Fallbacks, then retries within one model name.

    async def _with_fallbacks(
        self, model: str, body: dict[str, Any], opts: _request.Options, routing: Routing,
        call: Callable[[Provider, ProviderCall, DeploymentState], Awaitable[T]], *,
        stream: bool,
    ) -> T:
        rs = self.settings.router
        deadline = self._clock() + rs.retry_budget_s
        queue, seen = [model], {model}
        error: CompletionError | None = None
        first: CompletionError | None = None  # the model asked for: why it failed
        while queue:
            name = queue.pop(0)
            try:
                group = self._router.group(name)
                result = await self._with_retries(group, body, opts, routing, deadline, call,
                                                  stream=stream)
            except ContextWindowExceeded as exc:
                error, more = exc, rs.context_window_fallbacks.get(model, ())
            except (UpstreamError, ProviderUnavailable, AuthenticationError) as exc:
                if isinstance(exc, UpstreamError) and exc.status in (400, 404, 422):
                    raise
                error = exc
                more = opts.fallbacks if opts.fallbacks is not None else (
                    rs.fallbacks.get(model) or rs.fallbacks.get("*", ()))
            except ModelNotFound:
                if name == model:
                    raise
                continue  # a misconfigured fallback: skip it
            else:
                if name != model:
                    routing.fallback_used, routing.fallback_model = True, name
                return result
            if name == model:  # fallbacks are not nested: no loops, bounded work
                first = error
                queue.extend(m for m in more if m not in seen)
                seen.update(more)
        assert error is not None
        if first is not None and error is not first:
            error.after(model, first)
        raise error

    async def _with_retries(
        self, group: Group, body: dict[str, Any], opts: _request.Options, routing: Routing,
        deadline: float, call: Callable[[Provider, ProviderCall, DeploymentState], Awaitable[T]],
        *, stream: bool,
    ) -> T:
        rs = self.settings.router
        retries = opts.num_retries if opts.num_retries is not None else rs.num_retries
        hooks = self._hooks
        attempt = 0
        tried: list[DeploymentState] = []  # deployments this request called, in order
        while True:
            state: DeploymentState | None = None
            begun = False
            try:
                state = self._router.pick(group, tried)
                dep = state.settings
                provider = self._provider(dep.provider)
                timeout = (opts.timeout_s or (dep.stream_timeout_s if stream else None)
                           or dep.timeout_s or rs.timeout_s)
                pcall = ProviderCall(dep, group.upstream_model(dep), body, timeout, routing)
                routing.attempts += 1
                routing.deployment, routing.provider = dep.id, provider.name
                self._router.begin(state)
                begun = True
                return await call(provider, pcall, state)
            except CompletionError as exc:
                if begun and state is not None:
                    self._router.failed(state, exc)
                if isinstance(exc, UpstreamError) and exc.retry_after_s is not None:
                    routing.last_retry_after_s = exc.retry_after_s
                if hooks.on_failure is not None and state is not None:
                    hooks.on_failure(state.settings.id, exc)
                if attempt >= retries or not is_retryable(exc):
                    raise
                if state is not None:
                    tried.append(state)
                if self._router.untried_ready(group, tried):
                    delay = 0.0  # another deployment is free: go there now
                else:  # only a deployment already called (or none) is left: back off
                    delay = backoff_delay(
                        attempt, self._rng, base_s=rs.backoff_base_s, max_s=rs.backoff_max_s,
                        retry_after_s=exc.retry_after_s if isinstance(exc, UpstreamError)
                        else None, min_s=rs.retry_after_s)
                if self._clock() + delay > deadline:
                    raise
                if hooks.on_retry is not None:
                    hooks.on_retry(state.settings.id if state else group.name, attempt + 1,
                                   delay, exc)
                attempt += 1
                if delay > 0:
                    routing.total_sleep_s += delay
                    await self._sleep(delay)
            except BaseException:
                if begun and state is not None:
                    self._router.release(state)
                raise

    async def _call_complete(self, provider: Provider, call: ProviderCall,
                             state: DeploymentState) -> dict[str, Any]:
        started = self._clock()
        try:
            async with Deadline(call.timeout_s):
                try:
                    response = await provider.complete(call)
                except UpstreamError as exc:
                    if not _schema_rejected(exc, call):
                        raise
                    response = await provider.complete(
                        replace(call, body=_output.json_object_body(call.body)))
        except TimeoutError:
            raise UpstreamTimeout(f"{call.deployment.id} did not answer within "
                                  f"{call.timeout_s:g}s") from None
        latency = self._clock() - started
        if "usage" in response:
            response["usage"] = clean_usage(response["usage"], call.deployment.id)
        tokens = int((response.get("usage") or {}).get("total_tokens") or 0)
        self._router.succeeded(state, latency, tokens)
        if self._hooks.on_success is not None:
            self._hooks.on_success(call.deployment.id, latency)
        return response

    async def _open_stream(
        self, provider: Provider, call: ProviderCall, state: DeploymentState,
    ) -> tuple[dict[str, Any] | None, AsyncGenerator[dict[str, Any], None], DeploymentState, float]:
        started = self._clock()
        chunks = provider.stream(call)
        try:
            async with Deadline(call.timeout_s):
                try:
                    first = await anext(chunks, None)
                except UpstreamError as exc:
                    if not _schema_rejected(exc, call):
                        raise
                    await _aclose(chunks)
                    chunks = provider.stream(
                        replace(call, body=_output.json_object_body(call.body)))
                    first = await anext(chunks, None)
        except TimeoutError:
            await _aclose(chunks)
            raise UpstreamTimeout(f"{call.deployment.id} sent nothing within "
                                  f"{call.timeout_s:g}s") from None
        except BaseException:
            await _aclose(chunks)
            raise
        latency = self._clock() - started
        if self._hooks.on_success is not None:
            self._hooks.on_success(call.deployment.id, latency)
        return first, chunks, state, latency

    def _provider(self, kind: str) -> Provider:
        provider = self._providers.get(kind)
        if provider is None:
            provider = _make_provider(kind, self._transport)
            self._providers[kind] = provider
        return provider


def _schema_rejected(exc: UpstreamError, call: ProviderCall) -> bool:
    return (exc.status == 400 and not isinstance(exc, ContextWindowExceeded)
            and _output.wants_json_schema(call.body))


async def _aclose(chunks: AsyncGenerator[dict[str, Any], None]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def _make_provider(kind: str, transport: httpx.AsyncBaseTransport | None) -> Provider:
    if kind == "echo":
        from ._echo import EchoProvider

        return EchoProvider()
    if kind == "openai":
        from ._openai import OpenAIProvider

        return OpenAIProvider(transport)
    if kind == "anthropic":
        from ._anthropic import AnthropicProvider

        return AnthropicProvider(transport)
    if kind == "local":
        from ._local import LocalProvider

        return LocalProvider()
    if kind == "codex-agent":
        from ._codex_agent import CodexAgentProvider

        return CodexAgentProvider(transport)
    from ._litellm import LiteLLMProvider

    return LiteLLMProvider(kind)


#: A UTF-16 surrogate: half of a character, which no protobuf string (nor UTF-8) holds.
_SURROGATE = re.compile("[\ud800-\udfff]")
_DELTA_TEXTS = ("content", "refusal", "reasoning_content")


def _texts(chunk: dict[str, Any]) -> str:
    """The delta texts of `chunk`, joined (to look for surrogates in one search)."""
    out: list[str] = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict):
            out.extend(t for key in _DELTA_TEXTS if isinstance(t := delta.get(key), str))
    return "".join(out)


def _join_halves(chunk: dict[str, Any], held: dict[tuple[Any, str], str],
                 ) -> dict[tuple[Any, str], str]:
    """Join surrogate pairs an upstream cut between chunks (it escaped the text as UTF-16:
    `"\\ud83d"`, then `"\\ude00"`), in place: a text ending in a high half keeps it for
    the same choice's next text; a half without its other half becomes U+FFFD (one still
    waiting when the stream ends is dropped). `held` is what waits, by (choice index,
    field); returned for the next chunk."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        for key in _DELTA_TEXTS:
            text = delta.get(key)
            if not isinstance(text, str):
                continue
            text = held.pop((choice.get("index"), key), "") + text
            if text and "\ud800" <= text[-1] <= "\udbff":
                held[(choice.get("index"), key)] = text[-1]
                text = text[:-1]
            delta[key] = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return held
