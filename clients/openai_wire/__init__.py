"""Translation between OpenAI's chat-completions (embeddings, text completions, and the
Responses API read as chat: _responses.py) JSON and the CompletionService protos.

One module for both directions and both doors: the HTTP shim turns OpenAI JSON into a
`CompletionRequest` and the response back into JSON; the Completion servicer turns the
request into the OpenAI-shaped dict its providers speak and their answer into protos.

Everything that is not in the proto is refused here with `InvalidRequestError`
(a bad field in a caller's JSON), so that no layer invents a field the contract lacks.
Unknown top-level request keys travel in `extra_body` to the provider unchanged.
"""

from __future__ import annotations

from ._embeddings import (
    embedding_request_from_proto,
    embedding_request_to_proto,
    embedding_response_from_proto,
)
from ._messages import message_from_proto, message_to_proto
from ._request import request_from_proto, request_to_proto, stream_flags
from ._response import (
    chunk_from_proto,
    chunk_to_proto,
    response_from_proto,
    response_to_proto,
    routing_from_proto,
    usage_from_proto,
    usage_to_proto,
)
from ._responses import (
    ResponsesRequest,
    ResponseStream,
    response_from_completion,
    responses_request,
)
from ._text import (
    text_chunk_from_proto,
    text_chunk_to_proto,
    text_request_from_proto,
    text_request_to_proto,
    text_response_from_proto,
    text_response_to_proto,
)
from ._values import (
    FINISH_REASONS,
    MAX_JSON_DEPTH,
    ROLES,
    json_dumps,
    struct_from_json,
    struct_to_json,
)

__all__ = [
    "FINISH_REASONS",
    "MAX_JSON_DEPTH",
    "ROLES",
    "ResponseStream",
    "ResponsesRequest",
    "chunk_from_proto",
    "chunk_to_proto",
    "embedding_request_from_proto",
    "embedding_request_to_proto",
    "embedding_response_from_proto",
    "json_dumps",
    "message_from_proto",
    "message_to_proto",
    "request_from_proto",
    "request_to_proto",
    "response_from_completion",
    "response_from_proto",
    "response_to_proto",
    "responses_request",
    "routing_from_proto",
    "stream_flags",
    "struct_from_json",
    "struct_to_json",
    "text_chunk_from_proto",
    "text_chunk_to_proto",
    "text_request_from_proto",
    "text_request_to_proto",
    "text_response_from_proto",
    "text_response_to_proto",
    "usage_from_proto",
    "usage_to_proto",
]
