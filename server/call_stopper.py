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
channel files an interceptor under the first kind it is an instance of). `stop_calls(why)`
cancels them, and each one's caller gets UNAVAILABLE `why` in place of the cancellation (a
call the caller's own task cancelled stays a cancellation): from awaiting a unary call, or
from reading a stream (a `grpc.aio.UnaryStreamCall` of our own around grpc's, which
grpc.aio reads as the call itself). Its interceptors go inside any that hold a call until
it ends before passing it out (OpenTelemetry's, with tracing on): a call they hold is
kept only once it is over.
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
        self._calls: set[Any] = set()
        #: Why the calls were stopped ("" while they run on).
        self.why = ""
        #: The channel's interceptors that keep its calls: unary, then server-streaming.
        self.interceptors: tuple[Any, ...] = (_UnaryKeeper(self), _StreamKeeper(self))

    def stop_calls(self, why: str) -> int:
        """End every call in flight with UNAVAILABLE `why`; how many."""
        self.why = why
        calls = list(self._calls)
        for call in calls:
            call.cancel()
        return len(calls)

    def _stopped(self) -> BaseException:
        """UNAVAILABLE when the stop cancelled the call; else the cancellation, re-raised
        (the caller's task was cancelled, or the call was by someone else)."""
        task = asyncio.current_task()
        if not self.why or (task is not None and task.cancelling()):
            return asyncio.CancelledError()
        stopped: BaseException = grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
            details=self.why)
        return stopped


class _UnaryKeeper(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, stopper: CallStopper) -> None:
        self._stopper = stopper

    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: Any, request: Any) -> Any:
        call = await continuation(client_call_details, request)
        calls = self._stopper._calls
        calls.add(call)
        try:
            await call
        except asyncio.CancelledError:
            raise self._stopper._stopped() from None
        finally:
            calls.discard(call)
        return call


class _StreamKeeper(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, stopper: CallStopper) -> None:
        self._stopper = stopper

    async def intercept_unary_stream(self, continuation: Callable[..., Any],
                                     client_call_details: Any, request: Any) -> Any:
        call = await continuation(client_call_details, request)
        calls = self._stopper._calls
        calls.add(call)
        call.add_done_callback(lambda _: calls.discard(call))
        return _StoppableStream(self._stopper, call)


class _StoppableStream(DelegatingCall, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    """A stream call whose reader gets the stopper's UNAVAILABLE in place of the
    cancellation a stop caused; everything else is the call's own."""

    def __init__(self, stopper: CallStopper, call: Any) -> None:
        super().__init__(call)
        self._stopper = stopper

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        try:
            async for response in self._call:
                yield response
        except asyncio.CancelledError:
            raise self._stopper._stopped() from None

    async def read(self) -> Any:
        try:
            return await self._call.read()
        except asyncio.CancelledError:
            raise self._stopper._stopped() from None
