"""What an OpenAI upstream says reaches the OpenAI door's caller as it was said: usage with
all its details, logprobs of a refusal, and a stream's usage chunk named as its other
chunks are. The upstream here answers with replies shaped as OpenAI's own (the fields of
`gpt-4o` replies, zeros included) and the caller is the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from loop_server import stop_serving
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import ScillmClient, openai_wire

MODEL = "gpt-4o-2024-08-06"  # the upstream's name; the caller asks for the alias `gpt`
CREATED = 1733000000
USAGE = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
         "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                       "accepted_prediction_tokens": 3,
                                       "rejected_prediction_tokens": 1},
         "cost": 0.00021}  # a provider's own field (OpenRouter reports one)
LOGPROBS = {"content": None, "refusal": [
    {"token": "I", "logprob": -0.01, "bytes": [73], "top_logprobs": []},
    {"token": " can't", "logprob": -0.2, "bytes": [32, 99, 97, 110, 39, 116],
     "top_logprobs": []}]}
REPLY = {"id": "chatcmpl-AbC", "object": "chat.completion", "created": CREATED, "model": MODEL,
         "choices": [{"index": 0, "logprobs": LOGPROBS, "finish_reason": "stop",
                      "message": {"role": "assistant", "content": None,
                                  "refusal": "I can't", "annotations": []}}],
         "usage": USAGE, "service_tier": "default", "system_fingerprint": "fp_50cad350e4"}


def _chunks() -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-XyZ", "object": "chat.completion.chunk", "created": CREATED,
            "model": MODEL, "service_tier": "default", "system_fingerprint": "fp_50cad350e4"}
    deltas = [({"role": "assistant", "content": "", "refusal": None}, None),
              ({"content": "Hi"}, None), ({}, "stop")]
    out = [{**base, "choices": [{"index": 0, "delta": d, "logprobs": None,
                                 "finish_reason": f}]} for d, f in deltas]
    return [*out, {**base, "choices": [], "usage": USAGE}]


class OpenAILikeUpstream:
    """Answers every chat completion with REPLY, or with `_chunks()` when asked to stream."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> OpenAILikeUpstream:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        stop_serving(self.loop, self.thread, self.server)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                if json.loads(await reader.readexactly(length)).get("stream"):
                    body = b"".join(b"data: %s\n\n" % json.dumps(c).encode()
                                    for c in _chunks()) + b"data: [DONE]\n\n"
                    kind = b"text/event-stream"
                else:
                    body, kind = json.dumps(REPLY).encode(), b"application/json"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
                             % (kind, len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    upstream = OpenAILikeUpstream().start()
    tmp: Path = tmp_path_factory.mktemp("fidelity")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": "gpt", "litellm_params": {
        "model": f"openai/{MODEL}", "api_base": f"http://127.0.0.1:{upstream.port}/v1",
        "api_key": "x"}}]}))
    running = start_mesh(mesh_settings(tmp, config_path=config))
    try:
        yield running
    finally:
        running.stop()
        upstream.stop()


@pytest.fixture
def sdk(mesh: RunningMesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="unused", max_retries=0)


MESSAGES: Any = [{"role": "user", "content": "hi"}]


def test_usage_and_refusal_logprobs_reach_the_caller_whole(sdk: openai.OpenAI) -> None:
    """Before, the usage's details beyond cached and reasoning tokens (audio, predicted
    tokens, and zeros) and a provider's own fields (`cost`) were dropped, and so were the
    logprobs of a refusal."""
    raw = sdk.chat.completions.with_raw_response.create(model="gpt", messages=MESSAGES,
                                                        logprobs=True)
    body = json.loads(raw.text)
    assert body["usage"] == USAGE
    assert body["choices"][0]["logprobs"]["refusal"] == LOGPROBS["refusal"]
    parsed = raw.parse()
    assert parsed.usage is not None and parsed.usage.completion_tokens_details is not None
    assert parsed.usage.completion_tokens_details.accepted_prediction_tokens == 3


def test_the_usage_chunk_is_named_as_the_streams_other_chunks(sdk: openai.OpenAI) -> None:
    """Before, the last chunk (`include_usage`) carried the alias the caller asked for and
    the door's own clock, where its other chunks carried the upstream's model and time,
    and its usage had lost its details."""
    chunks = list(sdk.chat.completions.create(model="gpt", messages=MESSAGES, stream=True,
                                              stream_options={"include_usage": True}))
    assert {(c.id, c.model, c.created, c.system_fingerprint) for c in chunks} == {
        ("chatcmpl-XyZ", MODEL, CREATED, "fp_50cad350e4")}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == USAGE


def test_a_grpc_caller_gets_the_usage_details_too(mesh: RunningMesh) -> None:
    async def call() -> dict[str, Any]:
        async with ScillmClient(mesh.grpc_target) as client:
            reply = await client.completion.create(openai_wire.request_to_proto(
                {"model": "gpt", "messages": MESSAGES}))
        return openai_wire.usage_from_proto(reply.usage)

    assert asyncio.run(call()) == USAGE
