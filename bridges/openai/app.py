"""The OpenAI-compatible HTTP shim: request in, gRPC call, response out.

    POST /v1/chat/completions   JSON, or SSE ending in `data: [DONE]` with "stream": true
    POST /v1/embeddings         OpenAI's embeddings list, floats or base64 (embeddings.py)
    POST /v1/completions        OpenAI's legacy text completions, JSON or SSE
                                (text_completions.py)
    POST /v1/responses          OpenAI's Responses API on chat, JSON or typed SSE events
                                (responses.py; nothing stored)
    GET  /v1/models             configured model names
    GET  /v1/models/{model}     one model a caller may call (404 model_not_found if none)
    GET  /healthz               the process is up
    GET  /readyz                every served service is SERVING (asks gRPC health)
    GET  /ready                 the same, in the seed's shape ({"ok": ...})
    GET  /metrics               Prometheus metrics of the mesh
    GET  /openapi.json          this interface as an OpenAPI 3.1 document
    POST /agent/run             the agent envelope (ours, or the seed's agent app's)
    POST /bridge/complete       the {messages, items, provider, options} envelope (the
                                seed's own fields answered in its shape: seed/envelope.py)
    POST /key/generate, GET /key/info, POST /key/update,
    GET  /key/list, POST /key/delete   virtual keys (LiteLLM's shape: keys.py)
    /ui/...                     the runs UI, when the mesh passes one (scillm.bridges.ui)

The caller's `Authorization: Bearer <key>` (or `x-api-key`) goes to the mesh as gRPC
metadata, so both doors enforce the same keys; and the key comes before the body on every
route, as in a gRPC call: a request the door refuses itself (its size, encoding, JSON or a
field) is answered 401 when the mesh does not take its key (`_key_first.py`).

Model names `codeworld/...`, `agent/<model>`, `certainly/...` and `lean4/...` reach the
other services (the table is `runs.ROUTES`). Each service's calls use the client's channel
for it, so a shim-only process fronts services living in other processes.

Every response carries `x-request-id` (the caller's, or a new one), which is also the
gRPC call's request id. Errors use OpenAI's body; once a stream has started, an error
goes in-band as `data: {"error": ...}` followed by `[DONE]`. A caller who hangs up
cancels the call it made (and so its upstream request), streamed or not.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from scillm.clients import ScillmClient, openai_wire
from scillm.clients.errors import InvalidRequestError, RPCError
from scillm.completion.v1 import completion_pb2 as pb

from ..seed import envelope
from . import embeddings, keys, responses, runs, seed_doors, sse, text_completions
from ._asgi import COMPLETIONS, CompletionsDoor, grpc_carries, hung_up
from ._key_first import KeyFirst
from .errors import error_body, error_response, from_exception
from .openapi import OPENAPI

__all__ = ["create_app"]

#: Health entries /readyz asks, each on the channel its service's calls use.
_SERVICES = {
    "completion": "scillm.completion.v1.CompletionService",
    "prove": "scillm.prove.v1.ProveService",
    "codeworld": "scillm.codeworld.v1.CodeWorldService",
    "agent": "scillm.agent.v1.AgentService",
}


def _credentials(request: Request) -> list[tuple[str, str]]:
    """The caller's key, passed on to the mesh as gRPC metadata."""
    return _scope_credentials(request.scope["headers"])


