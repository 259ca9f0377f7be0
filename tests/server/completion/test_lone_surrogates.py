"""A model's reply holding a lone UTF-16 surrogate (JSON's `"\\ud800"` escape: valid JSON,
but half of a character, which no protobuf string nor UTF-8 holds) reaches the caller with
each lone half as U+FFFD, as a UTF-8 decoder with errors="replace" writes what it cannot
read; before, Completion answered UNAVAILABLE ("does not fit OpenAI's shape: surrogates not
allowed") and the door a 502. Through a real mesh (gRPC, and the OpenAI door with the
openai SDK), from a loopback upstream speaking OpenAI's and Anthropic's wire formats:
unary and streamed, content and tool-call arguments; a surrogate pair an upstream cut
between two chunks is joined, a half alone becomes U+FFFD."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from completion_upstream import Upstream, send_json, sse_event, sse_head
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import ScillmClient

MSG = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}]
#: Placeholders the upstreams' JSON writes as escapes: a lone half, a pair's two halves.
_ESCAPES = {"@LONE@": "\\ud800", "@HIGH@": "\\ud83d", "@LOW@": "\\ude00"}
#: What the caller reads for the escapes above: U+FFFD for a half alone, the pair joined.
LONE, PAIR = "\ufffd", "\U0001F600"


def _json(value: Any) -> str:
    """`value` as JSON, each placeholder written as its escape (a lone half, a pair's)."""
    text = json.dumps(value)
    for mark, escape in _ESCAPES.items():
        text = text.replace(mark, escape)
    return text


async def _openai_upstream(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                           w: asyncio.StreamWriter) -> bool:
    """An OpenAI-compatible upstream whose answer holds lone halves, in its text and in its
    tool call's arguments; streamed, with a pair cut between two chunks in each."""
    if not req.get("stream"):
        send_json(w, 200, _json({
            "id": "up-1", "object": "chat.completion", "created": 1, "model": req["model"],
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "A @LONE@ B @HIGH@@LOW@ C @LOW@@HIGH@",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "lookup", "arguments": '{"q": "x @LONE@ y"}'}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}).encode())
        return True
    base = {"id": "up-1", "object": "chat.completion.chunk", "created": 1,
            "model": req["model"]}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return _json({**base, "choices": [{"index": 0, "delta": delta,
                                           "finish_reason": finish}]})

    def args(index: int, text: str) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, "function": {"arguments": text}}]}

    sse_head(w)
    for data in [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "A @LONE@ B @HIGH@"}), chunk({"content": "@LOW@ C"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "lookup", "arguments": ""}}]}),
        chunk(args(0, '{"q": "x @LONE@ @HIGH@')), chunk(args(0, '@LOW@ y"}')),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                               "function": {"name": "lookup", "arguments": '{"q": "z"}'}}]}),
        chunk(args(1, "@HIGH@")),  # a high half the stream never completes
        chunk({}, "tool_calls"),
        _json({**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                "total_tokens": 5}}),
        "[DONE]",
    ]:
        sse_event(w, data)
    w.write(b"0\r\n\r\n")
    return True


