"""The embeddings reply at the OpenAI door: vectors read off their wire bytes (see
`_float32_bytes`) are the proto's numbers exactly, whatever else a vector carries."""

from __future__ import annotations

import base64
import math
import struct

import pytest

from scillm.clients import openai_wire
from scillm.completion.v1 import completion_pb2 as pb

# Field 9 (varint 7), field 10 (fixed64), field 11 (bytes), field 12 (fixed32): fields a
# newer server may send, which this client keeps as unknown fields.
_UNKNOWN = (b"\x48\x07" + b"\x51" + bytes(8) + b"\x5a\x03abc" + b"\x65" + bytes(4))


def _response() -> pb.EmbeddingResponse:
    reply = pb.EmbeddingResponse(model="m")
    values = [0.0, -0.0, 1.5, -2.25e-30, 3.4e38, math.pi, 1e-45, -1.0]
    for index in (0, 1, 127, 128, 300, 2**31 - 1, -1):  # 1- to 10-byte varints
        reply.data.add(index=index, embedding=values[: (index % 7) + 1])
    reply.data.add(index=5)  # no numbers
    reply.data.add(index=6, embedding=[float(i) for i in range(4096)])
    odd = pb.EmbeddingVector(index=7, embedding=[1.0, 2.0])
    odd.MergeFromString(_UNKNOWN + b"\x15" + struct.pack("<f", 3.0))  # and one unpacked
    reply.data.append(odd)
    grouped = pb.EmbeddingVector(index=8, embedding=[4.0, 5.0])
    grouped.MergeFromString(b"\x6b\x08\x01\x6c")  # an unknown group (field 13): proto2's
    reply.data.append(grouped)
    return reply


@pytest.mark.parametrize("encoding", [pb.EMBEDDING_ENCODING_UNSPECIFIED,
                                      pb.EMBEDDING_ENCODING_FLOAT,
                                      pb.EMBEDDING_ENCODING_BASE64])
def test_vectors_are_the_protos_numbers_exactly(encoding: int) -> None:
    reply = _response()
    out = openai_wire.embedding_response_from_proto(reply, encoding)
    assert [d["index"] for d in out["data"]] == [item.index for item in reply.data]
    for item, written in zip(reply.data, out["data"], strict=True):
        want = list(item.embedding)
        if encoding == pb.EMBEDDING_ENCODING_BASE64:
            raw = base64.b64decode(written["embedding"], validate=True)
            assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == want
        else:
            assert written["embedding"] == want
    assert list(reply.data[-2].embedding) == [1.0, 2.0, 3.0]
    assert reply.data[-1].SerializeToString().endswith(b"\x6b\x08\x01\x6c")
