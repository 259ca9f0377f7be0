"""The fault-injecting OpenAI-compatible upstream of soak_bench.py, run as its own process.

    .venv/bin/python bench/_soak_upstream.py [--seed N]

Listens on 127.0.0.1 (a free port, printed as `PORT <n>` on stdout) and answers
`POST /v1/chat/completions` over HTTP/1.1 with keep-alive. The reply's content is the
text of the last user message (as the mesh's `echo/` provider answers), so a caller can
check it whichever way the mesh served the call. Request number i (in arrival order,
retries included) gets `SCHEDULE[i % len(SCHEDULE)]`, a fixed shuffle of:

| fault | share | what the mesh sees |
| --- | --- | --- |
| `ok` | 88 % | a `chat.completion`, or an SSE stream (one chunk per word, usage, `[DONE]`) |
| `429` | 3 % | 429 with `Retry-After: 1` and OpenAI's error body |
| `500` | 3 % | 500 with OpenAI's error body |
| `drop` | 3 % | the connection aborted midway: half a JSON body, or a stream after 2 chunks |
| `slow` | 3 % | the normal answer after 1.5 s without a byte |

On SIGTERM it prints `COUNTS {json}` (requests per fault) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import sys
from collections import Counter
from typing import Any

SHARES = {"429": 3, "500": 3, "drop": 3, "slow": 3}
SLOW_S = 1.5
_WORD = re.compile(r"\s*\S+")


def schedule(seed: int) -> list[str]:
    slots = [fault for fault, n in SHARES.items() for _ in range(n)]
    slots += ["ok"] * (100 - len(slots))
    random.Random(seed).shuffle(slots)
    return slots


def _text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or ()):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _head(status: str, ctype: str, extra: str = "", length: int | None = None) -> bytes:
    size = f"content-length: {length}\r\n" if length is not None else \
        "transfer-encoding: chunked\r\n"
    return (f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\n{extra}{size}\r\n").encode()


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Upstream:
    def __init__(self, seed: int) -> None:
        self.slots = schedule(seed)
        self.index = 0
        self.counts: Counter[str] = Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = json.loads(await reader.readexactly(length))
                fault = self.slots[self.index % len(self.slots)]
                self.index += 1
                stream = bool(body.get("stream"))
                self.counts[f"{fault}{'-stream' if stream else ''}"] += 1
                if not await self.answer(writer, body, fault, stream):
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def answer(self, writer: asyncio.StreamWriter, body: dict[str, Any], fault: str,
                     stream: bool) -> bool:
        """Write one reply; False when the connection was aborted."""
        if fault in ("429", "500"):
            kind = "rate_limit_error" if fault == "429" else "server_error"
            payload = json.dumps({"error": {"message": f"injected {fault}", "type": kind,
                                            "param": None, "code": None}}).encode()
            status = "429 Too Many Requests" if fault == "429" else "500 Internal Server Error"
            extra = "retry-after: 1\r\n" if fault == "429" else ""
            writer.write(_head(status, "application/json", extra, len(payload)) + payload)
            return True
        if fault == "slow":
            await asyncio.sleep(SLOW_S)
        text, model = _text(body), str(body.get("model", ""))
        pieces = _WORD.findall(text) or [text]
        if not stream:
            payload = json.dumps({
                "id": "chatcmpl-soak", "object": "chat.completion", "created": 1,
                "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": len(pieces), "completion_tokens": len(pieces),
                          "total_tokens": 2 * len(pieces)}}).encode()
            if fault == "drop":
                writer.write(_head("200 OK", "application/json", length=len(payload))
                             + payload[:len(payload) // 2])
                await writer.drain()
                writer.transport.abort()
                return False
            writer.write(_head("200 OK", "application/json", length=len(payload)) + payload)
            return True

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            event = {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": 1,
                     "model": model, "choices": [{"index": 0, "delta": delta,
                                                  "finish_reason": finish}]}
            return _chunked(b"data: " + json.dumps(event).encode() + b"\n\n")

        writer.write(_head("200 OK", "text/event-stream"))
        writer.write(chunk({"role": "assistant", "content": ""}, None))
        for i, piece in enumerate(pieces):
            if fault == "drop" and i == 1:  # two chunks out, then the connection dies
                await writer.drain()
                await asyncio.sleep(0.01)
                writer.transport.abort()
                return False
            writer.write(chunk({"content": piece}, None))
        writer.write(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": 1,
                     "model": model, "choices": [],
                     "usage": {"prompt_tokens": len(pieces), "completion_tokens": len(pieces),
                               "total_tokens": 2 * len(pieces)}}
            writer.write(_chunked(b"data: " + json.dumps(usage).encode() + b"\n\n"))
        writer.write(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return True


async def main(seed: int) -> None:
    upstream = Upstream(seed)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    print("COUNTS " + json.dumps(dict(upstream.counts)), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=7)
    import uvloop

    uvloop.run(main(parser.parse_args().seed))
