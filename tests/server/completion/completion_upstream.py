"""A fault-injecting upstream speaking OpenAI's and Anthropic's wire formats on loopback,
its scripted actions, and an injected clock."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

Action = Callable[["Upstream", dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter],
                  Awaitable[bool]]


def _text(req: dict[str, Any]) -> str:
    for m in reversed(req.get("messages") or []):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else "".join(
                b.get("text", "") for b in c if isinstance(b, dict))
    return ""


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send_json(writer: asyncio.StreamWriter, status: int, body: Any,
              headers: dict[str, str] | None = None) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    writer.write(_head(status, {"content-type": "application/json",
                                "content-length": str(len(raw)), **(headers or {})}) + raw)


def sse_head(writer: asyncio.StreamWriter) -> None:
    writer.write(_head(200, {"content-type": "text/event-stream",
                             "transfer-encoding": "chunked"}))


def sse_event(writer: asyncio.StreamWriter, data: str, event: str | None = None) -> None:
    raw = ((f"event: {event}\n" if event else "") + f"data: {data}\n\n").encode()
    writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")


def openai_reply(req: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    content = _text(req) if text is None else text
    return {"id": "up-1", "object": "chat.completion", "created": 1, "model": req["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def openai_chunks(req: dict[str, Any], text: str | None = None) -> list[str]:
    words = (_text(req) if text is None else text).split(" ")
    base = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": req["model"]}
    out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "finish_reason": None}]}]
    out += [{**base, "choices": [{"index": 0, "delta": {"content": (" " if i else "") + w},
                                  "finish_reason": None}]} for i, w in enumerate(words)]
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    out.append({**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                 "total_tokens": 5}})
    return [json.dumps(c) for c in out]


async def ok(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
             w: asyncio.StreamWriter) -> bool:
    """A well-behaved OpenAI upstream echoing the last user message."""
    if req.get("stream"):
        sse_head(w)
        for data in [*openai_chunks(req), "[DONE]"]:
            sse_event(w, data)
        w.write(b"0\r\n\r\n")
    else:
        send_json(w, 200, openai_reply(req))
    return True


def reply(text: str) -> Action:
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        if req.get("stream"):
            sse_head(w)
            for data in [*openai_chunks(req, text), "[DONE]"]:
                sse_event(w, data)
            w.write(b"0\r\n\r\n")
        else:
            send_json(w, 200, openai_reply(req, text))
        return True
    return act


def status(code: int, headers: dict[str, str] | None = None, body: Any = None) -> Action:
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        send_json(w, code, body if body is not None else {"error": {"message": f"boom {code}"}},
                  headers)
        return True
    return act


def slow(delay_s: float) -> Action:
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(delay_s)
        return await ok(up, req, r, w)
    return act


async def drop_mid_stream(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                          w: asyncio.StreamWriter) -> bool:
    sse_head(w)
    for data in openai_chunks(req)[:2]:
        sse_event(w, data)
    await w.drain()
    return False  # close without the terminating chunk


async def malformed_sse(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                        w: asyncio.StreamWriter) -> bool:
    sse_head(w)
    sse_event(w, "{not json")
    w.write(b"0\r\n\r\n")
    return True


async def invalid_json(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                       w: asyncio.StreamWriter) -> bool:
    send_json(w, 200, b"{this is not json")
    return True


async def endless_stream(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                         w: asyncio.StreamWriter) -> bool:
    """Streams a chunk every 20 ms until the client goes away; records the disconnect."""
    sse_head(w)
    chunks = openai_chunks(req, "tick")
    sse_event(w, chunks[0])
    try:
        while True:
            sse_event(w, chunks[1])
            await w.drain()
            try:
                data = await asyncio.wait_for(r.read(1), 0.02)
            except TimeoutError:
                continue
            if not data:
                break
    except ConnectionError:
        pass
    up.disconnected.set()
    return False


def embedding_vector(text: str) -> list[float]:
    """The fake upstream's vector for one input: three numbers read off it."""
    return [float(len(text)), float(sum(map(ord, text)) % 97), 0.5]