async def _anthropic_upstream(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                              w: asyncio.StreamWriter) -> bool:
    """Anthropic's Messages API answering lone halves, in a text block and in a tool_use
    block's input; streamed, with a pair cut between two deltas in each."""
    if not req.get("stream"):
        send_json(w, 200, _json({
            "id": "msg_1", "type": "message", "role": "assistant", "model": req["model"],
            "content": [{"type": "text", "text": "A @LONE@ B @HIGH@@LOW@ C @LOW@@HIGH@"},
                        {"type": "tool_use", "id": "toolu_1", "name": "lookup",
                         "input": {"q": "x @LONE@ y"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 7, "output_tokens": 3}}
        ).encode())
        return True

    def delta(index: int, body: dict[str, Any]) -> tuple[str, str]:
        return "content_block_delta", _json({"type": "content_block_delta", "index": index,
                                             "delta": body})

    sse_head(w)
    for name, data in [
        ("message_start", _json({"type": "message_start", "message": {
            "id": "msg_1", "model": req["model"], "usage": {"input_tokens": 7}}})),
        ("content_block_start", _json({"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})),
        delta(0, {"type": "text_delta", "text": "A @LONE@ B @HIGH@"}),
        delta(0, {"type": "text_delta", "text": "@LOW@ C"}),
        ("content_block_stop", _json({"type": "content_block_stop", "index": 0})),
        ("content_block_start", _json({"type": "content_block_start", "index": 1,
                                       "content_block": {"type": "tool_use", "id": "toolu_1",
                                                         "name": "lookup", "input": {}}})),
        delta(1, {"type": "input_json_delta", "partial_json": '{"q": "x @LONE@ @HIGH@'}),
        delta(1, {"type": "input_json_delta", "partial_json": '@LOW@ y"}'}),
        ("content_block_stop", _json({"type": "content_block_stop", "index": 1})),
        ("content_block_start", _json({"type": "content_block_start", "index": 2,
                                       "content_block": {"type": "tool_use", "id": "toolu_2",
                                                         "name": "lookup", "input": {}}})),
        delta(2, {"type": "input_json_delta", "partial_json": '{"q": "z"}'}),
        delta(2, {"type": "input_json_delta", "partial_json": "@HIGH@"}),  # never completed
        ("content_block_stop", _json({"type": "content_block_stop", "index": 2})),
        ("message_delta", _json({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                 "usage": {"output_tokens": 3}})),
        ("message_stop", _json({"type": "message_stop"})),
    ]:
        sse_event(w, data, name)
    w.write(b"0\r\n\r\n")
    return True


async def _text_upstream(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                         w: asyncio.StreamWriter) -> bool:
    """OpenAI's legacy /completions answering a text with a lone half and a whole pair."""
    send_json(w, 200, _json({
        "id": "cmpl-1", "object": "text_completion", "created": 7, "model": req["model"],
        "choices": [{"index": 0, "text": "A @LONE@ B @HIGH@@LOW@", "logprobs": None,
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}).encode())
    return True


@pytest.fixture
def mesh(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    upstream.plan("oa-up", _openai_upstream)
    upstream.plan("claude-up", _anthropic_upstream)
    upstream.plan("text-up", _text_upstream)
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"model_list": [
        {"model_name": "oa", "litellm_params": {
            "model": "openai/oa-up", "api_base": f"{upstream.url}/v1", "api_key": "x"}},
        {"model_name": "text", "litellm_params": {
            "model": "openai/text-up", "api_base": f"{upstream.url}/v1", "api_key": "x"}},
        {"model_name": "claude", "litellm_params": {
            "model": "anthropic/claude-up", "api_base": upstream.url, "api_key": "x"}}],
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, services=("completion",)))
    yield running
    running.stop()


#: What each model's stream reads as: its text, and each tool call's arguments.
STREAMED = {
    "oa": ("A \ufffd B \U0001F600 C", ['{"q": "x \ufffd \U0001F600 y"}', '{"q": "z"}\ufffd']),
    "claude": ("A \ufffd B \U0001F600 C",
               ['{"q": "x \ufffd \U0001F600 y"}', '{"q": "z"}\ufffd']),
}


@pytest.mark.parametrize("model", ["oa", "claude"])
async def test_a_whole_answer_holding_lone_halves_reaches_a_grpc_caller(
        mesh: RunningMesh, model: str) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        reply = await client.completion.create({"model": model, "messages": MSG,
                                                "tools": TOOLS})
    message = reply.choices[0].message
    text = "".join(part.text for part in message.content)
    assert text == f"A {LONE} B {PAIR} C {LONE}{LONE}", ascii(text)
    [call] = message.tool_calls
    assert json.loads(call.function.arguments) == {"q": f"x {LONE} y"}
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) != (0, 0)


@pytest.mark.parametrize("model", ["oa", "claude"])
async def test_a_stream_holding_lone_halves_reaches_a_grpc_caller(
        mesh: RunningMesh, model: str) -> None:
    text, calls = "", ["", ""]
    ended = False
    async with ScillmClient(mesh.grpc_target) as client:
        async for event in client.completion.stream({"model": model, "messages": MSG,
                                                      "tools": TOOLS}):
            if event.HasField("end"):
                ended = True
                continue
            for choice in event.chunk.choices:
                text += choice.delta.content
                for call in choice.delta.tool_calls:
                    calls[call.index] += call.arguments
    assert ended
    assert (text, calls) == (STREAMED[model][0], STREAMED[model][1]), ascii((text, calls))


async def test_the_openai_sdk_reads_them_through_the_door(mesh: RunningMesh) -> None:
    sdk = openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="x", max_retries=0)
    async with sdk:
        whole = await sdk.chat.completions.create(model="oa", messages=MSG,  # type: ignore
                                                  tools=TOOLS)  # type: ignore[arg-type]
        stream = await sdk.chat.completions.create(model="claude", messages=MSG,  # type: ignore
                                                   tools=TOOLS, stream=True)  # type: ignore
        text, calls = "", ["", ""]
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                for call in choice.delta.tool_calls or ():
                    calls[call.index] += (call.function.arguments or "") if call.function \
                        else ""
        completed = await sdk.completions.create(model="text", prompt="go")
    message = whole.choices[0].message
    assert message.content == f"A {LONE} B {PAIR} C {LONE}{LONE}"
    assert message.tool_calls is not None
    assert json.loads(message.tool_calls[0].function.arguments) == {"q": f"x {LONE} y"}
    assert (text, calls) == STREAMED["claude"]
    assert completed.choices[0].text == f"A {LONE} B {PAIR}"


async def test_a_text_completion_holding_a_lone_half_reaches_a_grpc_caller(
        mesh: RunningMesh) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        reply = await client.completion.text({"model": "text", "prompt": "go"})
    assert reply.choices[0].text == f"A {LONE} B {PAIR}"
