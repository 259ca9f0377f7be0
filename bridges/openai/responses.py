"""`POST /v1/responses` (and `/responses`): OpenAI's Responses API, served by the chat
completion calls (`CompletionService.Completion`, `.CompletionStream`), so that the openai
SDK's `client.responses.create` and the OpenAI Agents SDK work against the mesh.

    {"id": "resp_...", "object": "response", "created_at": ..., "status": "completed",
     "model": ..., "output": [{"type": "message", "role": "assistant", "content": [
         {"type": "output_text", "text": ..., "annotations": []}], ...},
         {"type": "function_call", "call_id": ..., "name": ..., "arguments": ...}],
     "usage": {"input_tokens", "output_tokens", "total_tokens", ...details},
     ...the request's fields..., "scillm": {"routing": ..., "run_id": ...}}

With `"stream": true` the answer is OpenAI's typed events (`event: <type>` and `data:
<event JSON>`, each with its `sequence_number`), from response.created to
response.completed (response.incomplete when the output was cut at max_output_tokens);
the translation both ways is `openai_wire`'s (clients/openai_wire/_responses.py).

Nothing is stored: `store` is accepted and the response is not kept (the mesh's run
manifest is, as for any completion), so `previous_response_id` and `conversation` are a
400 saying to send the conversation in `input`. The body is read as the chat door reads
its own; errors are OpenAI's body with the status of the one table (errors.py): a field
this door does not serve 400 naming it (401 first when the mesh does not take the caller's
key: _key_first.py), an unknown model 404 `model_not_found`. Once a
stream has started, an error goes in-band as an `error` event (carrying OpenAI's error
object, which the openai SDK raises) followed by response.failed. The caller's key goes
on as gRPC metadata, as chat's does; a caller who hangs up cancels the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import orjson
from starlette.requests import Request
from starlette.responses import Response

from scillm.clients import ScillmClient, openai_wire
from scillm.clients.errors import InvalidRequestError, RPCError
from scillm.completion.v1 import completion_pb2 as pb

from . import runs, sse
from ._key_first import Refuse
from .errors import error_response, from_exception

__all__ = ["PATHS", "endpoint"]

#: OpenAI's path, and LiteLLM's without the version.
PATHS = ("/v1/responses", "/responses")

ReadJson = Callable[[Request], Awaitable[dict[str, Any]]]
Credentials = Callable[[Request], Sequence[tuple[str, str]]]


def endpoint(client: ScillmClient, read_json: ReadJson, credentials: Credentials,
             refuse: Refuse) -> Callable[[Request], Awaitable[Any]]:
    """The route's endpoint: `read_json` reads a body as the shim does (one it refuses
    raises the shim's own exception, which its handler answers); `credentials` are the
    caller's key as metadata; `refuse` answers a failed request (the key first)."""

    async def responses(request: Request) -> Response | sse.EventStream:
        request_id: str = request.scope["state"]["request_id"]
        try:
            asked = openai_wire.responses_request(await read_json(request))
            _completion_model(asked.completion.model)
            creds = credentials(request)
            if asked.stream:
                events = client.completion.stream(asked.completion, include_usage=True,
                                                  request_id=request_id, metadata=creds)
                first = await anext(events)  # an error before it is a plain error body
                return sse.EventStream(_frames(asked.echo, first, events))
            reply = await client.completion.create(asked.completion, request_id=request_id,
                                                   metadata=creds)
        except (InvalidRequestError, RPCError) as exc:
            return await refuse(credentials(request), exc)
        except StopAsyncIteration:
            return error_response(RPCError(grpc.StatusCode.INTERNAL, "empty stream"))
        out = openai_wire.response_from_completion(reply, asked.echo, _scillm(reply))
        return Response(orjson.dumps(out), media_type="application/json")

    return responses


def _completion_model(model: str) -> None:
    """Refuse a model name that starts another service's run (runs.ROUTES): those answer
    at /v1/chat/completions."""
    for row in runs.ROUTES:
        if row.matches(model):
            raise InvalidRequestError(
                f"{model!r} starts a {row.service} run, which /v1/responses does not serve: "
                "call it at /v1/chat/completions", param="model")


def _scillm(reply: pb.CompletionResponse | pb.CompletionStreamEnd) -> dict[str, Any]:
    return {"scillm": {"routing": openai_wire.routing_from_proto(reply.routing),
                       "run_id": reply.manifest.run_id}}


def _frame(event: dict[str, Any]) -> bytes:
    """One typed event: its type as the SSE event name, then its JSON (sse.py's data)."""
    return b"event: " + str(event["type"]).encode() + b"\n" + sse.event(event)


#: The Responses API's code for a failure, by HTTP status (its codes are a closed list).
_FAILED_CODES = {429: "rate_limit_exceeded"}


async def _frames(echo: dict[str, Any], first: pb.CompletionStreamResponse,
                  events: AsyncIterator[pb.CompletionStreamResponse]) -> AsyncIterator[bytes]:
    """The completion stream as the response's events; an error after the first goes
    in-band (an `error` event, then response.failed)."""
    made = openai_wire.ResponseStream(echo, first.chunk.model if first.HasField("chunk")
                                      else "")
    try:
        for payload in made.start():
            yield _frame(payload)
        event: pb.CompletionStreamResponse | None = first
        while event is not None:
            if event.HasField("chunk"):
                payloads = made.chunk(event.chunk)
            else:
                payloads = made.end(event.end.usage, _scillm(event.end))
            for payload in payloads:
                yield _frame(payload)
            event = await anext(events, None)
        if not made.done:  # the call ended without its end event
            raise RPCError(grpc.StatusCode.INTERNAL, "the completion stream ended early")
    except (RPCError, InvalidRequestError) as exc:
        status, body, _ = from_exception(exc)
        for payload in made.fail(body["error"], _FAILED_CODES.get(status, "server_error")):
            yield _frame(payload)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