def openai_embeddings(req: dict[str, Any], *, floats_only: bool = False) -> dict[str, Any]:
    """OpenAI's embeddings list for `req`, as api.openai.com writes it: floats, or with
    `encoding_format: "base64"` the base64 of little-endian float32s (unless `floats_only`:
    a server that knows no base64); `data` in reverse order (OpenAI's is by `index`, which
    a client must honour, not the order)."""
    inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
    encode: Callable[[list[float]], Any] = (
        _b64_floats if req.get("encoding_format") == "base64" and not floats_only
        else lambda v: v)
    data = [{"object": "embedding", "index": i,
             "embedding": encode(embedding_vector(str(item)))}
            for i, item in enumerate(inputs)]
    return {"object": "list", "data": data[::-1], "model": req["model"],
            "usage": {"prompt_tokens": 4 * len(inputs), "total_tokens": 4 * len(inputs)}}


def _b64_floats(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


async def embeddings(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                     w: asyncio.StreamWriter) -> bool:
    """A well-behaved OpenAI embeddings endpoint."""
    send_json(w, 200, openai_embeddings(req))
    return True


async def embeddings_as_floats(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                               w: asyncio.StreamWriter) -> bool:
    """An OpenAI-compatible embeddings endpoint that ignores `encoding_format` and always
    answers floats (as some servers do)."""
    send_json(w, 200, openai_embeddings(req, floats_only=True))
    return True


#: The length of `large_embeddings`' vectors unless asked (text-embedding-3-large's).
LARGE_DIMENSIONS = 3072


def _large_tail(dimensions: int) -> array[float]:
    """The numbers after the first of every `large_embeddings` vector: float32s in
    (-0.06, 0.06), as a real model's are."""
    return array("f", [((k * 7919) % 12001 - 6000) / 100003.0 for k in range(dimensions - 1)])


def large_vector_base64(index: int, dimensions: int = LARGE_DIMENSIONS) -> str:
    """The base64 of `large_embeddings`' vector for input `index`: `index`, then the tail."""
    return base64.b64encode(struct.pack("<f", index) + _large_tail(dimensions).tobytes()
                            ).decode()


async def large_embeddings(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                           w: asyncio.StreamWriter) -> bool:
    """OpenAI's embeddings endpoint for big batches: vectors of `dimensions` numbers
    (LARGE_DIMENSIONS unless asked), written as api.openai.com writes them, base64 when
    asked, else floats in float32's 9 significant digits (2048 x 3,072 of those are ~85 MB,
    against ~33 MB of base64). Bodies are built as bytes: a JSON encoder takes seconds."""
    inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
    size = int(req.get("dimensions") or LARGE_DIMENSIONS)
    if req.get("encoding_format") == "base64":
        vectors = [f'"{large_vector_base64(i, size)}"' for i in range(len(inputs))]
    else:
        tail = "".join(f",{x:.9g}" for x in _large_tail(size))
        vectors = [f"[{i}{tail}]" for i in range(len(inputs))]
    data = ",".join(f'{{"object":"embedding","index":{i},"embedding":{v}}}'
                    for i, v in enumerate(vectors))
    n = len(inputs)
    send_json(w, 200, (f'{{"object":"list","data":[{data}],"model":"{req["model"]}",'
                       f'"usage":{{"prompt_tokens":{n},"total_tokens":{n}}}}}').encode())
    return True


def zero_embeddings(size: int) -> Action:
    """An endpoint answering every input a vector of `size` zeros, written as floats
    (JSON's shortest numbers: the most numbers a reply of some size can hold)."""
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
        zeros = b"[" + b"0," * (size - 1) + b"0]"
        data = b",".join(b'{"object":"embedding","index":%d,"embedding":%s}' % (i, zeros)
                         for i in range(len(inputs)))
        send_json(w, 200, b'{"object":"list","data":[%s],"model":"z","usage":'
                          b'{"prompt_tokens":1,"total_tokens":1}}' % data)
        return True
    return act


def embeddings_reply(body: Any) -> Action:
    """An embeddings endpoint answering `body` (a reply of another shape) with HTTP 200."""
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        send_json(w, 200, body)
        return True
    return act


def anthropic_message(req: dict[str, Any], tool: bool = False) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": _text(req)}]
    if tool:
        content.append({"type": "tool_use", "id": "toolu_1", "name": "lookup",
                        "input": {"q": "x"}})
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": req["model"],
            "content": content, "stop_reason": "tool_use" if tool else "end_turn",
            "usage": {"input_tokens": 7, "output_tokens": 3}}


