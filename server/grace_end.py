"""A call whose handler still runs when a stop's grace ends: failed, and not retried.

Left to the gRPC servers, such a call ends UNAVAILABLE (grpcio's "Cancelling all calls",
or pygrpc-native closing the connection), and a caller whose channel retries UNAVAILABLE
(a gRPC retry policy commonly does; the mesh's clients did, before `clients/_retry.py`,
which retries only an UNAVAILABLE no handler answered) tries it again on another replica:
a completion's upstream was called twice for one request, twice the cost and any side
effects twice. A call a stopping server refuses before its handler runs, or one a dying
replica (SIGKILL) drops, must still be retried; both are UNAVAILABLE, which the servers and
the transport decide, so the call cut at the grace's end has to differ.

gRPC's retry design (gRFC A6) offers a server two ways to keep a client from retrying a
call: a negative `grpc-retry-pushback-ms` in its trailers, or response headers sent before
the failure (the call is committed). grpc-core's client honours both. pygrpc-native 0.5.0,
the default server, can send neither for a unary call: its front refuses `grpc-` trailers
("metadata key "grpc-retry-pushback-ms" is reserved"; `grpc-status-details-bin` passes),
and it sends a unary call's headers only with its reply. Headers sent early on every call
would also cost each one a HEADERS frame, and keep a dead replica's calls from being
retried.

So the stop ends such a call with a status no retry policy of the mesh retries: ABORTED,
which gRPC's status guide gives to a call its client should retry "at a higher level", if
at all (a caller who knows the completion may be asked again does so). Its details say the
server is shutting down, and its `ErrorInfo` reason is `ServerShuttingDown`, which the HTTP
door answers as the 503 it gives its own calls cut at a grace's end
(bridges/openai/errors.py). Both servers end it alike: `DrainingServer` through its front
(server/native_server.py), and `GrpcioServer` below, grpc.aio's server, through each
call's context; then each cancels the call's handler with the message `CUT`, so that the
mesh's interceptor counts the call, and tells its server span, with the status its caller
got (`was_cut`), not as a caller who left. tests/server/test_grace_end.py stops a replica
with a call held upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc
from grpc.aio._server import Server as _AioServer

from .errors import to_status

__all__ = ["CODE", "CUT", "ENDING_S", "MESSAGE", "GrpcioServer", "ServerShuttingDown",
           "trailers", "was_cut"]

#: The status of a call cut at the grace's end: not UNAVAILABLE, which channels retry.
CODE = grpc.StatusCode.ABORTED
#: Its details.
MESSAGE = ("the server is shutting down: the call was cut at the end of its grace, and not "
           "retried, as it may have run in part")
#: How long, past the grace, a server has to send the ends of the calls the stop cut (for
#: a call that had sent nothing, a trailers-only answer, which flow control does not hold).
ENDING_S = 0.25
#: What the handler of a call the stop cut is cancelled with (`asyncio.Task.cancel`'s
#: message, which its `CancelledError` carries out).
CUT = "scillm: the call was cut at the end of a stop's grace"


class ServerShuttingDown(Exception):
    """What a call cut at a stop's grace end failed with (its `ErrorInfo` reason)."""


def was_cut(exc: BaseException) -> bool:
    """Whether `exc`, ending a handler, is the cancellation of a call the stop cut."""
    return isinstance(exc, asyncio.CancelledError) and exc.args[:1] == (CUT,)


def trailers(invocation_metadata: Iterable[tuple[str, Any]]) -> list[tuple[str, str | bytes]]:
    """The trailers of a call cut at the grace's end: the caller's request id, which the
    mesh echoes, and the `google.rpc.Status` every mapped failure carries."""
    # Cut to 128 characters, as CallContext reads it.
    request_id = next((str(value)[:128] for key, value in invocation_metadata
                       if key == "x-request-id" and value), "")
    _, details = to_status(CODE, MESSAGE, ServerShuttingDown(), request_id)
    ids: list[tuple[str, str | bytes]] = [("x-request-id", request_id)] if request_id else []
    return [*ids, ("grpc-status-details-bin", details)]


class GrpcioServer(_AioServer):  # type: ignore[misc]
    """grpc.aio's server, whose stop ends the calls still running at the grace's end as
    the module says, where grpc-core would cancel them UNAVAILABLE. Its calls are kept by
    an interceptor of its own, innermost (one more per call on this server only; the
    in-process channel and the native server do not see it)."""

    def __init__(self, *, interceptors: Sequence[grpc.aio.ServerInterceptor],
                 options: Sequence[tuple[str, Any]]) -> None:
        self._keeper = _Keeper()
        super().__init__(None, (), [*interceptors, self._keeper], options, None, None)

    async def stop(self, grace: float | None) -> None:
        """As grpc.aio's, except at the grace's end (at once for none): the calls still
        running end with `CODE`, then grpc-core has `ENDING_S` to send that before it
        cancels what is left."""
        limit = grace or 0.0
        stopping = asyncio.ensure_future(super().stop(limit + ENDING_S))
        if limit:
            await asyncio.wait((stopping,), timeout=limit)
        if not stopping.done():
            await self._keeper.end_calls()
        await stopping


class _Keeper(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Keeps each call's task and context while its handler runs (`GrpcioServer`)."""

    #: Every call of a method gets the same wrapped handler.
    handler_per_method = True

    def __init__(self) -> None:
        self._running: dict[asyncio.Task[Any], grpc.aio.ServicerContext[Any, Any]] = {}
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        cached = self._wrapped.get(id(handler))
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler)
        if len(self._wrapped) >= 1024:  # methods are few; bound it anyway
            self._wrapped.clear()
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        running = self._running
        if handler.unary_unary is not None and inspect.iscoroutinefunction(handler.unary_unary):
            behavior = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                task = asyncio.current_task()
                assert task is not None
                running[task] = context
                try:
                    return await behavior(request, context)
                finally:
                    running.pop(task, None)
            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            replies = handler.unary_stream

            async def stream(request: Any,
                             context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                task = asyncio.current_task()
                assert task is not None
                running[task] = context
                try:
                    async with contextlib.aclosing(replies(request, context)) as items:
                        async for item in items:
                            yield item
                finally:
                    running.pop(task, None)
            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler  # streaming requests, or handlers that are not coroutines: not kept

    async def end_calls(self) -> int:
        """End every kept call with `CODE` (its handler cancelled, as a caller leaving
        cancels it: the upstream call it waits on ends too); how many."""
        running = list(self._running.items())
        for task, _ in running:
            task.cancel(CUT)
        await asyncio.gather(*(_end(context) for _, context in running))
        return len(running)


async def _end(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # grpc's own context, not OpenTelemetry's proxy around it: the call's server span may
    # have ended already (its handler was cancelled first), and it learns the status from
    # the mesh's interceptor (`was_cut`).
    context = getattr(context, "__wrapped__", context)
    # abort() sends the status at once and raises AbortError here; a call that already
    # has its status (the handler aborted it) refuses a second one.
    with contextlib.suppress(Exception):
        await context.abort(CODE, MESSAGE,
                            trailing_metadata=tuple(trailers(context.invocation_metadata())))
