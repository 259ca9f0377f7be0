"""The plain-ASGI layers every request to the shim passes through, outermost first: a
request id (`RequestIdMiddleware`), cancellation when the caller hangs up
(`CancelOnDisconnect`), and the chat-completions fast path past Starlette's router
(`CompletionsFirst`)."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scillm.clients.ids import new_id

__all__ = ["COMPLETIONS", "CancelOnDisconnect", "CompletionsFirst", "RequestIdMiddleware"]


class RequestIdMiddleware:
    """Plain ASGI: give every request an id and send it back as `x-request-id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
        if not request_id:
            request_id = new_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class CancelOnDisconnect:
    """Plain ASGI: a caller who hangs up before its response has started cancels the work
    done for it, as a cancelled gRPC call does, so the upstream request is closed instead
    of running on for nobody.

    Once the app has read the whole request body and `WATCH_AFTER_S` has passed without a
    response, a watcher waits for `http.disconnect`; if it comes before
    `http.response.start`, the request's task is cancelled and the cancellation ends here.
    (Requests answered sooner never pay for a watcher: a task per request cost ~5 % of
    the door's throughput. Once a streamed response has started, `sse.EventStream`
    watches for the disconnect itself.)
    """

    WATCH_AFTER_S = 0.05

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        started = gone = False
        timer: asyncio.TimerHandle | None = None
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not started:
                gone = True
                task.cancel()

        def start_watching() -> None:
            nonlocal watcher
            if not started:
                watcher = loop.create_task(watch())

        async def receive_body() -> Message:
            nonlocal timer
            message = await receive()
            if timer is None and (message["type"] == "http.disconnect"
                                  or not message.get("more_body", False)):
                timer = loop.call_later(self.WATCH_AFTER_S, start_watching)
            return message

        async def send_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive_body, send_started)
        except asyncio.CancelledError:
            if not gone or task.uncancel() > 0:
                raise  # cancelled from outside too (shutdown): let it through
        finally:
            if timer is not None:
                timer.cancel()
            if watcher is not None:
                watcher.cancel()


#: The paths of chat completions (OpenAI's, and LiteLLM's without the version).
COMPLETIONS = ("/v1/chat/completions", "/chat/completions")


class CompletionsFirst:
    """Plain ASGI inside Starlette's error handling: a POST of a chat completion goes
    straight to its endpoint, the door's hot path, past the router's scan of every route
    and its exception layers; anything else goes on to the router (which routes the same
    POST to the same endpoint, and answers 405 to other methods)."""

    def __init__(self, app: ASGIApp, endpoint: ASGIApp) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" \
                and scope["path"] in COMPLETIONS:
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)
