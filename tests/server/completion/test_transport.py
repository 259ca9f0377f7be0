"""AiohttpTransport under httpx.AsyncClient against raw loopback servers: incremental
bodies, keep-alive, early close, timeouts and the httpx errors the providers catch."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from scillm.server.completion._transport import AiohttpTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server running `handler` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()
            self.closed.set()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


async def read_request(r: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    line = (await r.readline()).decode()
    if not line:
        raise asyncio.IncompleteReadError(b"", None)
    headers: dict[str, str] = {}
    while (h := await r.readline()) not in (b"\r\n", b""):
        k, _, v = h.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    body = await r.readexactly(int(headers.get("content-length", 0)))
    return line, headers, body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=5.0) as c:
        yield c


async def test_request_as_sent_and_keep_alive(client: httpx.AsyncClient) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(r))
            w.write(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
                    b"x-multi: a\r\nx-multi: b\r\ncontent-length: 7\r\n\r\n{\"a\":1}")

    srv = Server(handler)
    async with srv as url:
        for _ in range(3):
            resp = await client.post(f"{url}/v1/x?q=a%2Fb", content=b'{"m":1}',
                                     headers={"authorization": "Bearer k"})
            assert resp.status_code == 201 and resp.json() == {"a": 1}
            assert resp.headers.get_list("x-multi") == ["a", "b"]
            assert resp.reason_phrase == "Created"
    assert srv.connections == 1  # kept alive and reused
    line, headers, body = seen[-1]
    assert line.startswith("POST /v1/x?q=a%2Fb HTTP/1.1")
    assert body == b'{"m":1}' and headers["content-length"] == "7"
    assert headers["authorization"] == "Bearer k"
    assert headers["host"] == url.removeprefix("http://")
    assert headers["user-agent"].startswith("python-httpx/")  # httpx's, not aiohttp's


async def test_body_is_streamed_incrementally(client: httpx.AsyncClient) -> None:
    release = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"data: 1\n\n"))
        await w.drain()
        await release.wait()
        w.write(chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        await w.drain()

    async with Server(handler) as url, client.stream("POST", url, content=b"{}") as resp:
        lines = resp.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 2) == "data: 1"  # before the rest
        release.set()
        assert [line async for line in lines] == ["", "data: 2", ""]


async def test_early_close_drops_the_connection(client: httpx.AsyncClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            w.write(chunk(b"data: x\n\n"))
            await w.drain()
            await asyncio.sleep(0.01)

    server = Server(handler)
    async with server as url:
        async with client.stream("POST", url, content=b"{}") as resp:
            async for _ in resp.aiter_bytes():
                break
        await asyncio.wait_for(server.closed.wait(), 2)


async def test_cancelled_read_drops_the_connection(client: httpx.AsyncClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"x"))
        await w.drain()
        assert await r.read(1) == b""  # waits for the client to go away

    async def consume(url: str) -> None:
        async with client.stream("POST", url, content=b"{}") as resp:
            async for _ in resp.aiter_bytes():
                pass

    server = Server(handler)
    async with server as url:
        task = asyncio.create_task(consume(url))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed.wait(), 2)


async def test_gzip_is_decoded_by_httpx(client: httpx.AsyncClient) -> None:
    raw = gzip.compress(b'{"ok":true}')

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n"
                + f"content-length: {len(raw)}\r\n\r\n".encode() + raw)
        await w.drain()

    async with Server(handler) as url:
        assert (await client.post(url, content=b"{}")).json() == {"ok": True}


async def test_connection_refused_is_connect_error(client: httpx.AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{port}/", content=b"{}")


async def test_silent_upstream_is_read_timeout(client: httpx.AsyncClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await asyncio.sleep(5)

    async with Server(handler) as url:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url, content=b"{}", timeout=0.2)


async def test_stall_mid_body_is_read_timeout(client: httpx.AsyncClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"x"))
        await w.drain()
        await asyncio.sleep(5)

    async with Server(handler) as url, client.stream("POST", url, content=b"{}",
                                                     timeout=0.2) as resp:
        with pytest.raises(httpx.ReadTimeout):
            await resp.aread()


@pytest.mark.parametrize("reply", [b"", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
                                   b"not http\r\n\r\n"])
async def test_broken_replies_are_protocol_errors(client: httpx.AsyncClient,
                                                  reply: bytes) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(reply)
        await w.drain()

    async with Server(handler) as url:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url, content=b"{}")


async def test_upstream_calls_are_traced_when_tracing_is_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from scillm.server.completion._http import ClientPool

    seen: list[dict[str, str]] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append((await read_request(r))[1])
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await w.drain()

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # as if global
    instrumentor = HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    pool = ClientPool()
    try:
        async with Server(handler) as url:
            assert (await pool.get(url).post(url, content=b"{}")).status_code == 200
    finally:
        await pool.close()
        instrumentor.uninstrument()
    assert [s.name for s in exporter.get_finished_spans()] == ["POST"]
    assert "traceparent" in seen[0]
