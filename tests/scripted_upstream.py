"""A scripted OpenAI-compatible upstream on 127.0.0.1:0: replies come from a list, in order.

It speaks the real wire format (JSON `chat.completion`, or with `"stream": true` an SSE
stream of `chat.completion.chunk`s ending in `data: [DONE]`), so a mesh configured with
`api_base: <url>` treats it as any OpenAI-compatible server. Every request it received
is kept in `requests`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from loop_server import LoopServer


class ScriptedUpstream(LoopServer):
    """Serve `replies` (assistant message dicts) one per request, cycling at the end.

    A request for which `hold(request)` is true is answered only after `release()`.
    """

    def __init__(self, replies: list[dict[str, Any]],
                 hold: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.replies = replies
        self.hold = hold
        super().__init__()
        self._released = asyncio.Event()
        self.requests: list[dict[str, Any]] = []
        self._index = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def release(self) -> None:
        """Answer the held requests, and hold no more."""
        self._loop.call_soon_threadsafe(self._released.set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = json.loads(await reader.readexactly(length))
                self.requests.append(request)
                if self.hold is not None and self.hold(request):
                    await self._released.wait()
                message = self.replies[self._index % len(self.replies)]
                self._index += 1
                finish = "tool_calls" if message.get("tool_calls") else "stop"
                if request.get("stream") is True:
                    writer.write(self._sse(request, message, finish))
                    await writer.drain()
                    continue
                body = json.dumps({
                    "id": f"chatcmpl-{self._index}", "object": "chat.completion",
                    "created": 1, "model": request.get("model", ""),
                    "choices": [{"index": 0, "finish_reason": finish,
                                 "message": {"role": "assistant", **message}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                              "total_tokens": 15}}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _sse(self, request: dict[str, Any], message: dict[str, Any], finish: str) -> bytes:
        """The reply as a chunked SSE response: role, the content word by word, finish."""
        base = {"id": f"chatcmpl-{self._index}", "object": "chat.completion.chunk",
                "created": 1, "model": request.get("model", "")}
        words = str(message.get("content") or "").split(" ")
        deltas = [{"role": "assistant", "content": ""},
                  *({"content": (" " if i else "") + w} for i, w in enumerate(words))]
        events = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
                  for d in deltas]
        events.append({**base, "choices": [{"index": 0, "delta": {},
                                            "finish_reason": finish}]})
        out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" \
              b"transfer-encoding: chunked\r\n\r\n"
        for data in [*(json.dumps(e) for e in events), "[DONE]"]:
            raw = f"data: {data}\n\n".encode()
            out += f"{len(raw):x}\r\n".encode() + raw + b"\r\n"
        return out + b"0\r\n\r\n"