def anthropic(tool: bool = False) -> Action:
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        if not req.get("stream"):
            send_json(w, 200, anthropic_message(req, tool))
            return True
        sse_head(w)
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "model": req["model"], "usage": {"input_tokens": 7}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("ping", {"type": "ping"}),
        ]
        events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": w_}})
                   for w_ in ["Hello", " there"]]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        if tool:
            events += [
                ("content_block_start", {"type": "content_block_start", "index": 1,
                                         "content_block": {"type": "tool_use", "id": "toolu_1",
                                                           "name": "lookup", "input": {}}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
                    "type": "input_json_delta", "partial_json": '{"q": '}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
                    "type": "input_json_delta", "partial_json": '"x"}'}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 1}),
            ]
        events += [
            ("message_delta", {"type": "message_delta", "delta": {
                "stop_reason": "tool_use" if tool else "end_turn"}, "usage": {
                "output_tokens": 3}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        for name, data in events:
            sse_event(w, json.dumps(data), name)
        w.write(b"0\r\n\r\n")
        return True
    return act


class Upstream:
    """A raw asyncio HTTP/1.1 server on 127.0.0.1:0 that plays scripted actions per model.

    `plan(model, a1, a2, ...)`: requests for `model` get a1, then a2, ...; the last
    action repeats. Unplanned models get `ok`. `requests` records (path, headers, body).
    """

    def __init__(self) -> None:
        self.plans: dict[str, list[Action]] = {}
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.disconnected = asyncio.Event()
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def plan(self, model: str, *actions: Action) -> None:
        self.plans[model] = list(actions)

    def calls(self, model: str) -> int:
        return sum(1 for _, _, body in self.requests if body.get("model") == model)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.connections += 1
        try:
            while True:
                line = await r.readline()
                if not line.strip():
                    break
                path = line.decode().split()[1]
                headers: dict[str, str] = {}
                while (h := await r.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = json.loads(await r.readexactly(int(headers.get("content-length", 0))))
                self.requests.append((path, headers, body))
                actions = self.plans.get(body.get("model", ""), [ok])
                action = actions.pop(0) if len(actions) > 1 else actions[0]
                keep = await action(self, body, r, w)
                await w.drain()
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            w.close()
            self._tasks.discard(task)  # type: ignore[arg-type]


def openai_text_completion(req: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `text_completion` for `req` (POST /completions), as api.openai.com writes
    it: per prompt and `n`, the prompt reversed; `choices` in reverse order (a client must
    read `index`); 2 prompt tokens a prompt and 3 completion tokens a choice."""
    prompts = req["prompt"] if isinstance(req["prompt"], list) and req["prompt"] and \
        not isinstance(req["prompt"][0], int) else [req["prompt"]]
    n = req.get("n") or 1
    choices = [{"index": p * n + j, "text": str(prompt)[::-1], "logprobs": None,
                "finish_reason": "length"} for p, prompt in enumerate(prompts)
               for j in range(n)]
    return {"id": "cmpl-up1", "object": "text_completion", "created": 7,
            "model": req["model"], "choices": choices[::-1], "system_fingerprint": None,
            "usage": {"prompt_tokens": 2 * len(prompts), "completion_tokens": 3 * len(choices),
                      "total_tokens": 2 * len(prompts) + 3 * len(choices)}}


async def text_completions(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                           w: asyncio.StreamWriter) -> bool:
    """A well-behaved OpenAI completions endpoint (`openai_text_completion`)."""
    send_json(w, 200, openai_text_completion(req))
    return True


class FakeTime:
    """An injected clock and sleep: sleeping advances the clock at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds




EngineFactory = Callable[..., Awaitable[Any]]
"""The `make_engine` fixture: `await make_engine(config, real_time=False, hooks=None)`."""
