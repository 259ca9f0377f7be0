"""`POST /v1/completions` (and LiteLLM's `/completions`): OpenAI's legacy text completions
request in, one `CompletionService.TextCompletion` call, OpenAI's `text_completion` out.

    {"id": "cmpl-...", "object": "text_completion", "created": ..., "model": ...,
     "choices": [{"index": i, "text": ..., "logprobs": null, "finish_reason": ...}],
     "usage": {...}, "scillm": {"routing": ..., "run_id": ...}}

With `logprobs` (0 to 5) each choice's `logprobs` is OpenAI's legacy object, as the
upstream gave it: `{"text_offset": [...], "token_logprobs": [...], "tokens": [...],
"top_logprobs": [{token: logprob, ...}, ...]}` (in a stream, each chunk's are those of its
text); a provider that gives none (`echo/...`, the local model) leaves it null, as chat
completions do.

With `"stream": true` it is one `TextCompletionStream` call answered as OpenAI streams it:
Server-Sent Events, each a chunk of that shape without `usage` (a piece of each choice's
text; `finish_reason` null until the choice's last chunk), then `data: [DONE]`. With
`stream_options.include_usage`, one more chunk before `[DONE]` carries `"choices": []` and
the usage (and `scillm`'s routing and run id), as OpenAI's does.

This is what base models (the embedded Gemma 3 270M is one), lm-evaluation-harness's
`local-completions` and vLLM/llama.cpp clients speak. The body is read as the chat door
reads its own (size limit, no compression); errors are OpenAI's body with the status of
the one table (errors.py): a malformed request 400 (401 first when the mesh does not take
the caller's key: _key_first.py), an unknown model 404 `model_not_found`, an upstream's
failure 502. A stream's errors before
its first chunk are such answers too; once it has started, an error goes in-band as
OpenAI's error body, then `[DONE]`, and a caller who hangs up cancels the call (and its
upstream request). The caller's key goes on as gRPC metadata, so the call is
authenticated, rate-limited, reserved and charged as a chat completion is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import orjson
from starlette.requests import Request
from starlette.responses import Response

from scillm.clients import ScillmClient, openai_wire
from scillm.clients.errors import InvalidRequestError, RPCError
from scillm.completion.v1 import completion_pb2 as pb

from . import sse
from ._key_first import Refuse
from .errors import error_response

__all__ = ["PATHS", "endpoint"]

#: OpenAI's path, and LiteLLM's without the version.
PATHS = ("/v1/completions", "/completions")

Payloads = AsyncIterator[dict[str, Any]]


def endpoint(client: ScillmClient, read_json: Callable[[Request], Awaitable[dict[str, Any]]],
             credentials: Callable[[Request], Sequence[tuple[str, str]]],
             events: Callable[[Payloads], AsyncIterator[bytes]], refuse: Refuse,
             ) -> Callable[[Request], Awaitable[Response | sse.EventStream]]:
    """The route's endpoint: `read_json` reads a body as the shim does (one it refuses
    raises the shim's own exception, which its handler answers); `credentials` are the
    caller's key as metadata; `events` is the shim's SSE writer (a `data:` event per
    payload, an error in-band, `[DONE]` last); `refuse` answers a failed request (the key
    first)."""

    async def text_completions(request: Request) -> Response | sse.EventStream:
        request_id: str = request.scope["state"]["request_id"]
        try:
            body = await read_json(request)
            stream, include_usage = openai_wire.stream_flags(body)
            if stream:
                proto = openai_wire.text_request_to_proto(
                    {k: v for k, v in body.items() if k != "stream"})
                chunks = client.completion.text_stream(proto, request_id=request_id,
                                                       metadata=credentials(request))
                first = await anext(chunks)  # what fails before it is a plain answer
                return sse.EventStream(events(_payloads(first, chunks, include_usage)))
            reply = await client.completion.text(
                openai_wire.text_request_to_proto(body), request_id=request_id,
                metadata=credentials(request))
        except (InvalidRequestError, RPCError) as exc:
            return await refuse(credentials(request), exc)
        except StopAsyncIteration:
            return error_response(RPCError(grpc.StatusCode.INTERNAL, "empty stream"))
        out = openai_wire.text_response_from_proto(reply)
        out["scillm"] = {"routing": openai_wire.routing_from_proto(reply.routing),
                         "run_id": reply.manifest.run_id}
        return Response(orjson.dumps(out), media_type="application/json")

    return text_completions


async def _payloads(first: pb.TextCompletionStreamResponse,
                    rest: AsyncIterator[pb.TextCompletionStreamResponse],
                    include_usage: bool) -> Payloads:
    """A text completion stream as OpenAI's chunks; the usage-only chunk when asked for,
    named as the chunks before it (their id, time and model)."""
    try:
        event: pb.TextCompletionStreamResponse | None = first
        named: dict[str, Any] | None = None
        while event is not None:
            if event.HasField("chunk"):
                named = openai_wire.text_chunk_from_proto(event.chunk)
                yield named
            elif include_usage:
                end = event.end
                yield {"id": end.id, "object": "text_completion",
                       "created": named["created"] if named else int(time.time()),
                       "model": named["model"] if named else end.manifest.model,
                       "choices": [], "usage": openai_wire.usage_from_proto(end.usage),
                       "scillm": {"routing": openai_wire.routing_from_proto(end.routing),
                                  "run_id": end.manifest.run_id}}
            event = await anext(rest, None)
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
