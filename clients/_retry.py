"""The channel's retries: a call no server answered is tried again; a server's answer is
final.

A call fails UNAVAILABLE both when no server took it (a replica that is stopping refuses
new calls, one that died drops its connections) and when a server's handler ran and says
so (the Completion engine, its own retries and fallbacks spent on an upstream that answers
503, ends the call UNAVAILABLE). gRPC's retry policy cannot tell them apart, and it tried
every such call up to 5 times: an upstream outage got 5 times the engine's requests for
each caller's one. The mesh marks every answer of its handlers with a `google.rpc.Status`
(`grpc-status-details-bin`); a server that never ran the call sends none. So these
interceptors, innermost on a `ScillmClient`'s channels, retry UNAVAILABLE without that
mark, as the policy did (5 attempts, backoff from 0.05 s doubling to 1 s, jittered, within
the call's deadline; a stream only before its first message), and hand any other failure
to the caller as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from .calls import DelegatingCall

__all__ = ["ATTEMPTS", "retry_interceptors"]

#: The most attempts of one call (the first included).
ATTEMPTS = 5
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 1.0
#: The trailer every answer of a mesh handler carries (server/errors.py `to_status`).
_ANSWERED = "grpc-status-details-bin"


def _unanswered(error: BaseException) -> bool:
    """Whether `error` is an UNAVAILABLE that no server's handler gave (see the module)."""
    if not isinstance(error, grpc.aio.AioRpcError):
        return False
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return not any(key == _ANSWERED for key, _ in error.trailing_metadata() or ())


class _Attempts:
    """One call's schedule of attempts: how long each may take, and the pause between."""

    def __init__(self, timeout: float | None) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._backoff = _FIRST_BACKOFF_S
        self.made = 0

    def left(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    async def pause(self, interrupt: asyncio.Event) -> bool:
        """Wait before the next attempt (or until `interrupt`); False when none may be made
        (all made, or the deadline would pass first)."""
        if self.made >= ATTEMPTS:
            return False
        pause = random.uniform(0, self._backoff)
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)
        left = self.left()
        if left is not None and left <= pause:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(interrupt.wait(), pause)
        return True

    def details(self, details: Any) -> Any:
        """`details` with the time left of the call's deadline."""
        self.made += 1
        left = self.left()
        if left is None:
            return details
        return grpc.aio.ClientCallDetails(details.method, max(left, 0.0), details.metadata,
                                          details.credentials, details.wait_for_ready)


class _Retried(DelegatingCall):
    """A call made of attempts, each a call of its own: what it says of itself is the
    current attempt's; it is done, and its callbacks run, once the last attempt is over.
    Cancelling it cancels the attempt and any attempt to come."""

    def __init__(self, call: Any, again: Callable[[], Any], attempts: _Attempts) -> None:
        super().__init__(call)
        self._again = again
        self._attempts = attempts
        self._cancelled = asyncio.Event()
        self._over = False
        self._callbacks: list[Callable[..., Any]] = []

    async def _retry(self, error: BaseException) -> bool:
        """Whether `error` ends this attempt for another (then made): unanswered, and one
        may still be made. A call cancelled meanwhile (its pause included) ends cancelled,
        as a cancelled grpc.aio call does."""
        if not self._cancelled.is_set() and not _unanswered(error):
            return False
        if not self._cancelled.is_set() and not await self._attempts.pause(self._cancelled):
            return False
        if self._cancelled.is_set():
            raise asyncio.CancelledError()
        self._call = await self._again()
        return True

    def _finish(self) -> None:
        if self._over:
            return
        self._over = True
        for callback in self._callbacks:
            callback(self)

    def cancelled(self) -> bool:
        return self._cancelled.is_set() or super().cancelled()

    def done(self) -> bool:
        return self._over

    def cancel(self) -> bool:
        """As a grpc.aio call's: False once it is over; else it ends cancelled, whether an
        attempt runs or the call waits to try again."""
        if self._over:
            return False
        self._cancelled.set()
        super().cancel()
        return True

    def add_done_callback(self, callback: Callable[..., Any]) -> None:
        if self._over:
            callback(self)
        else:
            self._callbacks.append(callback)


class _RetriedUnary(_Retried, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """A unary call tried again while it fails unanswered."""

    _result: asyncio.Future[Any] | None = None

    def __await__(self) -> Any:
        if self._result is None:  # awaited by each interceptor outside, run once
            self._result = asyncio.ensure_future(self._run())
        return self._result.__await__()

    async def _settled(self) -> None:
        """The attempts run to their end: what the call says of its status is then the
        last attempt's (OpenTelemetry's client interceptor reads `code()` before anyone
        awaits the call, and read the first attempt's UNAVAILABLE). The call's cancellation
        is its status; the reading task's own is let through."""
        try:
            await self
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except Exception:  # its status says it
            pass

    async def code(self) -> grpc.StatusCode:
        await self._settled()
        return await super().code()

    async def details(self) -> str:
        await self._settled()
        return await super().details()

    async def trailing_metadata(self) -> Any:
        await self._settled()
        return await super().trailing_metadata()

    async def debug_error_string(self) -> str:
        await self._settled()
        return str(await self._call.debug_error_string())

    async def _run(self) -> Any:
        try:
            while True:
                try:
                    return await self._call
                except grpc.aio.AioRpcError as error:
                    if not await self._retry(error):
                        raise
        finally:
            self._finish()


class _RetriedStream(_Retried, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    """A stream call tried again while it fails unanswered before its first message."""

    _reader: AsyncIterator[Any] | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        try:
            while True:
                received = False
                try:
                    async for response in self._call:
                        received = True
                        yield response
                    return
                except grpc.aio.AioRpcError as error:
                    if received or not await self._retry(error):
                        raise
        finally:
            self._finish()

    async def read(self) -> Any:
        if self._reader is None:
            self._reader = self._responses()
        try:
            return await anext(self._reader)
        except StopAsyncIteration:
            return grpc.aio.EOF


class _Unary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: Any, request: Any) -> Any:
        attempts = _Attempts(client_call_details.timeout)

        async def again() -> Any:
            return await continuation(attempts.details(client_call_details), request)

        return _RetriedUnary(await again(), again, attempts)


class _Stream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Callable[..., Any],
                                     client_call_details: Any, request: Any) -> Any:
        attempts = _Attempts(client_call_details.timeout)

        async def again() -> Any:
            return await continuation(attempts.details(client_call_details), request)

        return _RetriedStream(await again(), again, attempts)


def retry_interceptors() -> list[Any]:
    """The two interceptors, one per kind (a channel files an interceptor under the first
    kind it is an instance of)."""
    return [_Unary(), _Stream()]
