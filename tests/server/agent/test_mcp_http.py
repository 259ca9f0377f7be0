"""The reply bound of an HTTP MCP server's client, on replies framed as the SDK may meet them
(the whole path, against a real server, is in test_mcp.py)."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx2
import pytest

from scillm.server.agent._mcp_http import BoundedTransport, ReplyTooLarge

URL = "http://mcp.test/mcp"
CALL = {"jsonrpc": "2.0", "id": "a-1", "method": "tools/call", "params": {"name": "t"}}
SSE = {"content-type": "text/event-stream"}


def _client(limit: int, chunks: Sequence[bytes], headers: dict[str, str]) -> httpx2.AsyncClient:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers=headers, content=body())

    return httpx2.AsyncClient(transport=BoundedTransport("web", limit,
                                                         httpx2.MockTransport(reply)))


async def _events(client: httpx2.AsyncClient, message: Any = CALL) -> list[str]:
    async with client, client.stream("POST", URL, json=message) as response:
        return [sse.data async for sse in httpx2.EventSource(response, max_event_size=None)]


async def test_events_within_the_limit_pass_whatever_their_line_ends() -> None:
    """Events are passed on whole (so that one past the limit can be left out); line ends
    split between chunks ("\\r" | "\\n") stay one line end."""
    stream = b'event: message\r\ndata: {"a":\r\ndata: 1}\r\n\r\n: ping\rdata: 2\r\rdata: 3\n\n'
    split = stream.index(b"\r\n") + 1  # "event: message\r" | "\ndata: ..."
    chunks = [stream[:split], *(stream[i:i + 5] for i in range(split, len(stream), 5))]
    events = await _events(_client(1 << 20, chunks, SSE))
    assert events == ['{"a":\n1}', "2", "3"]


async def test_an_sse_reply_past_the_limit_ends_in_an_error_for_its_request() -> None:
    note = b'data: {"jsonrpc":"2.0","method":"notifications/message"}\n\n'
    events = await _events(_client(100, [note, b"data: " + b"x" * 30, b"x" * 40], SSE))
    assert events[0] == note[6:-2].decode()
    error = json.loads(events[1])  # the partial event is left out: no event glued to it
    assert len(events) == 2 and error["id"] == "a-1", events
    assert error["error"]["message"] == "MCP server 'web' sent a reply over 100 bytes"


async def test_a_json_reply_past_the_limit_is_an_error_for_its_request() -> None:
    client = _client(100, [b'{"jsonrpc":"2.0","id":7,"result":"', b"x" * 200, b'"}'],
                     {"content-type": "application/json"})
    async with client:
        response = await client.post(URL, json={**CALL, "id": 7})
    assert response.json()["id"] == 7 and "over 100 bytes" in response.json()["error"]["message"]


async def test_the_limit_is_on_the_decoded_reply() -> None:
    """A gzip reply of a few kB decoding to 1 MB is past a 100 kB limit."""
    packed = gzip.compress(json.dumps({"jsonrpc": "2.0", "id": 1, "result": "x" * 1_000_000})
                           .encode())
    assert len(packed) < 10_000
    client = _client(100_000, [packed], {"content-type": "application/json",
                                         "content-encoding": "gzip"})
    async with client:
        response = await client.post(URL, json={**CALL, "id": 1})
    assert "over 100000 bytes" in response.json()["error"]["message"]


async def test_a_body_answering_no_request_past_the_limit_fails_its_request() -> None:
    client = _client(100, [b"x" * 60, b"x" * 60], {"content-type": "application/json"})
    async with client:
        with pytest.raises(ReplyTooLarge, match="MCP server 'web' sent a reply over 100 bytes"):
            await client.post(URL, json={"jsonrpc": "2.0", "method": "notifications/x"})


def test_serve_keeps_the_mcp_clients_request_lines_out_of_the_log() -> None:
    """`scillm serve` quieted httpx and httpcore but not httpx2, the MCP SDK's client: a
    streamable-HTTP MCP server cost the log an INFO line per request."""
    import logging

    from scillm.server.cli import quiet_http_clients

    root = logging.getLogger()
    level = root.level
    saved = {n: logging.getLogger(n).level for n in ("httpx", "httpcore", "httpx2", "httpcore2")}
    try:
        root.setLevel(logging.INFO)
        quiet_http_clients()
        assert not logging.getLogger("httpx2").isEnabledFor(logging.INFO)
        assert logging.getLogger("httpx2").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(level)
        for name, was in saved.items():
            logging.getLogger(name).setLevel(was)
