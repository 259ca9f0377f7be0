"""PooledTransport under httpx.AsyncClient against raw loopback servers: incremental
bodies, keep-alive and the pool, early close, flow control, timeouts, TLS and the httpx
errors the providers catch. The tests taking only `client` run under uvloop too."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import uvloop

from scillm.server.completion._transport import PooledTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server running `handler` per connection; counts connections."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
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
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

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
    async with httpx.AsyncClient(transport=PooledTransport(), timeout=5.0) as c:
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
    assert headers["user-agent"].startswith("python-httpx/")  # httpx's, sent as given


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


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def serve_ok(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        await read_request(r)
        w.write(OK)


def pooled_client(max_connections: int = 1024, keepalive_expiry_s: float = 30.0,
                  verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    transport = PooledTransport(max_connections=max_connections,
                                keepalive_expiry_s=keepalive_expiry_s, verify=verify)
    return httpx.AsyncClient(transport=transport, timeout=5.0)


async def test_bodiless_responses(client: httpx.AsyncClient) -> None:
    replies = iter([
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK,  # informational: skipped
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"])  # to HEAD

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            w.write(next(replies))

    server = Server(handler)
    async with server as url:
        resp = await client.post(url, content=b"{}")
        assert (resp.status_code, resp.content) == (200, b"ok")
        for status in (204, 304):
            resp = await client.get(url)
            assert (resp.status_code, resp.content) == (status, b"")
        resp = await asyncio.wait_for(client.head(url), 2)
        assert (resp.status_code, resp.content) == (200, b"")
        assert resp.headers["content-length"] == "10"
        await asyncio.wait_for(server.closed.wait(), 2)  # not kept after HEAD
    assert server.connections == 1


async def test_body_until_close(client: httpx.AsyncClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"part two")

    async with Server(handler) as url:
        assert (await client.post(url, content=b"{}")).content == b"part one, part two"


async def test_streamed_request_body_is_chunked(client: httpx.AsyncClient) -> None:
    seen: list[object] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _, headers, _ = await read_request(r)
        body = b""
        while size := int(await r.readline(), 16):
            body += (await r.readexactly(size + 2))[:-2]
        await r.readline()
        seen.extend((headers.get("transfer-encoding"), "content-length" in headers, body))
        w.write(OK)

    async def parts() -> AsyncIterator[bytes]:
        yield b'{"a":'
        yield b""
        yield b"1}"

    async with Server(handler) as url:
        assert (await client.post(url, content=parts())).content == b"ok"
    assert seen == ["chunked", False, b'{"a":1}']


async def test_connection_close_is_honoured(client: httpx.AsyncClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:  # says close, but leaves the connection open
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")

    server = Server(handler)
    async with server as url:
        for _ in range(2):
            assert (await client.post(url, content=b"{}")).content == b"ok"
    assert server.connections == 2


async def test_connection_closed_while_idle_is_not_reused(client: httpx.AsyncClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(OK)

    server = Server(handler)
    async with server as url:
        assert (await client.post(url, content=b"{}")).content == b"ok"
        await asyncio.wait_for(server.closed.wait(), 2)
        await asyncio.sleep(0.05)
        assert (await client.post(url, content=b"{}")).content == b"ok"
    assert server.connections == 2


async def test_bytes_while_idle_drop_the_connection(client: httpx.AsyncClient) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(OK + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")  # one reply too many
        await serve_ok(r, w)

    server = Server(handler)
    async with server as url:
        for _ in range(2):
            assert (await client.post(url, content=b"{}")).content == b"ok"
    assert server.connections == 2


async def test_bytes_arriving_on_an_idle_connection_drop_it(
        client: httpx.AsyncClient) -> None:
    stray_sent = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if server.connections == 1:
            await read_request(r)
            w.write(OK)
            await w.drain()
            await asyncio.sleep(0.05)  # the connection is in the pool by now
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale")
            await w.drain()
            stray_sent.set()
        await serve_ok(r, w)

    server = Server(handler)
    async with server as url:
        assert (await client.post(url, content=b"{}")).content == b"ok"
        await asyncio.wait_for(stray_sent.wait(), 2)
        await asyncio.wait_for(server.closed.wait(), 2)  # dropped while idle
        assert (await client.post(url, content=b"{}")).content == b"ok"
    assert server.connections == 2


def closes_the_second_request(seen: list[tuple[str, bytes]] | None = None) -> Handler:
    """Answers the first request on the first connection and closes it on the second
    (a keep-alive race lost); answers everything on later connections. Each request's
    method and body are added to `seen`."""
    connections = 0
    seen = [] if seen is None else seen

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            line, _, body = await read_request(r)
            seen.append((line.split()[0], body))
            if connections == 1 and len(seen) > 1:
                return  # closed with the request unanswered
            w.write(OK)

    return handler


async def test_post_on_a_reused_connection_closed_before_reply_is_not_retried(
        client: httpx.AsyncClient) -> None:
    seen: list[tuple[str, bytes]] = []
    server = Server(closes_the_second_request(seen))
    async with server as url:
        assert (await client.post(url, content=b"1")).content == b"ok"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url, content=b"2")  # the upstream may have acted on it
    assert seen == [("POST", b"1"), ("POST", b"2")]  # sent once
    assert server.connections == 1


async def test_get_on_a_reused_connection_closed_before_reply_is_retried(
        client: httpx.AsyncClient) -> None:
    seen: list[tuple[str, bytes]] = []
    server = Server(closes_the_second_request(seen))
    async with server as url:
        for _ in range(2):
            assert (await client.get(url)).content == b"ok"
    assert seen == [("GET", b"")] * 3  # the second once more, on a new connection
    assert server.connections == 2


async def test_streamed_body_is_not_replayed(client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"{}"

    async with Server(closes_the_second_request()) as url:
        assert (await client.post(url, content=b"{}")).content == b"ok"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url, content=body())


async def test_an_idle_connection_of_another_origin_makes_room() -> None:
    a, b = Server(serve_ok), Server(serve_ok)
    async with a as url_a, b as url_b, pooled_client(max_connections=1) as client:
        assert (await client.post(url_a, content=b"{}")).content == b"ok"  # A's is idle
        reply = await client.post(url_b, content=b"{}", timeout=httpx.Timeout(5.0, pool=0.5))
        assert reply.content == b"ok"
        await asyncio.wait_for(a.closed.wait(), 2)  # A's connection was closed for it
    assert (a.connections, b.connections) == (1, 1)


async def test_pool_limit_and_pool_timeout() -> None:
    release = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"x"))
            await w.drain()
            await release.wait()
            w.write(b"0\r\n\r\n")

    server = Server(handler)
    async with server as url, pooled_client(max_connections=1) as client:
        async with client.stream("POST", url, content=b"{}") as held:
            with pytest.raises(httpx.PoolTimeout):
                await client.post(url, content=b"{}", timeout=httpx.Timeout(5.0, pool=0.1))
            waiting = asyncio.create_task(client.post(url, content=b"{}"))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            release.set()
            assert await held.aread() == b"x"
        assert (await asyncio.wait_for(waiting, 2)).content == b"x"
    assert server.connections == 1


async def test_concurrent_requests_share_a_small_pool() -> None:
    server = Server(serve_ok)
    async with server as url, pooled_client(max_connections=2) as client:
        replies = await asyncio.gather(*(client.post(url, content=b"{}") for _ in range(20)))
    assert {r.content for r in replies} == {b"ok"}
    assert server.connections == 2


async def serve_echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        _, _, body = await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


async def test_requests_started_together_each_get_their_own_reply() -> None:
    """Requests started in one turn of the loop are written together at its end (the
    pool's outbox, `PooledTransport.send`): each on its own connection, each answered with
    its own reply, in rounds that reuse the connections as well as open them."""
    server = Server(serve_echo)
    async with server as url, pooled_client() as client:
        for round_ in range(3):
            bodies = [f"request {round_}-{i}".encode() for i in range(64)]
            replies = await asyncio.gather(*(client.post(url, content=b) for b in bodies))
            assert [r.content for r in replies] == bodies
        alone = await client.post(url, content=b"alone")  # nothing else under way
        assert alone.content == b"alone"
    assert server.connections == 64


async def test_idle_connections_expire() -> None:
    server = Server(serve_ok)
    async with server as url, pooled_client(keepalive_expiry_s=0.1) as client:
        assert (await client.post(url, content=b"{}")).content == b"ok"
        await asyncio.wait_for(server.closed.wait(), 2)  # closed by the client
        assert (await client.post(url, content=b"{}")).content == b"ok"
    assert server.connections == 2


async def test_aclose_fails_a_body_read_until_close() -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\n\r\npart one")  # no length: the body ends at close
        await w.drain()
        assert await r.read(1) == b""  # stalls until the client goes away

    transport = PooledTransport()
    async with Server(handler) as url, httpx.AsyncClient(transport=transport,
                                                         timeout=5.0) as client:
        async with client.stream("POST", url, content=b"{}") as resp:
            chunks = resp.aiter_raw()
            assert await anext(chunks) == b"part one"

            async def rest() -> bytes:
                return b"".join([data async for data in chunks])

            reading = asyncio.create_task(rest())
            await asyncio.sleep(0.05)  # waiting for more of the body
            await transport.aclose()
            with pytest.raises(httpx.RemoteProtocolError):  # not a clean, truncated end
                await asyncio.wait_for(reading, 2)


async def test_aclose_closes_every_connection() -> None:
    server = Server(serve_ok)
    async with server as url:
        async with pooled_client() as client:
            assert (await client.post(url, content=b"{}")).content == b"ok"
        await asyncio.wait_for(server.closed.wait(), 2)


async def test_reading_pauses_while_the_body_is_unread(client: httpx.AsyncClient) -> None:
    size, block = 32 << 20, b"x" * 65536  # far more than the sockets' buffers hold
    sent = asyncio.Event()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
        for _ in range(size // len(block)):
            w.write(block)
            await w.drain()
        sent.set()

    async with Server(handler) as url, client.stream("POST", url, content=b"{}") as resp:
        chunks = resp.aiter_raw()
        received = len(await anext(chunks))
        await asyncio.sleep(0.3)
        assert not sent.is_set()  # the unread body holds the server back
        async for data in chunks:
            received += len(data)
    assert received == size and sent.is_set()


async def test_slow_connect_is_connect_timeout(client: httpx.AsyncClient) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]  # the backlog full: SYNs go unanswered
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            with pytest.raises(httpx.ConnectTimeout):
                await client.post(f"http://127.0.0.1:{port}/", content=b"{}",
                                  timeout=httpx.Timeout(5.0, connect=0.2))
        finally:
            for filler in fillers:
                filler.close()


async def test_line_break_in_a_header_is_refused(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.LocalProtocolError):
        await client.post("http://127.0.0.1:9/", content=b"{}",
                          headers={"x-a": "a\r\nx-b: smuggled"})


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


async def test_tls(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = Server(serve_ok, tls=server_context)
    async with server as url:
        for verify in (ssl.create_default_context(cafile=str(cert)), False):
            async with pooled_client(verify=verify) as client:
                for _ in range(2):
                    assert (await client.post(url, content=b"{}")).content == b"ok"
        async with pooled_client() as client:  # httpx's CA bundle does not know it
            with pytest.raises(httpx.ConnectError):
                await client.post(url, content=b"{}")
    assert server.connections == 2  # one per verifying client, each kept alive


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
            # The providers' lean road would make no span: traced, they go through httpx.
            assert pool.lean(url) is None
    finally:
        await pool.close()
        instrumentor.uninstrument()
    assert [s.name for s in exporter.get_finished_spans()] == ["POST"]
    assert "traceparent" in seen[0]
    untraced = ClientPool()
    assert untraced.lean("http://127.0.0.1:1") is not None
    await untraced.close()


UVLOOP_CASES = [test_request_as_sent_and_keep_alive, test_body_is_streamed_incrementally,
                test_early_close_drops_the_connection, test_cancelled_read_drops_the_connection,
                test_body_until_close, test_streamed_request_body_is_chunked,
                test_bytes_arriving_on_an_idle_connection_drop_it,
                test_post_on_a_reused_connection_closed_before_reply_is_not_retried,
                test_get_on_a_reused_connection_closed_before_reply_is_retried,
                test_reading_pauses_while_the_body_is_unread,
                test_slow_connect_is_connect_timeout]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=lambda case: case.__name__)
def test_under_uvloop(case: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    """The mesh runs on uvloop, whose transports differ from asyncio's."""
    async def run() -> None:
        async with httpx.AsyncClient(transport=PooledTransport(), timeout=5.0) as client:
            await case(client)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


@pytest.mark.parametrize("case", [test_an_idle_connection_of_another_origin_makes_room,
                                  test_aclose_fails_a_body_read_until_close,
                                  test_requests_started_together_each_get_their_own_reply],
                         ids=lambda case: case.__name__)
def test_own_client_under_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case())


def test_tls_under_uvloop(certificate: tuple[Path, Path]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test_tls(certificate))
