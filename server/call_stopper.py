"""Ending the HTTP door's remote calls at the end of a stop's grace, as a server does.

The door reaches its services through the mesh's in-process channel when they are served
in the same process, and `LocalChannel.stop_calls` ends what is still running there at the
grace's end with UNAVAILABLE: the door answers as for any failure (a 503 body, or an
in-band error and `[DONE]`). A door whose services are in other processes (`--service
none`, or any door with tracing on, which dials its own gRPC server) had nothing to end its
calls: uvicorn cancelled them, a unary call became a bare "500 Internal Server Error" and a
stream was cut without its end.

`CallStopper` keeps the calls in flight on the door's channels, unary and server-streaming,
through its two client interceptors (`interceptors`: one object per kind, as a grpc.aio
channel files an interceptor under the first kind it is an instance of). Each hands grpc.aio
a call of its own around grpc's (`_Kept`), which grpc.aio reads as the call itself, at
once: an interceptor outside it gets a call to read, as from grpc (OpenTelemetry's reads
its status, then ends its span from the call's done callback: a failure raised at it left
the span unended, and the trace broken). `stop_calls(why)` cancels the calls, and each
one's caller gets UNAVAILABLE `why` in place of the cancellation, from awaiting a unary
call, reading a stream, or asking its status (a call the caller's own task cancelled stays
a cancellation). The interceptors go inside any that hold a call until it ends before
passing it out (OpenTelemetry's holds a unary call so): a call kept outside them was kept
only once it was over.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from scillm.clients.calls import DelegatingCall

__all__ = ["CallStopper"]


class CallStopper:
    """Keeps a channel's calls in flight so that a stop can end them (see the module)."""

    def __init__(self) -> None:
        self._calls: set[_Kept] = set()
        #: Why the calls were stopped ("" while they run on).
        self.why = ""
        #: The channel's interceptors that keep its calls: unary, then server-streaming.
        self.interceptors: tuple[Any, ...] = (_UnaryKeeper(self), _StreamKeeper(self))

    def stop_calls(self, why: str) -> int:
        """End every call in flight with UNAVAILABLE `why`; how many."""
        self.why = why
        calls = list(self._calls)
        for call in calls:
            call.stop()
        return len(calls)


class _Kept(DelegatingCall):
    """A call kept while it runs (`CallStopper`): stopped, it reads as UNAVAILABLE `why`."""

    def __init__(self, stopper: CallStopper, call: Any) -> None:
        super().__init__(call)
        self._stopper = stopper
        self._stopped = False
        stopper._calls.add(self)
        call.add_done_callback(lambda _: stopper._calls.discard(self))

    def stop(self) -> None:
        self._stopped = True
        self._call.cancel()

    def _instead(self) -> BaseException:
        """What a cancellation of this call raises: UNAVAILABLE `why` when the stop caused
        it; else the cancellation (the caller's own task was cancelled, or it cancelled
        the call)."""
        task = asyncio.current_task()
        if not self._stopped or (task is not None and task.cancelling()):
            return asyncio.CancelledError()
        stopped: BaseException = grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
            details=self._stopper.why)
        return stopped

    async def code(self) -> grpc.StatusCode:
        code = await super().code()
        return grpc.StatusCode.UNAVAILABLE if self._stopped and \
            code == grpc.StatusCode.CANCELLED else code

    async def details(self) -> str:
        if self._stopped and await super().code() == grpc.StatusCode.CANCELLED:
            return self._stopper.why
        return await super().details()


class _StoppableUnary(_Kept, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    def __await__(self) -> Any:
        return self._reply().__await__()

    async def _reply(self) -> Any:
        try:
            return await self._call
        except asyncio.CancelledError:
            raise self._instead() from None


class _StoppableStream(_Kept, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        try:
            async for response in self._call:
                yield response
        except asyncio.CancelledError:
            raise self._instead() from None

    async def read(self) -> Any:
        try:
            return await self._call.read()
        except asyncio.CancelledError:
            raise self._instead() from None


class _UnaryKeeper(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, stopper: CallStopper) -> None:
        self._stopper = stopper

    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: Any, request: Any) -> Any:
        return _StoppableUnary(self._stopper, await continuation(client_call_details, request))


class _StreamKeeper(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, stopper: CallStopper) -> None:
        self._stopper = stopper

    async def intercept_unary_stream(self, continuation: Callable[..., Any],
                                     client_call_details: Any, request: Any) -> Any:
        return _StoppableStream(self._stopper, await continuation(client_call_details, request))
