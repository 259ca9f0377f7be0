"""CompletionService over gRPC (completions, embeddings, text completions, streamed or
not): validate, call the engine, translate, map errors.

With a run store (`SCILLM_STORE_COMPLETIONS`), every routed call is kept, through the
run record every service keeps its runs with (`manifests.start_record`), written once,
when the call ends (a caller's own run id is claimed as it starts): its reply when it has
one, a stream's as the completion it made (each choice's text, tool calls and finish
reason, with the end's usage and routing); else, as an Agent run is, the call that failed
with the error its caller was sent (a `google.rpc.Status`: the run reads `failed`; the
server's own deadline is DEADLINE_EXCEEDED), and the call whose caller left (cancelled) as
`interrupted`, with what a stream had made so far as its event. Without a store, none of
this costs a call anything: each handler tests once whether there is a store.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from scillm.clients import openai_wire as wire
from scillm.completion.v1 import completion_pb2 as pb
from scillm.completion.v1 import completion_pb2_grpc

from ..charges import caller_models, report_usage_estimate, usage_estimate_wanted
from ..errors import BASE_TABLE, ErrorTable, StatusError
from ..interceptors import current_request_id
from ..manifests import ManifestClock, RunRecord, RunStore, StreamSoFar, start_record
from ..metrics import Metrics
from . import CompletionEngine, Routing, StreamEnd, errors
from ._estimate import chunk_chars, estimated_usage, prompt_chars, tokens
from ._shape import MISSHAPEN

__all__ = ["ERRORS", "CompletionServicer", "validate_request"]

R = TypeVar("R")

ERRORS: ErrorTable = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ContextWindowExceeded: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    errors.ProviderUnavailable: grpc.StatusCode.FAILED_PRECONDITION,
    errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UpstreamTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.UpstreamRejected: grpc.StatusCode.INVALID_ARGUMENT,  # the caller's, said upstream
    errors.UpstreamError: grpc.StatusCode.UNAVAILABLE,
    errors.CompletionError: grpc.StatusCode.UNKNOWN,
}

_MAX_N = 128

#: How a stored call's error reads (as the error-mapping interceptor sends it).
_TABLE: ErrorTable = {**BASE_TABLE, **ERRORS}


def _invalid(message: str, param: str) -> StatusError:
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, message, param=param)


def _unknown(param: str, value: int) -> StatusError:
    return _invalid(f"{param} {value} is not a value this server knows", param)


_ROLES = frozenset(pb.Role.values())
_TOOL_CHOICE_MODES = frozenset(pb.ToolChoiceMode.values())
_FORMAT_TYPES = frozenset(pb.ResponseFormatType.values())
_ENCODINGS = frozenset(pb.EmbeddingEncoding.values())


def _read_reply(convert: Callable[[Any], R], reply: Any, model: str) -> R:
    """`convert(reply)`, an upstream's reply in the contract's terms; UpstreamError (502)
    when the reply does not fit OpenAI's shape. Before, a reply with `"created":
    "yesterday"`, a `null` choice or a logprob of "high" was an INTERNAL error, and one
    whose message content was a number read as the caller's invalid request (400)."""
    try:
        return convert(reply)
    except MISSHAPEN as exc:
        raise errors.UpstreamError(f"the upstream's reply for {model!r} does not fit OpenAI's "
                                   f"shape: {exc}") from None


def _estimate_prompts(items: list[Any]) -> int:
    """Report the prompt tokens of an embedding's inputs or a text completion's prompts
    (texts estimated, token ids counted), charged if the call ends without the upstream's
    usage; those tokens (0 when no key is charged)."""
    if not usage_estimate_wanted():
        return 0
    prompt = sum(tokens(len(i)) if isinstance(i, str) else len(i) for i in items)
    report_usage_estimate(prompt, 0)
    return prompt


def validate_request(req: pb.CompletionRequest) -> None:
    """Refuse what the contract forbids, naming the field (the sampling numbers' ranges are
    the engine's to check, on the JSON: `_request.check`)."""
    if not req.model:
        raise _invalid("model is required", "model")
    if not req.messages:
        raise _invalid("messages must not be empty", "messages")
    for i, message in enumerate(req.messages):
        if message.role == pb.ROLE_UNSPECIFIED:
            raise _invalid(f"messages[{i}].role is ROLE_UNSPECIFIED", f"messages[{i}].role")
        if message.role not in _ROLES:
            raise _unknown(f"messages[{i}].role", message.role)
    # Values this server does not know (a newer client's) were read as the defaults.
    if req.HasField("tool_choice") and req.tool_choice.mode not in _TOOL_CHOICE_MODES:
        raise _unknown("tool_choice.mode", req.tool_choice.mode)
    if req.HasField("response_format") and req.response_format.type not in _FORMAT_TYPES:
        raise _unknown("response_format.type", req.response_format.type)
    if req.HasField("n") and not 1 <= req.n <= _MAX_N:
        raise _invalid(f"n must be between 1 and {_MAX_N}", "n")
    for name in ("max_tokens", "max_completion_tokens"):
        if req.HasField(name) and getattr(req, name) < 1:
            raise _invalid(f"{name} must be at least 1", name)


def routing_to_proto(routing: Routing, *, cache_hit: bool, overhead_s: float) -> pb.Routing:
    """The engine's routing record as a `Routing` message."""
    out = pb.Routing()
    _fill_routing(out, routing, cache_hit=cache_hit, overhead_s=overhead_s)
    return out


def _fill_routing(out: pb.Routing, routing: Routing, *, cache_hit: bool,
                  overhead_s: float) -> None:
    """`routing_to_proto` into `out` (in place: no message copied into its parent)."""
    out.deployment = routing.deployment
    out.provider = routing.provider
    out.fallback_used = routing.fallback_used
    out.fallback_model = routing.fallback_model
    out.attempts = routing.attempts
    out.strategy = routing.strategy
    out.cache_hit = cache_hit
    out.total_sleep.FromNanoseconds(int(routing.total_sleep_s * 1e9))
    if routing.last_retry_after_s is not None:
        out.last_retry_after.FromNanoseconds(int(routing.last_retry_after_s * 1e9))
    out.overhead.FromNanoseconds(int(max(overhead_s, 0.0) * 1e9))
    stats = routing.retry_stats
    if stats is not None:
        out.retry_stats.CopyFrom(pb.RetryStats(
            attempts=stats.attempts, failures=stats.failures, final_status=stats.final_status,
            first_failure_status=stats.first_failure_status, statuses=stats.statuses))
        out.retry_stats.total_sleep.FromNanoseconds(int(stats.total_sleep_s * 1e9))


class CompletionServicer(completion_pb2_grpc.CompletionServiceServicer):
    """Thin gRPC edge of the completion engine."""

    def __init__(self, engine: CompletionEngine, metrics: Metrics | None = None,
                 store: RunStore | None = None) -> None:
        self._engine = engine
        self._metrics = metrics
        self._store = store  # set to keep a manifest of every completion

    def _count(self, model: str, usage: Any, routing: Routing, cache_hit: bool,
               cache_lookup: bool) -> None:
        m = self._metrics
        if m is None:
            return
        model = m.model_label(model)
        if usage is not None:
            m.child(m.tokens, model, "prompt").inc(usage.prompt_tokens)
            m.child(m.tokens, model, "completion").inc(usage.completion_tokens)
        if cache_lookup:  # no cache configured, or left out by this call: nothing to count
            m.child(m.cache, "hit" if cache_hit else "miss").inc()
        if routing.attempts > 1:
            m.child(m.retries, model).inc(routing.attempts - 1)
        stats = routing.retry_stats  # a provider's own retries (codex-agent)
        if stats is not None and stats.attempts > 1:
            m.child(m.retries, model).inc(stats.attempts - 1)

    async def _record(self, clock: ManifestClock, request: Message) -> RunRecord:
        """A call's record (with a store only): written when the call ends, a caller's
        own run id claimed now (ALREADY_EXISTS when taken); an error kept as its caller
        is sent it."""
        return await start_record(self._store, clock, request, listed=False, errors=_TABLE)

    async def Completion(self, request: pb.CompletionRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.CompletionResponse:
        validate_request(request)
        clock = ManifestClock("completion", request.context, request_id=current_request_id(),
                              model=request.model)
        started = time.perf_counter()
        body = wire.request_from_proto(request)
        estimating = usage_estimate_wanted()  # charged to a virtual key (see _estimate)
        if estimating:  # what a caller who leaves now is charged
            report_usage_estimate(tokens(prompt_chars(body)), 0)
        record = None if self._store is None else await self._record(clock, request)
        try:
            done = await self._engine.complete(body)
            response = _read_reply(wire.response_to_proto, done.response, request.model)
            if estimating and not (response.usage.prompt_tokens or
                                   response.usage.completion_tokens):  # no usage reported
                report_usage_estimate(*estimated_usage(body, done.response))
            elapsed = time.perf_counter() - started
            # What the mesh itself added: all but the upstream calls and the retry sleeps.
            overhead = elapsed - done.routing.upstream_s - done.routing.total_sleep_s
            _fill_routing(response.routing, done.routing, cache_hit=done.cache_hit,
                          overhead_s=overhead)
            if done.json_valid is not None:
                response.json_valid = done.json_valid
            self._count(request.model, response.usage, done.routing, done.cache_hit,
                        done.cache_lookup)
            response.manifest.CopyFrom(clock.finish(provider=done.routing.provider))
            if record is not None:
                await record.keep(response.manifest, response)
            return response
        except BaseException as exc:
            if record is not None:
                await record.unfinished(exc)
            raise

    async def CompletionStream(
        self, request: pb.CompletionStreamRequest, context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.CompletionStreamResponse]:
        """Chunks as the engine reads them, then the end: usage, routing, manifest. The run
        is kept as the chat completion it made (its request, and each choice's text and
        tool calls joined), so that it shows as one; it replays as the stream it was."""
        inner = request.request
        validate_request(inner)
        clock = ManifestClock("completion", inner.context, request_id=current_request_id(),
                              model=inner.model)
        body = wire.request_from_proto(inner)
        body["stream"] = True
        if request.include_usage:
            body["stream_options"] = {"include_usage": True}
        last_id = ""
        # Charged to a virtual key if the stream ends without its usage (see _estimate).
        estimating = usage_estimate_wanted()
        prompt = tokens(prompt_chars(body)) if estimating else 0
        if estimating:  # a caller who leaves before the first chunk is charged the prompt
            report_usage_estimate(prompt, 0)
        streamed = 0
        # With a store: the run, and the completion it is kept as.
        record: RunRecord | None = None
        so_far: StreamSoFar | None = None
        if self._store is not None:
            record = await self._record(clock, request)
            so_far = StreamSoFar()
            record.made = so_far.chat_so_far
        try:
            async with contextlib.aclosing(self._engine.stream(body)) as events:
                async for event in events:
                    if isinstance(event, StreamEnd):
                        self._count(inner.model, wire.usage_to_proto(event.usage),
                                    event.routing, event.cache_hit, event.cache_lookup)
                        end = pb.CompletionStreamEnd(
                            id=last_id, usage=wire.usage_to_proto(event.usage),
                            routing=routing_to_proto(event.routing, cache_hit=event.cache_hit,
                                                     overhead_s=0.0),
                            manifest=clock.finish(provider=event.routing.provider))
                        if record is not None and so_far is not None:
                            await record.keep(end.manifest, so_far.chat(end))
                        yield pb.CompletionStreamResponse(end=end)
                        return
                    chunk = _read_reply(wire.chunk_to_proto, event.chunk, inner.model)
                    last_id = chunk.id
                    if so_far is not None:
                        so_far.add_chat(chunk)
                    if estimating:
                        streamed += chunk_chars(event.chunk)
                        report_usage_estimate(prompt, tokens(streamed))
                    yield pb.CompletionStreamResponse(chunk=chunk)
        except BaseException as exc:
            if record is not None:
                await record.unfinished(exc)
            raise

    async def Embedding(self, request: pb.EmbeddingRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.EmbeddingResponse:
        # The inputs' checks are the engine's (`_embeddings.check`): every door's alike.
        if not request.model:
            raise _invalid("model is required", "model")
        if request.encoding_format not in _ENCODINGS:
            raise _unknown("encoding_format", request.encoding_format)
        clock = ManifestClock("completion", request.context, request_id=current_request_id(),
                              model=request.model)
        started = time.perf_counter()
        body = wire.embedding_request_from_proto(request)
        _estimate_prompts(body["input"])
        record = None if self._store is None else await self._record(clock, request)
        try:
            done = await self._engine.embed(body)
            reply = pb.EmbeddingResponse(model=done.model,
                                         usage=wire.usage_to_proto(done.usage))
            for index, vector in enumerate(done.vectors):
                reply.data.add(index=index, embedding=vector)
            await self._finish(request, reply, done.routing, clock, started, record)
            return reply
        except BaseException as exc:
            if record is not None:
                await record.unfinished(exc)
            raise

    async def TextCompletion(self, request: pb.TextCompletionRequest,
                             context: grpc.aio.ServicerContext[Any, Any],
                             ) -> pb.TextCompletionResponse:
        # The prompts' and numbers' checks are the engine's (`_text.check`).
        if not request.model:
            raise _invalid("model is required", "model")
        clock = ManifestClock("completion", request.context, request_id=current_request_id(),
                              model=request.model)
        started = time.perf_counter()
        body = wire.text_request_from_proto(request)
        _estimate_prompts(body["prompt"])
        record = None if self._store is None else await self._record(clock, request)
        try:
            done = await self._engine.text_complete(body)
            reply = wire.text_response_to_proto(done)
            reply.usage.CopyFrom(wire.usage_to_proto(done.usage))
            await self._finish(request, reply, done.routing, clock, started, record)
            return reply
        except BaseException as exc:
            if record is not None:
                await record.unfinished(exc)
            raise

    async def TextCompletionStream(
        self, request: pb.TextCompletionStreamRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.TextCompletionStreamResponse]:
        """Chunks as the engine reads them, then the end: usage, routing, manifest. The run
        is kept as the text completion it made (its request, and each choice's text
        joined), so that it replays as one (`TextCompletion`) and shows as one."""
        inner = request.request
        if not inner.model:
            raise _invalid("model is required", "model")
        clock = ManifestClock("completion", inner.context, request_id=current_request_id(),
                              model=inner.model)
        body = wire.text_request_from_proto(inner)
        # Charged to a virtual key if the stream ends without its usage (see _estimate):
        # the prompts from the start, and what has streamed as it goes.
        prompt = _estimate_prompts(body["prompt"])
        estimating = usage_estimate_wanted()
        streamed = 0
        last = pb.TextCompletionChunk()
        # With a store: the run, and the completion it is kept as.
        record: RunRecord | None = None
        so_far: StreamSoFar | None = None
        if self._store is not None:
            record = await self._record(clock, inner)
            so_far = StreamSoFar()
            record.made = so_far.text_so_far
        try:
            async with contextlib.aclosing(self._engine.text_stream(body)) as events:
                async for event in events:
                    if isinstance(event, StreamEnd):
                        usage = wire.usage_to_proto(event.usage)
                        self._count(inner.model, usage, event.routing, False, False)
                        end = pb.CompletionStreamEnd(
                            id=last.id, usage=usage,
                            routing=routing_to_proto(event.routing, cache_hit=False,
                                                     overhead_s=0.0),
                            manifest=clock.finish(provider=event.routing.provider))
                        if record is not None and so_far is not None:
                            await record.keep(end.manifest, so_far.text(end))
                        yield pb.TextCompletionStreamResponse(end=end)
                        return
                    chunk = wire.text_chunk_to_proto(event.chunk)
                    last = chunk
                    if so_far is not None:
                        so_far.add_text(chunk)
                    if estimating:
                        streamed += sum(len(choice.text) for choice in chunk.choices)
                        report_usage_estimate(prompt, tokens(streamed))
                    yield pb.TextCompletionStreamResponse(chunk=chunk)
        except BaseException as exc:
            if record is not None:
                await record.unfinished(exc)
            raise

    async def _finish(self, request: Any, reply: Any, routing: Routing, clock: ManifestClock,
                      started: float, record: RunRecord | None) -> None:
        """A unary reply's routing, metrics, manifest and kept run (embeddings, text)."""
        _fill_routing(reply.routing, routing, cache_hit=False, overhead_s=(
            time.perf_counter() - started - routing.upstream_s - routing.total_sleep_s))
        self._count(request.model, reply.usage, routing, False, False)
        reply.manifest.CopyFrom(clock.finish(provider=routing.provider))
        if record is not None:
            await record.keep(reply.manifest, reply)

    async def GetModel(self, request: pb.GetModelRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetModelResponse:
        # A key limited to other models was refused by the interceptor (403), as for a call.
        return pb.GetModelResponse(model=pb.Model(
            id=request.model, owned_by="scillm",
            deployments=self._engine.deployments_of(request.model)))

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListModelsResponse:
        allowed = caller_models()  # a key limited to some models lists those it may call
        names = (self._engine.model_names() if allowed is None
                 else [m for m in allowed if self._engine.serves(m)])
        return pb.ListModelsResponse(models=[pb.Model(id=name, owned_by="scillm")
                                             for name in names])
