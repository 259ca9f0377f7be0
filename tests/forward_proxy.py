"""A forward HTTP proxy on 127.0.0.1:0 (its own thread and loop), as an egress proxy in
front of a deployment: absolute-form requests (`POST http://host:port/path HTTP/1.1`) are
sent on to their host, one connection per request, and kept in `forwarded`."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from loop_server import LoopServer


class ForwardProxy(LoopServer):
    def __init__(self) -> None:
        super().__init__()
        self.forwarded: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                url = urlsplit(target)
                self.forwarded.append(target)
                length = _length(head)
                body = await reader.readexactly(length)
                lines = head.split(b"\r\n")
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                lines[0] = f"{method} {path} HTTP/1.1".encode()
                kept = b"\r\n".join(line for line in lines
                                     if not line.lower().startswith(b"proxy-"))
                up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
                up_writer.write(kept + body)
                writer.write(await _reply(up_reader))
                up_writer.close()
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _length(head: bytes) -> int:
    return next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")), 0)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One whole HTTP/1.1 reply: its head, then a sized or a chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return head + await reader.readexactly(_length(head))
    body = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        body += size_line + chunk
        if size == 0:
            return head + body
