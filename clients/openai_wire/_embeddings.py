"""An embeddings request and reply, OpenAI JSON <-> `EmbeddingRequest` / `EmbeddingResponse`.

`input` is a string, an array of strings, an array of token ids, or an array of such
arrays, as OpenAI takes it; the proto holds a list of inputs, each a text or token ids.
What the proto cannot hold (a number among texts, `true`, a token id past int64) is
refused here naming the item; what it can hold but OpenAI refuses (no input, an empty
one, too many, `dimensions` 0) is the server's to refuse, for every door alike. The reply's
vectors are floats, or with `encoding_format: "base64"` the base64 of their little-endian
float32 bytes (what the openai SDK asks for, and decodes, by default).
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Mapping
from typing import Any

from scillm.completion.v1 import completion_pb2 as pb

from ..errors import InvalidRequestError
from ._request import options_from_proto, options_to_proto, required_model
from ._values import _expect, _number

__all__ = ["ENCODINGS", "embedding_request_from_proto", "embedding_request_to_proto",
           "embedding_response_from_proto"]

ENCODINGS: dict[str, int] = {"float": pb.EMBEDDING_ENCODING_FLOAT,
                             "base64": pb.EMBEDDING_ENCODING_BASE64}
#: The request keys read here; any other goes to `extra_body`, then to the provider.
_HANDLED = frozenset({"model", "input", "dimensions", "encoding_format", "user", "scillm"})
_MAX_TOKEN_ID = 2**63


def _token_ids(items: list[Any], param: str) -> pb.TokenIds:
    for i, item in enumerate(items):
        if type(item) is not int or not 0 <= item < _MAX_TOKEN_ID:
            raise InvalidRequestError(f"'{param}[{i}]' must be a token id (a whole number "
                                      "from 0)", param=f"{param}[{i}]")
    return pb.TokenIds(ids=items)


def _inputs(value: Any) -> list[pb.EmbeddingInput]:
    """OpenAI's `input` as the proto's inputs."""
    if isinstance(value, str):
        return [pb.EmbeddingInput(text=value)]
    items = _expect(value, list, "input")
    if not items:
        return []
    if all(type(i) is int for i in items):  # one input, as token ids
        return [pb.EmbeddingInput(tokens=_token_ids(items, "input"))]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(pb.EmbeddingInput(text=item))
        elif isinstance(item, list):
            out.append(pb.EmbeddingInput(tokens=_token_ids(item, f"input[{i}]")))
        else:
            raise InvalidRequestError(f"'input[{i}]' must be a string or an array of token "
                                      "ids", param=f"input[{i}]")
    return out


def embedding_request_to_proto(body: Mapping[str, Any]) -> pb.EmbeddingRequest:
    """OpenAI's embeddings request body as an `EmbeddingRequest`; InvalidRequestError
    naming the offending parameter."""
    model = required_model(body)
    if "input" not in body:
        raise InvalidRequestError("'input' is required", param="input")
    for key in ("cache", "caching"):
        if body.get(key) is not None:
            raise InvalidRequestError("embeddings are not cached", param=key)
    try:
        req = pb.EmbeddingRequest(model=model, input=_inputs(body["input"]))
    except UnicodeEncodeError:
        raise InvalidRequestError("'input' holds a string that is not valid Unicode (a lone "
                                  "surrogate)", param="input") from None
    if body.get("dimensions") is not None:
        req.dimensions = _number(body["dimensions"], int, "dimensions")
    fmt = body.get("encoding_format")
    if fmt is not None:
        if not isinstance(fmt, str) or fmt not in ENCODINGS:  # [] or {}: no key
            raise InvalidRequestError("'encoding_format' must be \"float\" or \"base64\"",
                                      param="encoding_format")
        req.encoding_format = ENCODINGS[fmt]  # type: ignore[assignment]
    if body.get("user") is not None:
        req.user = _expect(body["user"], str, "user")
    options_to_proto(req, body, _HANDLED)
    return req


def embedding_request_from_proto(req: pb.EmbeddingRequest) -> dict[str, Any]:
    """An `EmbeddingRequest` as the engine's request: OpenAI's JSON with `input` a list
    (texts, or token-id lists) and the routing options under `scillm`."""
    body: dict[str, Any] = {"model": req.model, "input": [
        item.text if item.WhichOneof("input") != "tokens" else list(item.tokens.ids)
        for item in req.input]}
    if req.HasField("dimensions"):
        body["dimensions"] = req.dimensions
    if req.user:
        body["user"] = req.user
    options_from_proto(req, body)
    return body


def _float32_bytes(vector: pb.EmbeddingVector) -> bytes:
    """`vector.embedding` as little-endian float32 bytes, read off the vector's wire form.

    A protobuf container hands its numbers out one Python float at a time (2048 vectors of
    3,072 numbers: 0.28 s by `list`, 0.35 s by `array`, on the door's event loop); packed
    on the wire they are these very bytes (0.01 s with the serialization). Fields other
    than `embedding` (field 2: packed, or one float at a time) are skipped.
    """
    wire = vector.SerializeToString()
    parts: list[bytes] = []
    pos, end = 0, len(wire)
    while pos < end:
        key, pos = _varint(wire, pos)
        field, kind = key >> 3, key & 7
        if kind == 0:  # varint
            pos = _varint(wire, pos)[1]
        elif kind == 2:  # length-delimited
            size, pos = _varint(wire, pos)
            if field == 2:
                parts.append(wire[pos:pos + size])
            pos += size
        elif kind in (1, 5):  # fixed64, fixed32
            if field == 2 and kind == 5:
                parts.append(wire[pos:pos + 4])
            pos += 8 if kind == 1 else 4
        else:  # a group: in no message of ours, nor any proto3 one
            packed = array("f", vector.embedding)
            if sys.byteorder == "big":
                packed.byteswap()
            return packed.tobytes()
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _varint(wire: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` of `wire`, and the position after it."""
    value = shift = 0
    while True:
        byte = wire[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _base64(vector: pb.EmbeddingVector) -> str:
    """A vector as the base64 of its little-endian float32 bytes."""
    return base64.b64encode(_float32_bytes(vector)).decode("ascii")


def _floats(vector: pb.EmbeddingVector) -> list[float]:
    """A vector as a list of floats."""
    packed = array("f")
    packed.frombytes(_float32_bytes(vector))
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()


def embedding_response_from_proto(resp: pb.EmbeddingResponse,
                                  encoding: int = pb.EMBEDDING_ENCODING_FLOAT,
                                  ) -> dict[str, Any]:
    """An `EmbeddingResponse` as OpenAI's embeddings list, its vectors as `encoding`
    says (an EmbeddingEncoding; unset: floats)."""
    encode = _base64 if encoding == pb.EMBEDDING_ENCODING_BASE64 else _floats
    return {"object": "list",
            "data": [{"object": "embedding", "index": item.index,
                      "embedding": encode(item)} for item in resp.data],
            "model": resp.model,
            "usage": {"prompt_tokens": resp.usage.prompt_tokens,
                      "total_tokens": resp.usage.total_tokens}}
