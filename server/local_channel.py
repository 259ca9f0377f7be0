"""An in-process channel: this process's own clients call its servicers without gRPC.

In the one-process mesh the HTTP shim and CompletionLink (Prove, CodeWorld and Agent
calling Completion) run beside the services they call. Over gRPC every such call pays a
client stack and a server stack, serialization both ways and wake-ups of gRPC's poller
thread: about 0.4 ms of CPU per completion, more than the completion itself costs the
mesh. `LocalChannel` keeps the contract and skips the transport, as grpc-java's
InProcessChannel does:

- the handlers registered on the server (recorded by `handler_registry.HandlerRegistry`),
  found by full method name and resolved through the server's own interceptors, so keys,
  request ids, default deadlines, metrics and error mapping are the same at both doors
  (when every interceptor declares `handler_per_method = True`, i.e. answers every call
  of a method with the same handler and does its per-call work inside it, a method is
  resolved once);
- value semantics: requests and replies are copied, as serialization would;
- a status other than OK raises `grpc.aio.AioRpcError` with the code, details and trailing
  metadata (google.rpc.Status, x-request-id) a remote call carries;
- the caller's timeout is the call's deadline: `time_remaining`, and the handler is
  cancelled when it passes (DEADLINE_EXCEEDED, counted as such by the interceptors); a
  call already past it, or a request over the server's receive limit, is refused;
- a unary call runs in the caller's task, so cancelling the caller cancels it; a stream's
  handler runs in a task of its own (as on a server), at most 32 replies ahead of its
  consumer, and `cancel()`, closing the iterator or dropping the call cancels it;
- a handler that raises or returns something that is not a message answers UNKNOWN, one
  that is cancelled for no caller's reason CANCELLED; a method nobody registered is
  UNIMPLEMENTED.

It speaks the part of `grpc.aio.Channel` the generated stubs use for unary and
server-streaming methods, which are all the mesh has.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import grpc

from .handler_registry import HandlerRegistry

__all__ = ["LocalChannel"]

Metadata = tuple[tuple[str, Any], ...]

#: Messages a stream may run ahead of its consumer (gRPC's flow control, in messages).
_STREAM_WINDOW = 32


class _CallDetails(NamedTuple):
    """What interceptors see of a call (`grpc.HandlerCallDetails`)."""

    method: str
    invocation_metadata: Metadata


def _copy(message: Any) -> Any:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _error(code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing),
                                details=details)


def _unexpected(exc: BaseException) -> grpc.aio.AioRpcError:
    # What a grpc.aio server answers for an exception its handler did not map.
    return _error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")


_DEADLINE = "Deadline Exceeded"


class _End(NamedTuple):
    """The last item of a stream: how it ended."""

    error: grpc.aio.AioRpcError | None


class _Outbox:
    """A stream's replies on their way to the consumer: at most `_STREAM_WINDOW` unread
    (gRPC's flow control, counted in messages); the end goes in without waiting.

    The first reply goes to the consumer before the handler goes on: the handler yields
    to the event loop once after it, so the consumer (queued first) takes it and can send
    it on. Otherwise replies ready at once (an upstream's whole stream in one read) would
    all be made, up to the window, before the caller saw the first.
    """

    __slots__ = ("_first", "_queue", "_window")

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._window = asyncio.Semaphore(_STREAM_WINDOW)
        self._first = True

    async def put(self, reply: Any) -> None:
        await self._window.acquire()
        self._queue.put_nowait(reply)
        if self._first:
            self._first = False
            await asyncio.sleep(0)

    def end(self, error: grpc.aio.AioRpcError | None) -> None:
        self._queue.put_nowait(_End(error))

    async def get(self) -> Any:
        item = await self._queue.get()
        if not isinstance(item, _End):
            self._window.release()
        return item


class _Context:
    """The `grpc.aio.ServicerContext` of one in-process call."""

    __slots__ = ("_code", "_deadline", "_details", "_metadata", "_outbox", "_trailing",
                 "expired", "stopped")

    def __init__(self, metadata: Metadata, deadline: float | None,
                 outbox: _Outbox | None = None) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._outbox = outbox
        self._trailing: Metadata = ()
        self._code: grpc.StatusCode | None = None
        self._details = ""
        #: The deadline passed (set before the call is cancelled for it).
        self.expired = False
        #: Why the channel stopped the call (`LocalChannel.stop_calls`), or "".
        self.stopped = ""

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        if self.expired:
            return 0.0
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    def peer(self) -> str:
        return "local:"

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, Any]]) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> Metadata:
        return self._trailing

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, Any]]) -> None:
        pass

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Sequence[tuple[str, Any]] = ()) -> None:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs a status other than OK")
        self._code = code
        if details:
            self._details = details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    async def write(self, message: Any) -> None:
        if self._outbox is None:
            raise RuntimeError("write() is for server-streaming calls")
        await self._outbox.put(_copy(message))

    def failed(self) -> grpc.aio.AioRpcError | None:
        """The call's error, when a status other than OK was set."""
        if self._code is None or self._code == grpc.StatusCode.OK:
            return None
        return _error(self._code, self._details, self._trailing)

    def arm(self) -> asyncio.TimerHandle | None:
        """Cancel the running task at the deadline, marking the call expired first."""
        if self._deadline is None:
            return None
        return asyncio.get_running_loop().call_at(self._deadline, _expire, self,
                                                  asyncio.current_task())

    def cancelled_error(self, task: asyncio.Task[Any]) -> grpc.aio.AioRpcError | None:
        """For a CancelledError out of a handler: the error to answer with, or None when
        `task` itself was cancelled from outside (the caller, or shutdown)."""
        if self.expired and task.uncancel() == 0:
            return _error(grpc.StatusCode.DEADLINE_EXCEEDED, _DEADLINE)
        if self.stopped and task.uncancel() == 0:
            return _error(grpc.StatusCode.UNAVAILABLE, self.stopped)
        if task.cancelling():
            return None
        # The handler raised a CancelledError that was not for it.
        return _error(grpc.StatusCode.CANCELLED, "the handler was cancelled")


def _expire(context: _Context, task: asyncio.Task[Any] | None) -> None:
    context.expired = True
    if task is not None:
        task.cancel()


class LocalChannel:
    """Calls the handlers of `registry` through `interceptors`, in this process.

    `max_receive_bytes` is the server's limit on a request message, as for a remote call.
    """

    def __init__(self, registry: HandlerRegistry,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = (), *,
                 max_receive_bytes: int | None = None) -> None:
        self._registry = registry
        self._interceptors = tuple(interceptors)
        self._max_receive_bytes = max_receive_bytes
        #: Resolved handlers by method, when every interceptor allows it (see the module).
        self._resolved: dict[str, grpc.RpcMethodHandler] | None = (
            {} if all(getattr(i, "handler_per_method", False) for i in self._interceptors)
            else None)
        #: Calls in flight: each one's context and the task running its handler.
        self._calls: dict[_Context, asyncio.Task[Any]] = {}

    def stop_calls(self, why: str) -> int:
        """End every call in flight with UNAVAILABLE `why`, as a server stopping at the end
        of its grace ends its calls (its callers then answer as for any failure: the OpenAI
        door with its error body, or an in-band error and `[DONE]`); how many."""
        calls = list(self._calls.items())
        for context, task in calls:
            context.stopped = why
            task.cancel()
        return len(calls)

    async def _resolve(self, details: _CallDetails) -> grpc.RpcMethodHandler | None:
        """The handler as the server would run it: through every interceptor."""
        resolved = self._resolved
        if resolved is not None:
            handler = resolved.get(details.method)
            if handler is None:
                handler = await self._intercept(details)
                if handler is not None and len(resolved) < 1024:  # methods are few
                    resolved[details.method] = handler
            return handler
        return await self._intercept(details)

    async def _intercept(self, details: _CallDetails) -> grpc.RpcMethodHandler | None:
        async def step(index: int, current: grpc.HandlerCallDetails,
                       ) -> grpc.RpcMethodHandler | None:
            if index == len(self._interceptors):
                return self._registry.lookup(current)
            interceptor = self._interceptors[index]
            nxt: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
            nxt = lambda d: step(index + 1, d)  # noqa: E731
            handler: grpc.RpcMethodHandler | None = await interceptor.intercept_service(
                nxt, current)
            return handler
        return await step(0, details)  # type: ignore[arg-type]

    def _admit(self, request: Any, timeout: float | None) -> None:
        """Refuse, as a server would, a call already past its deadline or too large."""
        if timeout is not None and timeout <= 0:
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, _DEADLINE)
        limit = self._max_receive_bytes
        if limit is not None and (size := request.ByteSize()) > limit:
            raise _error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"Received message larger than max ({size} vs. {limit})")

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None, _registered_method: bool = False,
                    ) -> _UnaryUnary:
        return _UnaryUnary(self, method)

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool = False,
                     ) -> _UnaryStream:
        return _UnaryStream(self, method)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{method}: client streaming is not served in process")

    stream_stream = stream_unary

    async def close(self, grace: float | None = None) -> None:
        """Nothing to release: calls in flight belong to their callers."""

    async def __aenter__(self) -> LocalChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _start(method: str, timeout: float | None,
           metadata: Sequence[tuple[str, Any]] | None) -> tuple[_CallDetails, float | None]:
    md = tuple(metadata) if metadata else ()
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    return _CallDetails(method, md), deadline