def _scope_credentials(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """`_credentials` from the ASGI scope's headers: `authorization`, else `x-api-key` or
    `api-key` as a bearer token."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _KEY_HEADERS and name not in found:  # the first of each, as Starlette
            found[name] = value
    authorization = found.get(b"authorization")
    key = found.get(b"x-api-key") or found.get(b"api-key")
    value = authorization or (b"Bearer " + key if key else b"")
    if not value:
        return []
    # A value gRPC metadata cannot carry (a tab, UTF-8, or past what a server takes: 20 KB
    # came back as HTTP/2's 431) failed the call with a 500 where the shim dials its
    # services; it is no key anyone holds: the mesh answers 401.
    return [("authorization", value.decode("latin-1")
             if len(value) <= _MAX_KEY_BYTES and grpc_carries(value) else "Bearer not-a-key")]


_KEY_HEADERS = frozenset((b"authorization", b"x-api-key", b"api-key"))
#: The longest Authorization passed on (a key is some 50 bytes; gRPC servers take 8-16 KiB
#: of metadata in all).
_MAX_KEY_BYTES = 4096
#: A chunk's fields that name its stream, which the usage-only chunk repeats.
_CHUNK_NAMING = ("id", "created", "model", "system_fingerprint", "service_tier")


async def _sse(payloads: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """The shim's one SSE writer: a `data:` event per payload; an error once the stream
    has started goes in-band as OpenAI's error body; `data: [DONE]` always ends it."""
    try:
        async for payload in payloads:
            yield sse.event(payload)
    except (RPCError, InvalidRequestError) as exc:
        _, body, _ = from_exception(exc)
        yield sse.event(body)
    finally:
        await payloads.aclose()  # type: ignore[attr-defined]
    yield sse.DONE


async def _prepend(first: dict[str, Any],
                   rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """`first`, then `rest` (closing `rest` when closed early)."""
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


def _duration_ms(d: Any) -> float:
    return float(d.seconds * 1000 + d.nanos / 1e6)


def _extras(resp: pb.CompletionResponse) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "routing": openai_wire.routing_from_proto(resp.routing),
        "run_id": resp.manifest.run_id,
    }
    if resp.HasField("json_valid"):
        extra["json_valid"] = resp.json_valid
    return extra


async def _send_completion(send: Send, resp: pb.CompletionResponse, started: float) -> None:
    """A completion as OpenAI's `chat.completion` JSON, with the mesh's timing headers:
    the two messages (and the headers, in order) Starlette's `Response` would send."""
    out = openai_wire.response_from_proto(resp)
    out["scillm"] = _extras(resp)
    payload = orjson.dumps(out)
    overhead = _duration_ms(resp.routing.overhead)
    total = (time.perf_counter() - started) * 1000
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"x-scillm-overhead-ms", b"%.3f" % overhead),
        (b"x-scillm-total-ms", b"%.3f" % total),
        (b"content-length", b"%d" % len(payload)),
        (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


class _Shim:
    def __init__(self, client: ScillmClient, max_request_bytes: int) -> None:
        self.client = client
        self.max_request_bytes = max_request_bytes
        self.key_first = KeyFirst(client)
        self._health = {service: health_pb2_grpc.HealthStub(client.channels[service])
                        for service in _SERVICES}

    async def _json_body(self, request: Request) -> dict[str, Any]:
        return await self._read_json(request.scope, request.receive)

    async def _read_json(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """The request's body, a JSON object: _TooLarge past the size limit (by its
        Content-Length, else as soon as the bytes read pass it: a chunked body is not
        read to its end first), _Encoded for a compressed body (not read),
        InvalidRequestError when it is not an object."""
        limit = self.max_request_bytes
        sized = False
        for name, value in scope["headers"]:
            if name == b"content-length" and not sized:  # the first, as Headers.get
                sized = True
                if value.isdigit() and int(value) > limit:
                    raise _TooLarge(int(value), limit)
            elif name == b"content-encoding" and value.strip().lower() != b"identity":
                raise _Encoded(value.decode("latin-1"))
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise _TooLarge(None if message.get("more_body", False) else size, limit)
            more = message.get("more_body", False)
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            body = orjson.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("request body must be a JSON object")
        return body

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/chat/completions, as plain ASGI: the door's hot path builds no Request
        and, for a completion answered in one piece, no Response (the JSON and its head
        are sent as they are)."""
        started = time.perf_counter()
        request_id: str = scope["state"]["request_id"]
        creds = _scope_credentials(scope["headers"])
        response: Response | sse.EventStream
        try:
            body = await self._read_json(scope, receive)
            stream, include_usage = openai_wire.stream_flags(body)
            routed = runs.route(self.client, body, request_id, creds)
            if routed is not None:
                response = await self._routed(routed, stream, include_usage)
            elif stream:
                response = await self._completion_stream(body, request_id, creds, include_usage)
            else:
                resp = await self.client.completion.create(
                    openai_wire.request_to_proto(body), request_id=request_id, metadata=creds)
                await _send_completion(send, resp, started)
                return
        except _BodyRefused as exc:
            response = await self.key_first.refusal(creds, exc.response())
        except (InvalidRequestError, RPCError) as exc:
            response = await self.key_first.error(creds, exc)
        except StopAsyncIteration:
            response = error_response(RPCError(grpc.StatusCode.INTERNAL, "empty stream"))
        await response(scope, receive, send)

    async def _completion_stream(self, body: dict[str, Any], request_id: str,
                                 creds: list[tuple[str, str]],
                                 include_usage: bool) -> sse.EventStream:
        """A streamed completion once its first event has come (errors before it raise)."""
        proto = openai_wire.request_to_proto(body)
        events = self.client.completion.stream(proto, include_usage=True,
                                               request_id=request_id, metadata=creds)
        first = await anext(events)
        return sse.EventStream(_sse(self._completion_payloads(first, events, include_usage)))

    async def _routed(self, run: runs.RoutedRun, stream: bool,
                      include_usage: bool) -> Response | sse.EventStream:
        """A run of another service behind a model name (see runs.py)."""
        completion_id = runs.new_completion_id()
        if stream:
            chunks = run.chunks(completion_id, include_usage=include_usage)
            first = await anext(chunks)
            return sse.EventStream(_sse(_prepend(first, chunks)))
        text, payload, usage, finish = await run.collect()
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": int(time.time()),
            "model": run.model, "choices": [{"index": 0, "finish_reason": finish,
                                             "logprobs": None, "message": {
                                                 "role": "assistant", "content": text,
                                                 "refusal": None}}],
            "usage": usage, "scillm": payload})

    async def agent_run(self, request: Request) -> Response:
        """`POST /agent/run`: ours or the seed's agent envelope, answered in kind."""
        request_id: str = request.scope["state"]["request_id"]
        creds = _credentials(request)
        try:
            body = await self._json_body(request)
            reply = await seed_doors.agent_run(self.client, body, request.headers, request_id,
                                               creds)
        except _BodyRefused as exc:
            return await self.key_first.refusal(creds, exc.response())
        except (InvalidRequestError, RPCError) as exc:
            return await self.key_first.error(creds, exc)
        return JSONResponse(reply)

    async def bridge_complete(self, request: Request) -> Response | sse.EventStream:
        """The seed's `POST /bridge/complete` envelope: {messages, items, provider, options}.

        The model (or `provider.name`) picks the service; without one, items with
        strategies go to CodeWorld and other items to Certainly (Prove). A seed-shaped
        request gets the seed's reply (see seed/envelope.py), others a chat.completion.
        """
        request_id: str = request.scope["state"]["request_id"]
        creds = _credentials(request)
        try:
            body = await self._json_body(request)
            if envelope.is_seed_bridge(body, request.headers):
                return JSONResponse(await seed_doors.bridge_complete(
                    self.client, body, request_id, creds))
            body["model"] = envelope.service_model(body)
            stream, include_usage = openai_wire.stream_flags(body)
            run = runs.route(self.client, body, request_id, creds)
            if run is None:
                raise InvalidRequestError(
                    "/bridge/complete serves codeworld/..., certainly/..., lean4/... and "
                    "agent/... models", param="model")
            return await self._routed(run, stream, include_usage)
        except _BodyRefused as exc:
            return await self.key_first.refusal(creds, exc.response())
        except (InvalidRequestError, RPCError) as exc:
            return await self.key_first.error(creds, exc)

    @staticmethod
    async def _completion_payloads(first: pb.CompletionStreamResponse,
                                   events: AsyncIterator[pb.CompletionStreamResponse],
                                   include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        """A completion stream as OpenAI chunks (the usage-only chunk when asked for, named
        as the chunks before it: their id, time, model, fingerprint and tier)."""
        try:
            event: pb.CompletionStreamResponse | None = first
            named: dict[str, Any] | None = None
            while event is not None:
                if event.HasField("chunk"):
                    chunk = openai_wire.chunk_from_proto(event.chunk)
                    named = chunk
                    yield chunk
                elif include_usage:
                    end = event.end
                    head = {"id": end.id, "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": end.manifest.model}
                    if named is not None:
                        head.update((k, named[k]) for k in _CHUNK_NAMING if k in named)
                    yield {**head, "choices": [],
                           "usage": openai_wire.usage_from_proto(end.usage),
                           "scillm": {"routing": openai_wire.routing_from_proto(end.routing),
                                      "run_id": end.manifest.run_id}}
                event = await anext(events, None)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def refused(self, request: Request, exc: Exception) -> Response:
        """A body a route's endpoint (embeddings.py, text_completions.py, ...) did not
        read: `_BodyRefused`'s answer, after the caller's key (`_key_first.py`)."""
        assert isinstance(exc, _BodyRefused)
        return await self.key_first.refusal(_credentials(request), exc.response())

    async def models(self, request: Request) -> Response:
        try:
            names = await self.client.completion.list_models(metadata=_credentials(request))
        except RPCError as exc:
            return error_response(exc)
        return JSONResponse({"object": "list", "data": [_model_json(n, "scillm")
                                                        for n in names]})

    async def model(self, request: Request) -> Response:
        """OpenAI's `GET /v1/models/{model}` (a name may hold slashes: `echo/x`)."""
        try:
            found = await self.client.completion.get_model(
                request.path_params["model"], metadata=_credentials(request))
        except RPCError as exc:
            return error_response(exc)
        return JSONResponse(_model_json(found.id, found.owned_by))

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ready, statuses = await self._readiness()
        return JSONResponse({"ready": ready, "services": statuses},
                            status_code=200 if ready else 503)

    async def ready(self, request: Request) -> Response:
        """The seed's readiness probe: `{"ok": ...}`, 503 when not ready."""
        ready, statuses = await self._readiness()
        return JSONResponse({"ok": ready, "services": statuses},
                            status_code=200 if ready else 503)

    async def _readiness(self) -> tuple[bool, dict[str, str]]:
        statuses: dict[str, str] = {}
        for service, name in _SERVICES.items():
            try:
                reply = await self._health[service].Check(
                    health_pb2.HealthCheckRequest(service=name), timeout=2.0)
                statuses[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    continue  # not served by this mesh
                statuses[name] = err.code().name
        ready = bool(statuses) and all(s == "SERVING" for s in statuses.values())
        return ready, statuses


def _model_json(model_id: str, owned_by: str) -> dict[str, Any]:
    """OpenAI's `model` object (the mesh knows no creation time: 0)."""
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owned_by}


def _gone(request: Request, exc: Exception) -> Response:
    """A caller who hung up inside its body: noted (`hung_up`); the answer goes nowhere."""
    hung_up(request.scope)
    return Response(status_code=400)


def _not_served(request: Request, exc: Exception) -> Response:
    """404 and 405 in OpenAI's error body (its own words for an unknown URL)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    where = f"{request.method} {request.url.path}"
    message = (f"Invalid URL ({where})" if status == 404
               else f"{request.method} is not allowed on {request.url.path}")
    headers = exc.headers if isinstance(exc, HTTPException) else None
    return JSONResponse(error_body(message, "invalid_request_error"), status_code=status,
                        headers=headers)


class _BodyRefused(Exception):
    """A request body the door does not read; the connection closes after the answer, so
    the rest of the body is not read either."""

    status = 400
    code: str | None = None

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(str(self), "invalid_request_error", code=self.code),
                            status_code=self.status, headers={"connection": "close"})


class _TooLarge(_BodyRefused):
    """413: past the size limit. `size` is the body's, when known (its Content-Length, or
    all of it read)."""

    status, code = 413, "request_too_large"

    def __init__(self, size: int | None, limit: int) -> None:
        of = "" if size is None else f"of {size} bytes "
        super().__init__(f"request body {of}exceeds the limit of {limit} bytes")


class _Encoded(_BodyRefused):
    """415: a compressed body (Content-Encoding other than identity). Read as JSON it was a
    400 "not valid JSON", which sent callers looking for a fault in their JSON."""

    status, code = 415, "unsupported_content_encoding"

    def __init__(self, encoding: str) -> None:
        super().__init__(f"request bodies with Content-Encoding {encoding!r} are not "
                         "read: send the JSON uncompressed")


def create_app(client: ScillmClient, *, max_request_bytes: int = 8 * 1024 * 1024,
               metrics_registry: CollectorRegistry | None = None,
               ui: ASGIApp | None = None) -> ASGIApp:
    """The shim as an ASGI app calling the mesh through `client`.

    `/metrics` renders `metrics_registry` (the mesh's, when the shim runs inside it);
    `ui`, when given, is served at `/ui` (the runs UI, scillm.bridges.ui).
    """
    shim = _Shim(client, max_request_bytes)
    registry = metrics_registry or CollectorRegistry()

    async def openapi(request: Request) -> Response:
        return Response(orjson.dumps(OPENAPI), media_type="application/json")

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    completions = functools.partial(shim.chat_completions)  # not a function: ASGI to Starlette
    refuse = shim.key_first.error
    routes = [
        *(Route(path, completions, methods=["POST"]) for path in COMPLETIONS),
        *(Route(path, embeddings.endpoint(client, shim._json_body, _credentials, refuse),
                methods=["POST"]) for path in embeddings.PATHS),
        *(Route(path, text_completions.endpoint(client, shim._json_body, _credentials, _sse,
                                                refuse),
                methods=["POST"]) for path in text_completions.PATHS),
        *(Route(path, responses.endpoint(client, shim._json_body, _credentials, refuse),
                methods=["POST"]) for path in responses.PATHS),
        Route("/v1/models", shim.models, methods=["GET"]),
        Route("/v1/models/{model:path}", shim.model, methods=["GET"]),
        Route("/models", shim.models, methods=["GET"]),
        Route("/agent/run", shim.agent_run, methods=["POST"]),
        *keys.routes(client, shim._json_body, _credentials, refuse),
        Route("/bridge/complete", shim.bridge_complete, methods=["POST"]),
        Route("/healthz", shim.healthz, methods=["GET"]),
        Route("/ready", shim.ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/readyz", shim.readyz, methods=["GET"]),
        *([Mount("/ui", ui)] if ui is not None else []),
    ]
    # An error no endpoint mapped: OpenAI's 500 body (Starlette's error layer sends it,
    # then lets the server log the exception), as the completions door answers one; a path
    # or method the door does not serve: OpenAI's body too, not Starlette's plain text.
    starlette = Starlette(routes=routes, exception_handlers={
        Exception: lambda request, exc: error_response(exc),
        ClientDisconnect: _gone, 404: _not_served, 405: _not_served,
        _BodyRefused: shim.refused})
    return CompletionsDoor(starlette, completions)
