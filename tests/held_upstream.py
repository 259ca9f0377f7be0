"""An OpenAI-compatible upstream on 127.0.0.1:0 (its own thread and loop) that holds its
answers until the test releases them, so a test can act while calls are surely in flight.

It echoes the last user message. A non-streamed request waits at the gate, then gets its
`chat.completion`. A streamed request gets its first chunk at once, then waits at the
gate, then gets the rest (one chunk per word), the usage and `[DONE]`. `arrived(n)` waits
until n requests have reached the gate since the last `hold()`; `abandoned(n)` until n
requests in all lost their caller (the connection closed) while held there.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from loop_server import stop_serving

_BASE = {"id": "held-1", "object": "chat.completion.chunk", "created": 1}


def _text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def _event(data: str) -> bytes:
    raw = f"data: {data}\n\n".encode()
    return f"{len(raw):x}\r\n".encode() + raw + b"\r\n"


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    return json.dumps({**_BASE, "model": model, "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]})


class HeldUpstream:
    """Answers wait at a gate: open after `start()`, closed by `hold()`, opened by
    `release()`. `requests` counts every request received."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._gate = asyncio.Event()
        self._waiting = threading.Condition()
        self._at_gate = 0
        #: Requests whose caller closed the connection while they were held at the gate.
        self._abandoned = 0
        self.requests = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def config(self, path: Path, *, echo: bool = False) -> Path:
        """Write a model configuration at `path` whose model `held` is this upstream (and,
        with `echo`, the built-in `echo/*`); `path`."""
        models: list[dict[str, Any]] = [{"model_name": "held", "litellm_params": {
            "model": "openai/held", "api_base": self.url, "api_key": "x"}}]
        if echo:
            models.append({"model_name": "echo/*", "litellm_params": {"model": "echo/*"}})
        path.write_text(json.dumps({"model_list": models}))
        return path

    def start(self) -> HeldUpstream:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        self.release()
        return self

    def stop(self) -> None:
        stop_serving(self._loop, self._thread, self._server)

    def hold(self) -> None:
        """Close the gate: answers wait until `release()`; the arrival count restarts."""
        with self._waiting:
            self._at_gate = 0
        asyncio.run_coroutine_threadsafe(self._set_gate(False), self._loop).result(10)

    def release(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set_gate(True), self._loop).result(10)

    def abandoned(self, count: int, timeout: float = 60.0) -> bool:
        """Block until `count` held requests (in all) lost their caller; False on timeout."""
        with self._waiting:
            return self._waiting.wait_for(lambda: self._abandoned >= count, timeout)

    @property
    def abandoned_so_far(self) -> int:
        with self._waiting:
            return self._abandoned

    def arrived(self, count: int, timeout: float = 60.0) -> bool:
        """Block until `count` requests reached the gate since `hold()`; False on timeout."""
        with self._waiting:
            return self._waiting.wait_for(lambda: self._at_gate >= count, timeout)

    async def _set_gate(self, is_open: bool) -> None:
        if is_open:
            self._gate.set()
        else:
            self._gate.clear()

    async def _listen(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def _at_the_gate(self) -> None:
        with self._waiting:
            self._at_gate += 1
            self._waiting.notify_all()
        await self._gate.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = json.loads(await reader.readexactly(length))
                self.requests += 1
                if request.get("stream"):
                    if not await self._stream(request, reader, writer):
                        return
                else:
                    if not await self._held_for(reader):
                        return
                    text, model = _text(request), str(request.get("model", ""))
                    body = json.dumps({
                        "id": "held-1", "object": "chat.completion", "created": 1,
                        "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                                     "message": {"role": "assistant",
                                                                 "content": text}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                  "total_tokens": 2}}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
                                 + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _held_for(self, reader: asyncio.StreamReader) -> bool:
        """Wait at the gate, watching the connection: False when the caller closed it
        first (counted in `abandoned`). Callers do not pipeline, so nothing else arrives."""
        gate = asyncio.ensure_future(self._at_the_gate())
        gone = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait((gate, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (gate, gone):
                waiter.cancel()
            # Until the cancelled read has run, the reader counts it as waiting, and the
            # connection's next request would fail to read ("already waiting").
            await asyncio.gather(gate, gone, return_exceptions=True)
        if gate.done() and not gate.cancelled():
            return True
        with self._waiting:
            self._abandoned += 1
            self._waiting.notify_all()
        return False

    async def _stream(self, request: dict[str, Any], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        model, words = str(request.get("model", "")), _text(request).split()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        writer.write(_event(_chunk(model, {"role": "assistant", "content": words[0]})))
        await writer.drain()
        if not await self._held_for(reader):
            return False
        for word in words[1:]:
            writer.write(_event(_chunk(model, {"content": " " + word})))
        writer.write(_event(_chunk(model, {}, "stop")))
        writer.write(_event(json.dumps({**_BASE, "model": model, "choices": [], "usage": {
            "prompt_tokens": 1, "completion_tokens": len(words),
            "total_tokens": 1 + len(words)}})))
        writer.write(_event("[DONE]") + b"0\r\n\r\n")
        return True