class _UnaryUnary:
    """A unary method's multicallable; calling it gives an awaitable reply."""

    def __init__(self, channel: LocalChannel, method: str) -> None:
        self._channel = channel
        self._method = method

    def __call__(self, request: Any, *, timeout: float | None = None,
                 metadata: Sequence[tuple[str, Any]] | None = None, **_: Any) -> Awaitable[Any]:
        return self._call(request, timeout, metadata)

    async def _call(self, request: Any, timeout: float | None,
                    metadata: Sequence[tuple[str, Any]] | None) -> Any:
        channel = self._channel
        channel._admit(request, timeout)
        details, deadline = _start(self._method, timeout, metadata)
        handler = await channel._resolve(details)
        if handler is None or handler.unary_unary is None:
            raise _error(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {self._method}")
        context = _Context(details.invocation_metadata, deadline)
        timer = context.arm()
        task = asyncio.current_task()
        if task is not None:
            channel._calls[context] = task
        try:
            reply = await handler.unary_unary(_copy(request), context)
        except grpc.aio.AbortError:
            raise context.failed() or _unexpected(RuntimeError("aborted")) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            error = context.cancelled_error(task)
            if error is None:
                raise
            raise error from None
        except Exception as exc:
            raise _unexpected(exc) from None
        finally:
            channel._calls.pop(context, None)
            if timer is not None:
                timer.cancel()
        error = context.failed()
        if error is not None:
            raise error
        try:
            return _copy(reply)
        except Exception as exc:  # not a message (None, ...): gRPC could not send it
            raise _unexpected(exc) from None


class _UnaryStream:
    """A server-streaming method's multicallable."""

    def __init__(self, channel: LocalChannel, method: str) -> None:
        self._channel = channel
        self._method = method

    def __call__(self, request: Any, *, timeout: float | None = None,
                 metadata: Sequence[tuple[str, Any]] | None = None, **_: Any) -> _StreamCall:
        self._channel._admit(request, timeout)
        details, deadline = _start(self._method, timeout, metadata)
        return _StreamCall(self._channel, details, deadline, request)


async def _serve(channel: LocalChannel, details: _CallDetails, request: Any,
                 context: _Context, outbox: _Outbox) -> None:
    """Run a stream's handler into `outbox`, then its end (not when cancelled from outside:
    nobody listens then). A module function, not a method: the task must not keep its
    `_StreamCall` alive, or dropping the call could not cancel it."""
    error: grpc.aio.AioRpcError | None = None
    timer = context.arm()
    task = asyncio.current_task()
    if task is not None:
        channel._calls[context] = task
    try:
        handler = await channel._resolve(details)
        behavior = None if handler is None else handler.unary_stream
        if behavior is None:
            error = _error(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {details.method}")
        elif inspect.isasyncgenfunction(behavior):
            # Closed here, not left to the loop's finalizer: a cancellation that lands
            # between two replies (at `put`) stops the handler at once, where it yielded.
            async with contextlib.aclosing(behavior(request, context)) as replies:
                async for reply in replies:
                    await outbox.put(_copy(reply))
            error = context.failed()
        else:  # a coroutine that calls context.write
            await behavior(request, context)
            error = context.failed()
    except grpc.aio.AbortError:
        error = context.failed() or _unexpected(RuntimeError("aborted"))
    except asyncio.CancelledError:
        task = asyncio.current_task()
        assert task is not None
        error = context.cancelled_error(task)
        if error is None:
            raise
    except Exception as exc:
        error = _unexpected(exc)
    finally:
        channel._calls.pop(context, None)
        if timer is not None:
            timer.cancel()
    outbox.end(error)


class _StreamCall:
    """One server-streaming call: async-iterable replies; `cancel()` stops the handler,
    as does dropping the call."""

    def __init__(self, channel: LocalChannel, details: _CallDetails, deadline: float | None,
                 request: Any) -> None:
        self._outbox = _Outbox()
        self._context = _Context(details.invocation_metadata, deadline, self._outbox)
        self._task = asyncio.create_task(
            _serve(channel, details, _copy(request), self._context, self._outbox))
        self._done = False

    def __aiter__(self) -> _StreamCall:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._outbox.get()
        except BaseException:
            self.cancel()
            raise
        if isinstance(item, _End):
            self._done = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    def cancel(self) -> bool:
        """Stop the handler (as a client cancelling its call); False when it had ended."""
        self._done = True
        return self._task.cancel()

    def code(self) -> grpc.StatusCode | None:
        return self._context.code()

    def trailing_metadata(self) -> Metadata:
        return self._context.trailing_metadata()

    def __del__(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None and not task.done():
            task.cancel()
