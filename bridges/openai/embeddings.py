"""`POST /v1/embeddings` (and LiteLLM's `/embeddings`): OpenAI's embeddings request in, one
`CompletionService.Embedding` call, OpenAI's embeddings list out.

    {"object": "list", "model": ..., "usage": {"prompt_tokens", "total_tokens"},
     "data": [{"object": "embedding", "index": i, "embedding": [...] or "<base64>"}],
     "scillm": {"routing": ..., "run_id": ...}}

`encoding_format: "base64"` (the openai SDK's default) answers each vector as the base64 of
its little-endian float32 bytes, "float" (or none) as numbers. The body is read as the
chat door reads its own (size limit, no compression); errors are OpenAI's body with the
status of the one table (errors.py): a malformed request 400 (401 first when the mesh
does not take the caller's key: _key_first.py), an unknown model 404 `model_not_found`, an
upstream's failure 502. The caller's key goes on as gRPC metadata, so the call is
authenticated, rate-limited and charged as a completion is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from scillm.clients import ScillmClient, openai_wire
from scillm.clients.errors import InvalidRequestError, RPCError
from scillm.completion.v1 import completion_pb2 as pb

from ._key_first import Refuse

__all__ = ["PATHS", "endpoint"]

#: OpenAI's path, and LiteLLM's without the version.
PATHS = ("/v1/embeddings", "/embeddings")
#: The most numbers a reply may hold to be written on the event loop; a larger one is
#: written in a worker thread, which gives the loop the GIL between vectors (2048 vectors
#: of 3,072 numbers as floats held the loop 466 ms inline; 272 ms so, the JSON encoding
#: itself being one call that keeps the GIL).
_INLINE_VALUES = 256 * 1024

ReadJson = Callable[[Request], Awaitable[dict[str, Any]]]
Credentials = Callable[[Request], Sequence[tuple[str, str]]]


def endpoint(client: ScillmClient, read_json: ReadJson, credentials: Credentials,
             refuse: Refuse) -> Callable[[Request], Awaitable[Response]]:
    """The route's endpoint: `read_json` reads a request's body as the shim does (a body
    it refuses raises the shim's own exception, which its handler answers), `credentials`
    are the caller's key as metadata, `refuse` answers a failed request (the key first)."""

    async def embeddings(request: Request) -> Response:
        try:
            body = await read_json(request)
            proto = openai_wire.embedding_request_to_proto(body)
            reply = await client.completion.embed(
                proto, request_id=request.scope["state"]["request_id"],
                metadata=credentials(request))
        except (InvalidRequestError, RPCError) as exc:
            return await refuse(credentials(request), exc)
        if sum(len(item.embedding) for item in reply.data) > _INLINE_VALUES:
            content = await asyncio.to_thread(_body, reply, proto.encoding_format)
        else:
            content = _body(reply, proto.encoding_format)
        return Response(content, media_type="application/json")

    return embeddings


def _body(reply: pb.EmbeddingResponse, encoding: int) -> bytes:
    """The reply as the route's JSON body, its vectors as `encoding` says."""
    out = openai_wire.embedding_response_from_proto(reply, encoding)
    out["scillm"] = {"routing": openai_wire.routing_from_proto(reply.routing),
                     "run_id": reply.manifest.run_id}
    return orjson.dumps(out)
