"""Ending the HTTP door's remote calls at the end of a stop's grace, as a server does.

The door reaches its services through the mesh's in-process channel when they are served
in the same process, and `LocalChannel.stop_calls` ends what is still running there at the
grace's end with UNAVAILABLE: the door answers as for any failure (a 503 body, or an
in-band error and `[DONE]`). A door whose services are in other processes (`--service
none`, or any door with tracing on, which dials its own gRPC server) had nothing to end its
calls: uvicorn cancelled them, a unary call became a bare "500 Internal Server Error" and a
stream was cut without its end.

`CallStopper` is a client interceptor on the door's channels. It keeps the unary calls in
flight; `stop_calls(why)` cancels them, and each one's caller gets UNAVAILABLE `why` in
place of the cancellation (a call the caller's own task cancelled stays a cancellation).
Streams are not kept yet: grpc.aio did not iterate an interceptor's wrapping generator in
a first try, so a door alone still cuts a stream past the grace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

__all__ = ["CallStopper"]


class CallStopper(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Keeps a channel's calls in flight so that a stop can end them (see the module)."""

    def __init__(self) -> None:
        self._calls: set[Any] = set()
        #: Why the calls were stopped ("" while they run on).
        self.why = ""

    def stop_calls(self, why: str) -> int:
        """End every call in flight with UNAVAILABLE `why`; how many."""
        self.why = why
        calls = list(self._calls)
        for call in calls:
            call.cancel()
        return len(calls)

    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: Any, request: Any) -> Any:
        call = await continuation(client_call_details, request)
        self._calls.add(call)
        try:
            await call
        except asyncio.CancelledError:
            raise self._stopped() from None
        finally:
            self._calls.discard(call)
        return call

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
