"""The plain-ASGI layers in front of the shim's endpoints.

Every request gets an id (`request_id`: the caller's `x-request-id`, else a new one, sent
back as `x-request-id`) and is cancelled when its caller hangs up before the response has
started (`_HangUp`). A POST of a chat completion, the door's hot path, goes through
`CompletionsDoor` alone: one layer that does both, and answers an unexpected error with
OpenAI's 500 body, in front of its endpoint. Every other request goes on through
`RequestIdMiddleware`, `CancelOnDisconnect` and Starlette (its error handling and router).
"""

from __future__ import annotations

import asyncio
import logging
import re

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scillm.clients.ids import new_id

from .errors import error_response

__all__ = ["COMPLETIONS", "CancelOnDisconnect", "CompletionsDoor", "RequestIdMiddleware"]

log = logging.getLogger("scillm.bridges.openai")

#: The paths of chat completions (OpenAI's, and LiteLLM's without the version).
COMPLETIONS = ("/v1/chat/completions", "/chat/completions")


#: What a gRPC metadata value may hold: printable ASCII (space included).
_PRINTABLE = re.compile(rb"[\x20-\x7e]+")


def grpc_carries(value: bytes) -> bool:
    """Whether a header's value can travel on as a gRPC metadata value (printable ASCII;
    HTTP also allows a tab and bytes past 0x7f, on which a gRPC call fails)."""
    return _PRINTABLE.fullmatch(value) is not None


def request_id(scope: Scope) -> str:
    """The request's id, kept in `scope["state"]["request_id"]`: the caller's last
    `x-request-id` (at most 128 characters), else a new one.

    The id travels on as gRPC metadata, which holds printable ASCII only: an id with any
    other byte (HTTP allows a tab, or UTF-8's) made every call of a split deployment, whose
    door dials its services over gRPC, a 500. Such an id is replaced by a new one."""
    found = ""
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            found = value[:128].decode("latin-1") if grpc_carries(value[:128]) else ""
    if not found:
        found = new_id()
    scope.setdefault("state", {})["request_id"] = found
    return found


class RequestIdMiddleware:
    """Plain ASGI: give every request an id and send it back as `x-request-id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = (b"x-request-id", request_id(scope).encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class _HangUp:
    """One request's watch for its caller hanging up (see `CancelOnDisconnect`): the app
    reads the request through `receive`, and whoever sends the response sets `started`."""

    __slots__ = ("_loop", "_receive", "_task", "_timer", "_watcher", "gone", "started")

    #: How long after the whole request has been read a watcher starts.
    WATCH_AFTER_S = 0.05

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._loop = task.get_loop()
        self._receive = receive
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False
        self.started = False

    async def receive(self) -> Message:
        message = await self._receive()
        if self._timer is None and (message["type"] == "http.disconnect"
                                    or not message.get("more_body", False)):
            self._timer = self._loop.call_later(self.WATCH_AFTER_S, self._start_watching)
        return message

    def _start_watching(self) -> None:
        if not self.started:
            self._watcher = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if not self.started:
            self.gone = True
            self._task.cancel()

    def ours(self) -> bool:
        """For a CancelledError out of the app: True when the cancellation was this watch's
        (the caller hung up) and nobody else's, so it ends here."""
        return self.gone and self._task.uncancel() == 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


class CancelOnDisconnect:
    """Plain ASGI: a caller who hangs up before its response has started cancels the work
    done for it, as a cancelled gRPC call does, so the upstream request is closed instead
    of running on for nobody.

    Once the app has read the whole request body and `_HangUp.WATCH_AFTER_S` has passed
    without a response, a watcher waits for `http.disconnect`; if it comes before
    `http.response.start`, the request's task is cancelled and the cancellation ends here.
    (Requests answered sooner never pay for a watcher: a task per request cost ~5 % of
    the door's throughput. Once a streamed response has started, `sse.EventStream`
    watches for the disconnect itself.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hang_up = _HangUp(receive)

        async def send_started(message: Message) -> None:
            if message["type"] == "http.response.start":
                hang_up.started = True
            await send(message)

        try:
            await self.app(scope, hang_up.receive, send_started)
        except asyncio.CancelledError:
            if not hang_up.ours():
                raise  # cancelled from outside too (shutdown): let it through
        finally:
            hang_up.close()


def hung_up(scope: Scope) -> None:
    """A caller gone before its request body was read whole: a debug note, not an error
    with a traceback (any caller could fill the log with those)."""
    log.debug("request %s (%s %s): the caller hung up inside its body",
              scope.get("state", {}).get("request_id", ""), scope.get("method"),
              scope.get("path"))


class CompletionsDoor:
    """Outermost: a POST of a chat completion goes to `endpoint` through this one layer,
    which gives it its request id and its hang-up watch as the two middlewares do, and
    answers an error the endpoint did not map with OpenAI's 500 body (logged with the
    request id). Anything else goes to `app` through those middlewares; its router routes
    the same POST to the same endpoint, and answers 405 to other methods."""

    def __init__(self, app: ASGIApp, endpoint: ASGIApp) -> None:
        self.app = RequestIdMiddleware(CancelOnDisconnect(app))
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" \
                or scope["path"] not in COMPLETIONS:
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        header = (b"x-request-id", rid.encode("latin-1"))
        hang_up = _HangUp(receive)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                hang_up.started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.endpoint(scope, hang_up.receive, send_with_id)
        except asyncio.CancelledError:
            if not hang_up.ours():
                raise
        except ClientDisconnect:
            hung_up(scope)  # inside its body: nobody to answer, nothing went wrong
        except Exception as exc:
            if hang_up.started:
                raise  # mid-response: the server logs it and closes the connection
            log.exception("request %s failed unexpectedly", rid)
            await error_response(exc)(scope, hang_up.receive, send_with_id)
        finally:
            hang_up.close()
