"""The server interceptors, built in one place and applied in one explicit order.

    1. OpenTelemetry (opentelemetry-instrumentation-grpc), only when OTEL_* is configured
    2. CallContext: request id (accepted from `x-request-id` or created, sent back in the
       initial metadata), keys (authorization metadata checked, token usage accounted,
       but for a reply from the response cache, which costs nothing; a virtual key's
       caller kept for the call in `charges`; a completion's estimate reserved of its
       key's budget and tokens per minute until it ends),
       a default deadline for calls that carry none, metrics, and error mapping
       (domain errors -> canonical status codes with google.rpc.Status details; bytes
       that are not the method's request -> INVALID_ARGUMENT)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from scillm.clients.ids import new_id

from . import charges, grace_end
from .deadline import Deadline
from .errors import BASE_TABLE, ErrorTable, StatusError, status_for, to_status
from .keys import Authenticator, Principal, Reservation, token_from_metadata
from .metrics import Metrics, RpcMetrics
from .request_facts import charged_model, estimate_of, fallbacks_of, model_of
from .settings import Settings

__all__ = ["CallContext", "build_interceptors", "current_request_id"]

log = logging.getLogger("scillm.server")

#: RPCs that need no key: health checks and reflection.
_OPEN_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
#: The one key-management RPC a virtual key may make, for itself (`reads_itself`).
_GET_KEY = "/scillm.keys.v1.KeyService/GetKey"
#: The services a key's `models` must name to use them (as the door's model names do), by
#: their methods' prefix: their runs call no model a key would otherwise be checked for.
_NAMED_SERVICES = (("/scillm.prove.v1.ProveService/", "certainly"),
                   ("/scillm.codeworld.v1.CodeWorldService/", "codeworld"))
#: RPCs whose usage a key pays: Completion's. The model calls other services make for a
#: caller are charged one by one (`charges.charge_model_call`), so their replies are not.
_CHARGED = "/scillm.completion."
#: RPCs that reserve an estimate of what they use of their key's budget and tokens per
#: minute while they run (`_estimate`), so that calls in flight together cannot all pass.
_RESERVING = frozenset(("/scillm.completion.v1.CompletionService/Completion",
                        "/scillm.completion.v1.CompletionService/CompletionStream",
                        "/scillm.completion.v1.CompletionService/Embedding",
                        "/scillm.completion.v1.CompletionService/TextCompletion",
                        "/scillm.completion.v1.CompletionService/TextCompletionStream"))
#: `_authorize`'s answer for a call no key checks.
_NOBODY: tuple[None, None] = (None, None)

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("scillm_request_id",
                                                                  default="")


def current_request_id() -> str:
    """The request id of the call being served (empty outside a call)."""
    return _request_id.get()


def _incoming_request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)[:128]
    return new_id()


class _Undecodable:
    """What the handler gets for bytes that are not its method's request (`_parsing`)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _parsing(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserialize`, which hands the handler an `_Undecodable` instead of raising: gRPC's
    servers answer a request that does not parse INTERNAL ("Exception deserializing
    request!") and log its traceback, so garbage from a caller filled the server's log.
    It is the caller's error: the call answers INVALID_ARGUMENT, counted and id'd."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, or whatever a deserializer raises
            return _Undecodable(f"the request does not parse: {exc}")
    return parse


class CallContext(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Request id, default deadline and error mapping for every RPC."""

    #: Every call of a method gets the same wrapped handler (the per-call work is inside
    #: it), so an in-process channel may resolve a method once (`LocalChannel`).
    handler_per_method = True

    def __init__(self, settings: Settings, table: ErrorTable,
                 metrics: Metrics | None = None, auth: Authenticator | None = None) -> None:
        self._unary_timeout = settings.default_unary_timeout_s
        self._stream_timeout = settings.default_stream_timeout_s
        self._table = {**BASE_TABLE, **table}
        self._metrics = metrics
        self._auth = auth if auth is not None and auth.enabled else None
        self._max_streams = settings.max_streams_per_key
        self._open_streams: dict[str, int] = {}
        #: Calls inside `_Served` (their handlers' cleanup included), and what `idle`
        #: waits on when some are.
        self._running = 0
        self._idle: asyncio.Event | None = None
        # The wrapped handler by full method name, with the handler it wraps.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any], full_method: str,
                         request: Any) -> tuple[Principal | None, Reservation | None]:
        """The caller, checked for this call (None when keys are off or for open RPCs),
        and what the call reserves of its key's limits, to release when it ends."""
        if self._auth is None or full_method.startswith(_OPEN_PREFIXES):
            return _NOBODY
        principal = await self._auth.authenticate(
            token_from_metadata(context.invocation_metadata()))
        if full_method == _GET_KEY and type(request) is not _Undecodable and \
                self._auth.reads_itself(principal, request.key):
            return principal, None  # a virtual key reads its own spend and limits
        record = principal.record
        service = ""
        if record is not None and record.models:
            service = next((name for prefix, name in _NAMED_SERVICES
                            if full_method.startswith(prefix)), "")
        reservation = await self._auth.authorize(
            principal, model=model_of(request), service=service,
            # The models a caller names to answer if its model fails are models it calls.
            fallbacks=fallbacks_of(request) if record is not None and record.models else (),
            management=full_method.startswith("/scillm.keys."),
            estimate=estimate_of(request) if record is not None and full_method in _RESERVING
            and (record.max_budget or record.tpm_limit) else None)
        return principal, reservation

    @staticmethod
    async def _account(held: charges.Caller, request: Any, reply: Any) -> bool:
        """Charge `reply`'s usage to the caller's (virtual) key; whether it carried any.
        A reply from the response cache is charged nothing: it cost nothing upstream (the
        cache said so, `charges.report_cache_hit`, and the reply says so too)."""
        usage = getattr(reply, "usage", None)
        routing = None
        if usage is None and getattr(reply, "end", None) is not None and reply.HasField("end"):
            usage, routing = reply.end.usage, reply.end.routing
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            if routing is None:
                routing = getattr(reply, "routing", None)
            if held.cache_hit or (routing is not None and routing.cache_hit):
                return True
            # Shielded: tokens spent upstream are counted even if the caller leaves now.
            await asyncio.shield(held.auth.account(held.principal, charged_model(request, reply),
                                                   usage.prompt_tokens,
                                                   usage.completion_tokens))
            return True
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full = handler_call_details.method
        # A service's handler is one object per method: wrap it once, not on every call.
        cached = self._wrapped.get(full)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, full)
        if len(self._wrapped) >= 1024:  # methods are few; bound it anyway
            self._wrapped.clear()
        self._wrapped[full] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full: str) -> grpc.RpcMethodHandler:
        method = full.rsplit(".", 1)[-1]  # Service/Method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method=method, full=full),
                request_deserializer=_parsing(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            behavior = handler.unary_stream
            # A streaming behavior is an async generator, or a coroutine using context.write
            wrapped = (self._wrap_stream(behavior, method, full)
                       if inspect.isasyncgenfunction(behavior)
                       else self._wrap_unary(behavior, self._stream_timeout, method=method,
                                             full=full))
            return grpc.unary_stream_rpc_method_handler(
                wrapped,
                request_deserializer=_parsing(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        return handler

    def _timeout(self, context: grpc.aio.ServicerContext[Any, Any],
                 default: float) -> float | None:
        """The timer a call needs: `default` when the caller set no deadline or a later
        one; None when the caller's deadline comes first, since gRPC cancels the call
        then (a timer of our own would only cost, ~30 µs per call)."""
        remaining = context.time_remaining()
        return None if remaining is not None and remaining <= default else default

    def _map(self, exc: BaseException,
             request_id: str) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
        """Status code, message and trailing metadata (google.rpc.Status) for `exc`."""
        told: BaseException | None = exc  # what the details may say of it
        if isinstance(exc, TimeoutError):
            code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "the call ran past its deadline"
        else:
            maybe = status_for(exc, self._table)
            if maybe is None:
                log.exception("request %s failed unexpectedly", request_id, exc_info=exc)
                code = grpc.StatusCode.INTERNAL
                message = f"internal error (request id {request_id})"
                told = None  # nothing of it goes out, not even its class: the log has it
            else:
                code, message = maybe, str(exc) or type(exc).__name__
        message, details = to_status(code, message, told, request_id)
        return code, message, (("grpc-status-details-bin", details),
                               ("x-request-id", request_id))

    async def idle(self, timeout: float) -> bool:
        """Wait, at most `timeout` seconds, until no call is inside its handler (a stopped
        server's cancelled handlers still running their cleanup: grpcio's returns from its
        stop before they end, and a prove run stored as interrupted was then written after
        the mesh had closed its store). Whether none is."""
        if self._running:
            self._idle = self._idle or asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        return not self._running

    def _served(self, context: grpc.aio.ServicerContext[Any, Any], method: str,
                request: Any) -> _Served:
        """One RPC: its request id, its metrics, and its errors mapped to a status."""
        return _Served(self, context, method, request)

    def _wrap_unary(self, behavior: Callable[..., Any], default_timeout: float | None = None,
                    *, method: str = "", full: str = "") -> Callable[..., Any]:
        limit = self._unary_timeout if default_timeout is None else default_timeout
        charged = full.startswith(_CHARGED)

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            reply: Any = None
            async with self._served(context, method, request):
                if type(request) is _Undecodable:
                    raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                principal, reservation = (_NOBODY if self._auth is None  # keys off: no
                                          else await self._authorize(context, full, request))
                held = token = None
                if principal is not None:
                    # Always set, None too: an in-process call runs in its caller's context,
                    # and a call with the master key must not charge the key outside it.
                    held = self._caller(principal)
                    token = charges.current.set(held)
                deadline: Deadline | None = None
                try:
                    try:
                        timeout = self._timeout(context, limit)
                        if timeout is None:
                            reply = await behavior(request, context)
                        else:
                            async with Deadline(timeout) as deadline:
                                reply = await behavior(request, context)
                    except (asyncio.CancelledError, TimeoutError) as exc:
                        # The caller left, or a deadline passed, while the call ran: the
                        # upstream bills the prompt it was sent, answer or not, and such a
                        # call was charged nothing (a stream left early was charged its
                        # estimate). Charged here only, so a call that answered (and pays its
                        # usage below) pays once; what the handler estimated so far
                        # (Completion: its prompt, reported before the upstream call).
                        if held is not None and charged and (
                                isinstance(exc, asyncio.CancelledError) or
                                (deadline is not None and deadline.expired)):
                            await self._charge_estimate(held, request)
                        raise
                    finally:
                        if token is not None:
                            with contextlib.suppress(ValueError):  # exited in another context
                                charges.current.reset(token)
                    if held is not None and charged and \
                            not await self._account(held, request, reply):
                        await self._charge_estimate(held, request)
                finally:  # however the call ended (answered, failed, left, timed out), and
                    if reservation is not None:  # once its usage is charged
                        reservation.release()
            return reply
        return unary

    def _wrap_stream(self, behavior: Callable[..., AsyncGenerator[Any, None]],
                     method: str = "", full: str = "") -> Callable[..., Any]:
        charged = full.startswith(_CHARGED)

        async def stream(request: Any,
                         context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with self._served(context, method, request):
                if type(request) is _Undecodable:
                    raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                principal, reservation = (_NOBODY if self._auth is None
                                          else await self._authorize(context, full, request))
                key = principal.key_id if principal is not None else ""
                if key and self._max_streams and \
                        self._open_streams.get(key, 0) >= self._max_streams:
                    if reservation is not None:
                        reservation.release()
                    raise StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"key {key} already has {self._max_streams} streams open",
                                      retry_after_s=1.0)
                self._open_streams[key] = self._open_streams.get(key, 0) + 1
                # Always set, None too: an in-process call runs in its caller's context,
                # and a call with the master key must not charge the key outside it.
                held = self._caller(principal)
                token = charges.current.set(held)
                settled = False
                try:
                    # Closed here, not left to the loop's finalizer: the servicer's own
                    # cleanup (a run stored as interrupted) runs before the call ends, and
                    # so before the mesh's stop closes what it writes to.
                    async with contextlib.aclosing(behavior(request, context)) as replies, \
                            Deadline(self._timeout(context, self._stream_timeout)):
                        async for item in replies:
                            if held is not None and charged:
                                settled = await self._account(held, request,
                                                              item) or settled
                            yield item
                finally:
                    self._open_streams[key] -= 1
                    with contextlib.suppress(ValueError):  # exited in another context
                        charges.current.reset(token)
                    try:
                        if held is not None and charged and not settled:
                            await self._charge_estimate(held, request)
                    finally:  # however the stream ended, once its usage is charged
                        if reservation is not None:
                            reservation.release()
        return stream

    def _caller(self, principal: Principal | None) -> charges.Caller | None:
        """What a call charges: a virtual key's (None for the master key or keys off)."""
        if principal is None or principal.master or self._auth is None:
            return None
        return charges.Caller(self._auth, principal)

    async def _charge_estimate(self, held: charges.Caller, request: Any) -> None:
        """A call that ended without its usage (see `report_usage_estimate`); nothing for
        one answered from the response cache (`charges.report_cache_hit`)."""
        if held.cache_hit or not (held.prompt_tokens or held.completion_tokens):
            return
        log.info("call of key %s ended without a usage: charged the estimate of %d prompt "
                 "and %d completion tokens", held.principal.key_id, held.prompt_tokens,
                 held.completion_tokens)
        await asyncio.shield(held.auth.account(held.principal, model_of(request),
                                               held.prompt_tokens, held.completion_tokens))


class _Served:
    """`CallContext._served`: a plain class, as `asynccontextmanager` costs a generator and
    two extra frames per RPC on the hot path."""

    __slots__ = ("_call", "_code", "_context", "_method", "_metrics", "_request",
                 "_request_id", "_started", "_token")

    def __init__(self, call: CallContext, context: grpc.aio.ServicerContext[Any, Any],
                 method: str, request: Any) -> None:
        self._call = call
        self._context = context
        self._method = method
        self._request = request

    async def __aenter__(self) -> str:
        self._started = time.perf_counter()
        self._code = grpc.StatusCode.OK
        metrics = self._call._metrics
        rpc: RpcMetrics | None = None
        if metrics is not None:
            rpc = metrics.rpc(self._method, model_of(self._request))
            rpc.started()
        self._metrics = rpc
        request_id = self._request_id = _incoming_request_id(self._context)
        # Reset on exit: an in-process call runs in its caller's task and context.
        self._token = _request_id.set(request_id)
        # In the trailers, not early headers: headers would commit the call, and gRPC
        # then could not retry it on another replica if this one died.
        self._context.set_trailing_metadata((("x-request-id", request_id),))
        self._call._running += 1
        return request_id

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> bool:
        call, context = self._call, self._context
        try:
            if exc is None:
                return False
            if isinstance(exc, asyncio.CancelledError | GeneratorExit):
                if grace_end.was_cut(exc):
                    # Ended ABORTED by the stop, then cancelled: counted as its caller got
                    # it, and told to the context, whose server span records it.
                    self._code = grace_end.CODE
                    context.set_code(grace_end.CODE)
                    context.set_details(grace_end.MESSAGE)
                    return False
                # gRPC cancels a call whose deadline passed: count it as such; and tell the
                # context, whose server span (OpenTelemetry's) records it, or says OK.
                remaining = context.time_remaining()
                self._code = (grpc.StatusCode.DEADLINE_EXCEEDED
                              if remaining is not None and remaining <= 0
                              else grpc.StatusCode.CANCELLED)
                context.set_code(self._code)
                return False
            if isinstance(exc, grpc.aio.AbortError):
                self._code = context.code() or grpc.StatusCode.UNKNOWN
                return False
            if not isinstance(exc, Exception):
                return False
            # A mapped status: abort raises AbortError in place of `exc`.
            self._code, message, trailers = call._map(exc, self._request_id)
            await context.abort(self._code, message, trailing_metadata=trailers)
            return False
        finally:
            if self._metrics is not None:
                self._metrics.finished(self._code.name, time.perf_counter() - self._started)
            try:
                _request_id.reset(self._token)
            except ValueError:  # exited in another context (finalizer)
                pass
            call._running -= 1
            if not call._running and call._idle is not None:
                call._idle.set()
                call._idle = None


def build_interceptors(settings: Settings, table: ErrorTable, tracing: bool,
                       metrics: Metrics | None = None,
                       auth: Authenticator | None = None) -> list[grpc.aio.ServerInterceptor]:
    """The server's interceptors, outermost first."""
    chain: list[grpc.aio.ServerInterceptor] = []
    if tracing:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        chain.append(aio_server_interceptor())  # type: ignore[no-untyped-call]
    chain.append(CallContext(settings, table, metrics, auth))
    return chain
