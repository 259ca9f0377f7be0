"""Transport bench: the client CPU of one upstream request through the providers' transport.

Run: ``.venv/bin/python bench/transport_bench.py [--quick]``.

nginx (the upstream of `completion_bench.py`, `worker_processes 1`) answers a fixed
`chat.completion` on POST /v1/chat/completions. `httpx.AsyncClient` POSTs a small JSON
body to it under uvloop, through `PooledTransport` (server/completion/_transport.py) and,
for reference, through `AiohttpTransport`, the aiohttp-based transport it replaced (kept
below as it was): N sequential requests, then N with 64 in flight; then the same with a
prebuilt request sent straight to the transport (its own cost). The figure is this
process's CPU time (`time.process_time`) per request, so nginx's share is not in it.

A second table follows the upstream leg of a completion layer by layer, on the same nginx:
the floor (an asyncio protocol that writes the request's bytes and parses the reply with
orjson: the system calls and wake-ups any client pays), `PooledTransport` alone,
`OpenAIProvider.complete`, and `CompletionEngine.complete` (routing, retries, timeouts)
over an OpenAI deployment and over the built-in echo provider (no upstream at all).
Rounds alternate between the transports and the best round of each counts; a fresh client
opens its connections before each measured run. Only loopback traffic; nginx runs in its
own process group and is killed on exit.

This is a measurement, not a test: it exits 0 unless something could not be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import uvloop
from _completion_parts import CHAT, NGINX, Procs, free_port, nginx_conf, wait_port
from yarl import URL

from scillm.server.completion import CompletionEngine, CompletionSettings
from scillm.server.completion._openai import OpenAIProvider
from scillm.server.completion._provider import ProviderCall
from scillm.server.completion._transport import PooledTransport
from scillm.server.completion._types import Routing

CONCURRENCY = 64


async def measure(make: Callable[[], httpx.AsyncBaseTransport], url: str, n: int,
                  concurrency: int, bare: bool) -> tuple[float, float]:
    """(CPU µs per request, requests per second) over `n` requests, `concurrency` at once.

    `bare`: one prebuilt `httpx.Request` sent straight to the transport and its body read,
    without the client around it (the transport's own cost).
    """
    body = json.dumps(CHAT).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer bench"}
    async with httpx.AsyncClient(transport=make(), timeout=30.0, trust_env=False) as client:
        request = client.build_request("POST", url, content=body, headers=headers)
        transport = client._transport

        async def worker(count: int) -> None:
            for _ in range(count):
                if bare:
                    response = await transport.handle_async_request(request)
                    await response.aread()
                else:
                    response = await client.post(url, content=body, headers=headers)
                if response.status_code != 200 or not response.content:
                    raise RuntimeError(f"upstream answered {response.status_code}")

        await asyncio.gather(*(worker(2) for _ in range(concurrency)))  # connections open
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = n // concurrency * concurrency
    return cpu / done * 1e6, done / wall


class _Floor(asyncio.Protocol):
    """The least a client can do: write the request, wait for the reply's last byte."""

    def __init__(self) -> None:
        self.buffer = b""
        self.reply: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.reply is None:
            return
        head = self.buffer[:end].lower()
        size = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        if len(self.buffer) >= end + 4 + size:
            body, self.buffer = self.buffer[end + 4:end + 4 + size], self.buffer[end + 4 + size:]
            self.reply.set_result(body)


async def layers(port: int, n: int, concurrency: int) -> dict[str, float]:
    """CPU µs per upstream call at each layer of the upstream leg (see the docstring)."""
    loop = asyncio.get_running_loop()
    base = f"http://127.0.0.1:{port}/v1"
    body = {"messages": CHAT["messages"], "max_tokens": CHAT["max_tokens"]}
    payload = orjson.dumps({**body, "model": "bench"})
    raw = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
           + payload)
    free: list[_Floor] = []
    for _ in range(concurrency):
        free.append((await loop.create_connection(_Floor, "127.0.0.1", port))[1])

    async def floor() -> None:
        protocol = free.pop()
        protocol.reply = loop.create_future()
        assert protocol.transport is not None
        protocol.transport.write(raw)
        orjson.loads(await protocol.reply)
        free.append(protocol)

    transport = PooledTransport()
    request = httpx.Request("POST", f"{base}/chat/completions", content=payload,
                            headers={"content-type": "application/json"})

    async def bare() -> None:
        response = await transport.handle_async_request(request)
        await response.aread()

    settings = CompletionSettings.from_mapping({"model_list": [
        {"model_name": "bench", "litellm_params": {"model": "openai/bench", "api_base": base,
                                                   "api_key": "bench"}},
        {"model_name": "bench-echo", "litellm_params": {"model": "echo/bench"}}]})
    engine = CompletionEngine(settings)
    await engine.start()
    provider = OpenAIProvider()
    call = ProviderCall(settings.model_list[0], "bench", body, 30.0, Routing())

    async def openai() -> None:
        await provider.complete(call)

    async def routed() -> None:
        await engine.complete({**body, "model": "bench"})

    async def echo() -> None:
        await engine.complete({**body, "model": "bench-echo"})

    steps = {"floor: asyncio protocol, orjson": floor, "PooledTransport, bare": bare,
             "OpenAIProvider.complete": openai, "CompletionEngine.complete": routed,
             "CompletionEngine.complete, echo provider": echo}
    out: dict[str, float] = {}
    try:
        for name, step in steps.items():
            async def worker(count: int, step: Callable[[], Any] = step) -> None:
                for _ in range(count):
                    await step()

            await asyncio.gather(*(worker(2) for _ in range(concurrency)))  # warm
            cpu = time.process_time()
            await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
            out[name] = (time.process_time() - cpu) / (n // concurrency * concurrency) * 1e6
    finally:
        for protocol in free:
            if protocol.transport is not None:
                protocol.transport.close()
        await transport.aclose()
        await provider.close()
        await engine.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    args = parser.parse_args()
    n, rounds = (2000, 3) if args.quick else (10000, 5)
    if shutil.which(NGINX) is None:
        print(f"transport bench: {NGINX} is missing (apt-get install nginx-light)")
        return 1
    transports: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
        "AiohttpTransport (before)": AiohttpTransport, "PooledTransport": PooledTransport}
    best: dict[tuple[str, bool, int], tuple[float, float]] = {}
    leg: dict[tuple[str, int], float] = {}
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="scillm-transport-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        port = free_port()
        (tmp / "nginx.conf").write_text(nginx_conf(tmp, port, "1500"))
        try:
            nginx = procs.start([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
                                tmp / "nginx.out")
            wait_port(port, nginx, 10)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            for _ in range(rounds):
                for name, make in transports.items():
                    for key in ((name, bare, c) for bare in (False, True)
                                for c in (1, CONCURRENCY)):
                        figure = uvloop.run(measure(make, url, n, key[2], key[1]))
                        best[key] = min(best.get(key, figure), figure)
                for c in (1, CONCURRENCY):
                    for layer, cpu in uvloop.run(layers(port, n, c)).items():
                        leg[(layer, c)] = min(leg.get((layer, c), cpu), cpu)
        finally:
            procs.stop_all()
    print(f"\nCPU per request under uvloop, {n} POSTs per run, best of {rounds} rounds; "
          "'bare' is the transport alone (a prebuilt request, no client around it)\n")
    print("| transport | c=1 µs/req | c=1 req/s | c=64 µs/req | c=64 req/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for bare in (False, True):
        for name in transports:
            (cpu1, rps1), (cpu64, rps64) = (best[(name, bare, c)] for c in (1, CONCURRENCY))
            label = f"{name}, bare" if bare else f"{name} in httpx.AsyncClient"
            print(f"| {label} | {cpu1:.0f} | {rps1:.0f} | {cpu64:.0f} | {rps64:.0f} |")
    old, new = transports
    print()
    for bare in (False, True):
        for c in (1, CONCURRENCY):
            ratio = best[(new, bare, c)][0] / best[(old, bare, c)][0]
            print(f"{'bare' if bare else 'client'}, c={c}: PooledTransport uses {ratio:.2f}x "
                  "the CPU per request of the aiohttp transport")
    print(f"\nThe upstream leg layer by layer: CPU µs per call, best of {rounds} rounds\n")
    print(f"| layer | c=1 µs/call | c={CONCURRENCY} µs/call |")
    print("| --- | ---: | ---: |")
    for layer in dict.fromkeys(name for name, _ in leg):
        print(f"| {layer} | {leg[(layer, 1)]:.0f} | {leg[(layer, CONCURRENCY)]:.0f} |")
    return 0


# --- The transport PooledTransport replaced, as it was (server/completion/_transport.py
# before the change), for reference. ---


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp connection pool, created lazily inside the running event loop."""

    def __init__(self, *, max_connections: int = 1024, keepalive_expiry_s: float = 30.0,
                 verify: ssl.SSLContext | bool = True) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        self._verify = verify
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        verify = self._verify
        context = httpx.create_ssl_context() if verify is True else verify
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry_s, ssl=context)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        timeout = request.extensions.get("timeout") or {}
        connect, read = timeout.get("connect"), timeout.get("read")
        pool = timeout.get("pool")
        try:
            data: bytes | AsyncIterator[bytes] = request.content
        except httpx.RequestNotRead:
            data = _body(request)
        try:
            response = await session.request(
                request.method, URL(str(request.url), encoded=True),
                headers=[(k.decode("latin-1"), v.decode("latin-1"))
                         for k, v in request.headers.raw], data=data, allow_redirects=False,
                compress=None, chunked=None,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=pool, sock_connect=connect, sock_read=read))
        except aiohttp.ClientError as exc:
            raise _map_error(exc, request, connecting=True) from exc
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "timed out", request=request) from exc
        return httpx.Response(
            response.status, headers=response.raw_headers,
            stream=_ResponseStream(response, request), request=request,
            extensions={"http_version": b"HTTP/1.1",
                        "reason_phrase": (response.reason or "").encode("latin-1", "replace")})

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except aiohttp.ClientError as exc:
            raise _map_error(exc, self._request, connecting=False) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out", request=self._request) from exc

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            response.close()


async def _body(request: httpx.Request) -> AsyncIterator[bytes]:
    assert isinstance(request.stream, httpx.AsyncByteStream)
    async for chunk in request.stream:
        yield chunk


def _map_error(exc: aiohttp.ClientError, request: httpx.Request, *,
               connecting: bool) -> httpx.TransportError:
    message = str(exc) or type(exc).__name__
    error: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        error = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        error = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        error = httpx.ConnectError
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                    | aiohttp.ClientResponseError):
        error = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientOSError):
        error = httpx.WriteError if connecting else httpx.ReadError
    else:
        error = httpx.ConnectError if connecting else httpx.ReadError
    return error(message, request=request)


if __name__ == "__main__":
    raise SystemExit(main())
