"""The HTTP providers' plumbing (server/completion/_http.py): server-sent events read from
the body's bytes as they arrive, whatever the chunking, against httpx's own line reading."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import httpx
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from scillm.server.completion._http import sse_events


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


def _response(chunks: list[bytes], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(200, headers=headers or {}, stream=_Chunks(chunks))


async def _reference(response: httpx.Response) -> list[tuple[str, str]]:
    """The parser as it was, over `Response.aiter_lines` (the oracle)."""
    out, event, data = [], "", list[str]()
    async for line in response.aiter_lines():
        if not line:
            if data:
                out.append((event, "\n".join(data)))
            event, data = "", list[str]()
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
    if data:
        out.append((event, "\n".join(data)))
    return out


async def _events(response: httpx.Response) -> list[tuple[str, str]]:
    return [pair async for pair in sse_events(response)]


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


_LINE = st.sampled_from([
    "data: {\"a\": 1}", "data:{\"é\": \"ünï\"}", "data: [DONE]", "event: message_start",
    "event:ping", ": a comment", "data", "id: 7", "retry: 10", "", "data: x: y", "data:  two",
])
_END = st.sampled_from(["\n", "\r\n", "\r"])


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.tuples(_LINE, _END), max_size=14), tail=_LINE,
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_events_match_httpx_line_reading_for_any_chunking(
        lines: list[tuple[str, str]], tail: str, cuts: list[int]) -> None:
    body = ("".join(text + end for text, end in lines) + tail).encode()
    chunks = _split(body, cuts)

    async def both() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        return await _events(_response(chunks)), await _reference(_response([body]))

    mine, reference = uvloop.run(both())
    assert mine == reference


def test_a_multibyte_character_split_across_chunks_arrives_whole() -> None:
    body = 'data: {"text": "ünïcødé ✓"}\n\n'.encode()
    cut = body.index("✓".encode()) + 1  # inside the character's three bytes
    events = uvloop.run(_events(_response([body[:cut], body[cut:]])))
    assert events == [("", '{"text": "ünïcødé ✓"}')]


def test_an_encoded_body_is_decoded_first() -> None:
    body = gzip.compress(b"event: delta\ndata: one\n\ndata: two\n\n")
    events = uvloop.run(_events(_response([body[:7], body[7:]],
                                          {"content-encoding": "gzip"})))
    assert events == [("delta", "one"), ("", "two")]
