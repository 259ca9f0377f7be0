"""`POST /v1/completions` (and LiteLLM's `/completions`): OpenAI's legacy text completions
request in, one `CompletionService.TextCompletion` call, OpenAI's `text_completion` out.

    {"id": "cmpl-...", "object": "text_completion", "created": ..., "model": ...,
     "choices": [{"index": i, "text": ..., "logprobs": null, "finish_reason": ...}],
     "usage": {...}, "scillm": {"routing": ..., "run_id": ...}}

This is what base models (the embedded Gemma 3 270M is one), lm-evaluation-harness's
`local-completions` and vLLM/llama.cpp clients speak. The body is read as the chat door
reads its own (size limit, no compression); errors are OpenAI's body with the status of
the one table (errors.py): a malformed request 400 (`"stream": true` and `logprobs`
included: neither is served yet), an unknown model 404 `model_not_found`, an upstream's
failure 502. The caller's key goes on as gRPC metadata, so the call is authenticated,
rate-limited, reserved and charged as a chat completion is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from scillm.clients import ScillmClient, openai_wire
from scillm.clients.errors import InvalidRequestError, RPCError

from .errors import error_response

__all__ = ["PATHS", "endpoint"]

#: OpenAI's path, and LiteLLM's without the version.
PATHS = ("/v1/completions", "/completions")


def endpoint(client: ScillmClient, read_json: Callable[[Request], Awaitable[dict[str, Any]]],
             credentials: Callable[[Request], Sequence[tuple[str, str]]],
             ) -> Callable[[Request], Awaitable[Response]]:
    """The route's endpoint: `read_json` reads a body as the shim does (one it refuses
    raises the shim's own exception, which its handler answers); `credentials` are the
    caller's key as metadata."""

    async def text_completions(request: Request) -> Response:
        try:
            proto = openai_wire.text_request_to_proto(await read_json(request))
            reply = await client.completion.text(
                proto, request_id=request.scope["state"]["request_id"],
                metadata=credentials(request))
        except (InvalidRequestError, RPCError) as exc:
            return error_response(exc)
        out = openai_wire.text_response_from_proto(reply)
        out["scillm"] = {"routing": openai_wire.routing_from_proto(reply.routing),
                         "run_id": reply.manifest.run_id}
        return Response(orjson.dumps(out), media_type="application/json")

    return text_completions
