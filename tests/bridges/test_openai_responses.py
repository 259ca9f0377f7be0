"""`POST /v1/responses`, OpenAI's Responses API, served on chat completions: driven by the
real openai SDK (`responses.create`, `responses.stream`, `responses.parse`) and plain HTTP,
against the `echo/...` models and against an OpenAI-compatible upstream that speaks the
chat wire (JSON, and SSE chunks with tool calls split across them). Every answer is also
checked against the SDK's own models (`Response`, `ResponseStreamEvent`), validated, not
merely constructed."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from loop_server import LoopServer
from meshutil import RunningMesh, mesh_settings, start_mesh
from openai.types.responses import Response, ResponseStreamEvent
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from scillm.bridges.openai.openapi import OPENAPI

MASTER = "sk-responses-master"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck))
EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}
ANSWER = {"type": "json_schema", "name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
    "additionalProperties": False}}


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class ChatWireUpstream(LoopServer):
    """An OpenAI-compatible chat server whose answer is chosen by the model asked for:

    - `tools`: a call of get_weather(city=Paris), or, once the last message is a tool
      result, the text "Sunny in Paris." (streamed: the call's arguments in three pieces);
    - `text-and-tool`: the text "Let me look." and a call of get_weather;
    - `json`: the text {"answer": 42};
    - `dropping`: streamed only: one chunk, then the connection dies;
    - `silent`: never answers; notes its arrival and when its caller hangs up.

    Every request is kept in `requests`, by model."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: dict[str, list[dict[str, Any]]] = {}
        self.arrived = threading.Semaphore(0)
        self.hung_up = threading.Semaphore(0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                request = json.loads(await reader.readexactly(length))
                model = request["model"]
                self.requests.setdefault(model, []).append(request)
                if model == "silent":
                    self.arrived.release()
                    while await reader.read(4096):
                        pass
                    self.hung_up.release()
                    return
                if request.get("stream"):
                    writer.write(self._stream(model, request))
                    if model == "dropping":
                        await writer.drain()
                        writer.transport.abort()
                        return
                else:
                    body = json.dumps(self._reply(model, request)).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _answer(model: str, request: dict[str, Any]) -> tuple[str | None, list[str]]:
        """(text, the call's argument pieces) of the answer; no pieces: no call."""
        last = request["messages"][-1]
        if model == "tools" and last["role"] != "tool":
            return None, ['{"city":', ' "Par', 'is"}']
        if model == "tools":
            return "Sunny in Paris.", []
        if model == "text-and-tool":
            return "Let me look.", ['{"city": "Paris"}']
        if model == "json":
            return '{"answer": 42}', []
        return "partial", []

    def _reply(self, model: str, request: dict[str, Any]) -> dict[str, Any]:
        text, pieces = self._answer(model, request)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if pieces:
            message["tool_calls"] = [{"id": "call_w1", "type": "function", "function": {
                "name": "get_weather", "arguments": "".join(pieces)}}]
        return {"id": "chatcmpl-up", "object": "chat.completion", "created": 1,
                "model": model, "choices": [{"index": 0, "message": message,
                                             "finish_reason": "tool_calls" if pieces
                                             else "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                          "prompt_tokens_details": {"cached_tokens": 4},
                          "completion_tokens_details": {"reasoning_tokens": 2}}}

    def _stream(self, model: str, request: dict[str, Any]) -> bytes:
        text, pieces = self._answer(model, request)
        chunks = [_chunk(model, {"role": "assistant", "content": ""})]
        if text:
            words = text.split(" ")
            chunks += [_chunk(model, {"content": (" " if i else "") + w})
                       for i, w in enumerate(words)]
        if pieces:
            chunks.append(_chunk(model, {"tool_calls": [{
                "index": 0, "id": "call_w1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}))
            chunks += [_chunk(model, {"tool_calls": [{"index": 0, "function": {
                "arguments": piece}}]}) for piece in pieces]
        if model != "dropping":
            chunks.append(_chunk(model, {}, "tool_calls" if pieces else "stop"))
            chunks.append({**_chunk(model, {}), "choices": [], "usage": {
                "prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}})
        body = b"".join(b"data: %s\n\n" % json.dumps(c).encode() for c in chunks)
        if model != "dropping":
            body += b"data: [DONE]\n\n"
        return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"content-length: %d\r\n\r\n" % (len(body) + (1000 if model == "dropping"
                                                              else 0)) + body)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ChatWireUpstream]:
    running = ChatWireUpstream().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory,
          upstream: ChatWireUpstream) -> Iterator[RunningMesh]:
    """A mesh with a master key, its models served by `upstream`."""
    tmp: Path = tmp_path_factory.mktemp("responses")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": upstream.url, "api_key": "x",
            "timeout": 600 if name == "silent" else 10}}
            for name in ("tools", "text-and-tool", "json", "dropping", "silent")],
        "general_settings": {"master_key": MASTER},
        "router_settings": {"num_retries": 0},
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp, config_path=config, services=("completion",)))
    yield running
    running.stop()


@pytest.fixture
def sdk(mesh: RunningMesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="unused", max_retries=0,
                         timeout=30)


@pytest.fixture
def keyed_sdk(keyed: RunningMesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{keyed.http_url}/v1", api_key=MASTER, max_retries=0,
                         timeout=30)


def _valid(reply: Any) -> Response:
    """The reply as the SDK's `Response`, validated (every required field, every type)."""
    raw = reply.model_dump(mode="json", by_alias=True) if isinstance(reply, Response) \
        else reply
    return Response.model_validate(raw)


def _events(mesh: RunningMesh, body: dict[str, Any], key: str = "") -> list[dict[str, Any]]:
    """A streamed response's events as sent, each checked: its `event:` name is its type,
    it validates as the SDK's `ResponseStreamEvent`, and the numbers run 0, 1, 2, ..."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with httpx.stream("POST", f"{mesh.http_url}/v1/responses", timeout=60, headers=headers,
                      json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-request-id"]
        blocks = resp.read().decode().split("\n\n")
    assert blocks[-1] == ""
    events = []
    for block in blocks[:-1]:
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        if event["type"] != "error":
            EVENTS.validate_python(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


# -- the echo model, through the SDK ---------------------------------------------------


def test_text_in_text_out(sdk: openai.OpenAI) -> None:
    reply = sdk.responses.create(model="echo/x", input="hello responses door",
                                 instructions="answer briefly", metadata={"run": "7"},
                                 temperature=0.5, top_p=0.9, user="ada")
    assert reply.output_text == "hello responses door"
    assert reply.id.startswith("resp_") and reply.object == "response"
    assert reply.status == "completed" and reply.incomplete_details is None
    assert reply.model == "echo/x" and reply.created_at > 0
    assert reply.instructions == "answer briefly" and reply.metadata == {"run": "7"}
    assert reply.temperature == 0.5 and reply.top_p == 0.9 and reply.user == "ada"
    assert reply.usage is not None and reply.usage.output_tokens == 3
    assert reply.usage.total_tokens == reply.usage.input_tokens + 3
    assert reply.usage.input_tokens_details.cached_tokens == 0
    assert reply.usage.output_tokens_details.reasoning_tokens == 0
    message = reply.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed" and message.id.startswith("msg_")
    assert (reply.model_extra or {})["scillm"]["routing"]["provider"] == "echo"
    _valid(reply)


def test_input_items_of_every_role(sdk: openai.OpenAI) -> None:
    """Message items with text or input_text parts; echo answers the last user message."""
    reply = sdk.responses.create(model="echo/x", input=[
        {"role": "system", "content": "be terse"},
        {"role": "developer", "content": [{"type": "input_text", "text": "really terse"}]},
        {"role": "user", "content": "first question"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "first answer", "annotations": []}]},
        {"role": "user", "content": [{"type": "input_text", "text": "second"},
                                     {"type": "input_text", "text": " question"}]}])
    assert reply.output_text == "second question"


def test_max_output_tokens_makes_an_incomplete_response(sdk: openai.OpenAI) -> None:
    reply = sdk.responses.create(model="echo/x", input="one two three four five",
                                 max_output_tokens=2)
    assert reply.status == "incomplete"
    assert reply.incomplete_details is not None
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.output_text == "one two" and reply.max_output_tokens == 2
    assert reply.output[0].status == "incomplete"
    _valid(reply)


def test_sdk_streams_the_echo(sdk: openai.OpenAI) -> None:
    events = list(sdk.responses.create(model="echo/x", input="one two three", stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 3,
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") \
        == "one two three"
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == "one two three"
    assert done.response.usage is not None and done.response.usage.output_tokens == 3
    assert events[0].type == "response.created"
    assert events[0].response.id == done.response.id and events[0].response.output == []


def test_an_empty_answer_has_the_same_output_streamed_or_not(sdk: openai.OpenAI) -> None:
    """echo answers an empty input with nothing: the unary reply held a message with an
    empty output_text, the stream's response.completed an empty output and no item."""
    whole = sdk.responses.create(model="echo/x", input="")
    events = list(sdk.responses.create(model="echo/x", input="", stream=True))
    done = events[-1]
    assert done.type == "response.completed"
    assert [item.model_dump(exclude={"id"}) for item in done.response.output] == \
        [item.model_dump(exclude={"id"}) for item in whole.output]
    assert [item.type for item in whole.output] == ["message"]
    assert [e.type for e in events if e.type.startswith("response.output_item")] == \
        ["response.output_item.added", "response.output_item.done"]
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_stream_helper_gives_the_final_response(sdk: openai.OpenAI) -> None:
    with sdk.responses.stream(model="echo/x", input="alpha beta") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "alpha beta" == final.output_text
    assert final.status == "completed"


def test_a_streamed_response_cut_at_its_limit_ends_incomplete(mesh: RunningMesh) -> None:
    """As OpenAI: the last event is response.incomplete, its reason max_output_tokens."""
    events = _events(mesh, {"model": "echo/x", "input": "a b c d", "max_output_tokens": 1})
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["output"][0]["content"][0]["text"] == "a"


def test_the_async_sdk_streams_too(mesh: RunningMesh) -> None:
    async def run() -> str:
        async with openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="x",
                                      max_retries=0) as client:
            async with client.responses.stream(model="echo/x", input="async words") as stream:
                return (await stream.get_final_response()).output_text
    assert asyncio.run(run()) == "async words"


# -- what is refused -------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "param"), [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_123"}, "conversation"),
    ({"background": True}, "background"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs"]}]},
     "tools[1].type"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "http://x"}]},
     "tools[0].type"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": "file-1"}]}]}, "input[0].content[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": []}, "input"),
    ({"input": 5}, "input"),
    ({"messages": [{"role": "user", "content": "x"}]}, "messages"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": "many"}, "max_output_tokens"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"truncation": "auto"}, "truncation"),
    ({"temperature": 9}, "temperature"),
    ({"model": "agent/echo/x"}, "model"),
    ({"model": ""}, "model"),
    # wrong types read as their Python truth: `{}` as no tools, true as n 1, false as 0
    ({"tools": {}}, "tools"),
    ({"tools": ""}, "tools"),
    ({"tools": False}, "tools"),
    ({"n": True}, "n"),
    ({"top_logprobs": False}, "top_logprobs"),
    ({"max_tool_calls": -1}, "max_tool_calls"),
    ({"max_tool_calls": 0}, "max_tool_calls"),
])
def test_what_is_not_served_is_a_400_naming_the_field(mesh: RunningMesh, extra: dict[str, Any],
                                                      param: str) -> None:
    body = {"model": "echo/x", "input": "hi", **extra}
    resp = httpx.post(f"{mesh.http_url}/v1/responses", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.headers["x-request-id"]
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert "Traceback" not in error["message"]


def test_no_store_no_continuation(sdk: openai.OpenAI) -> None:
    """`store` is taken (nothing is kept: the reply says store false); continuing a
    response by id says what to do instead."""
    reply = sdk.responses.create(model="echo/x", input="keep me", store=True)
    assert reply.output_text == "keep me" and reply.store is False
    with pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model="echo/x", input="and then?", previous_response_id=reply.id)
    assert "send the conversation in `input`" in info.value.message
    assert info.value.param == "previous_response_id"


def test_unknown_model_is_model_not_found(sdk: openai.OpenAI, mesh: RunningMesh) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk.responses.create(model="nosuch/model", input="hi")
    assert info.value.code == "model_not_found"
    # Streamed too, before the first byte: a plain error body, not a stream.
    resp = httpx.post(f"{mesh.http_url}/v1/responses", timeout=30, headers={
        "x-request-id": "resp-404"}, json={"model": "nosuch/model", "input": "hi",
                                           "stream": True})
    assert resp.status_code == 404 and resp.headers["x-request-id"] == "resp-404"
    assert resp.json()["error"]["code"] == "model_not_found"


def test_bad_json_and_the_request_id(mesh: RunningMesh) -> None:
    resp = httpx.post(f"{mesh.http_url}/responses", content=b"{nope", timeout=30,
                      headers={"content-type": "application/json", "x-request-id": "r-1"})
    assert resp.status_code == 400 and resp.headers["x-request-id"] == "r-1"
    assert resp.json()["error"]["type"] == "invalid_request_error"
    ok = httpx.post(f"{mesh.http_url}/responses", timeout=30, headers={"x-request-id": "r-2"},
                    json={"model": "echo/x", "input": "unversioned path"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "r-2"
    assert ok.json()["output"][0]["content"][0]["text"] == "unversioned path"


# -- an OpenAI-compatible upstream: tools, JSON, streamed tool calls, errors, keys ------


def test_keys_pass_through_as_chats(keyed: RunningMesh) -> None:
    """No key, or a wrong one (as `Authorization` or `x-api-key`): 401, streamed or not."""
    for stream in (False, True):
        for headers in ({}, {"authorization": "Bearer sk-wrong"}, {"x-api-key": "sk-wrong"}):
            resp = httpx.post(f"{keyed.http_url}/v1/responses", headers=headers, timeout=30,
                              json={"model": "json", "input": "hi", "stream": stream})
            assert resp.status_code == 401, resp.text
            assert resp.json()["error"]["type"] == "authentication_error"
        resp = httpx.post(f"{keyed.http_url}/v1/responses", headers={"x-api-key": MASTER},
                          timeout=30, json={"model": "json", "input": "hi", "stream": stream})
        assert resp.status_code == 200, resp.text
    wrong = openai.OpenAI(base_url=f"{keyed.http_url}/v1", api_key="sk-wrong",
                          max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        wrong.responses.create(model="json", input="hi")


def test_function_tools_and_the_follow_up_turn(keyed_sdk: openai.OpenAI,
                                               upstream: ChatWireUpstream) -> None:
    first = keyed_sdk.responses.create(model="tools", input="Weather in Paris?",
                                       tools=[WEATHER], tool_choice="auto",
                                       parallel_tool_calls=False)
    _valid(first)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(first.output) == 1 and len(calls) == 1
    call = calls[0]
    assert (call.name, call.call_id, json.loads(call.arguments)) == \
        ("get_weather", "call_w1", {"city": "Paris"})
    assert call.status == "completed" and first.output_text == ""
    assert first.usage is not None and first.usage.input_tokens_details.cached_tokens == 4
    assert first.usage.output_tokens_details.reasoning_tokens == 2
    assert first.tools[0].name == "get_weather" and first.parallel_tool_calls is False
    sent = upstream.requests["tools"][-1]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": WEATHER["parameters"], "strict": True}}]
    assert sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is False

    second = keyed_sdk.responses.create(
        model="tools", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
        input=[{"role": "user", "content": "Weather in Paris?"},
               *first.output,  # the SDK's own items, sent back as they are
               {"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"sky": "sunny"})}])
    assert second.output_text == "Sunny in Paris."
    sent = upstream.requests["tools"][-1]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_w1", "type": "function",
            "function": {"name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": "call_w1", "content": '{"sky": "sunny"}'}]


def test_text_and_a_call_in_one_answer(keyed_sdk: openai.OpenAI) -> None:
    reply = keyed_sdk.responses.create(model="text-and-tool", input="go", tools=[WEATHER])
    assert [item.type for item in reply.output] == ["message", "function_call"]
    assert reply.output_text == "Let me look."
    _valid(reply)


def test_json_schema_and_json_object(keyed_sdk: openai.OpenAI,
                                     upstream: ChatWireUpstream) -> None:
    reply = keyed_sdk.responses.create(model="json", input="the answer?",
                                       text={"format": ANSWER})
    assert json.loads(reply.output_text) == {"answer": 42}
    assert reply.text is not None and reply.text.format is not None
    assert reply.text.format.type == "json_schema"
    assert upstream.requests["json"][-1]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "answer", "strict": True,
                                               "schema": ANSWER["schema"]}}
    keyed_sdk.responses.create(model="json", input="the answer?",
                               text={"format": {"type": "json_object"}})
    assert upstream.requests["json"][-1]["response_format"] == {"type": "json_object"}

    class Answer(pydantic.BaseModel):
        answer: int

    parsed = keyed_sdk.responses.parse(model="json", input="the answer?", text_format=Answer)
    assert parsed.output_parsed == Answer(answer=42)


def test_the_request_as_the_upstream_reads_it(keyed_sdk: openai.OpenAI,
                                              upstream: ChatWireUpstream) -> None:
    keyed_sdk.responses.create(model="json", instructions="you are exact", input="q",
                               max_output_tokens=50, temperature=0.2, top_p=0.5,
                               metadata={"a": "b"}, user="u-1",
                               reasoning={"effort": "low"},
                               extra_body={"seed": 3})
    sent = upstream.requests["json"][-1]
    assert sent["messages"] == [{"role": "system", "content": "you are exact"},
                                {"role": "user", "content": "q"}]
    assert sent["max_completion_tokens"] == 50 and sent["seed"] == 3
    assert (sent["temperature"], sent["top_p"], sent["user"]) == (0.2, 0.5, "u-1")
    assert sent["reasoning_effort"] == "low"
    assert not {"input", "instructions", "max_output_tokens", "reasoning", "text",
                "store"} & set(sent)


def test_a_streamed_tool_call(keyed: RunningMesh, keyed_sdk: openai.OpenAI) -> None:
    events = _events(keyed, {"model": "text-and-tool", "input": "go", "tools": [WEATHER]},
                     key=MASTER)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    added = events[7]
    assert added["output_index"] == 1
    assert (added["item"]["type"], added["item"]["name"], added["item"]["call_id"]) == \
        ("function_call", "get_weather", "call_w1")
    assert events[12]["arguments"] == '{"city": "Paris"}'
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["usage"]["total_tokens"] == 19

    pieces: list[str] = []
    with keyed_sdk.responses.stream(model="tools", input="Weather?",
                                    tools=[WEATHER]) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                pieces.append(event.delta)
        response = stream.get_final_response()
    assert pieces == ['{"city":', ' "Par', 'is"}']
    call = response.output[0]
    assert call.type == "function_call" and call.arguments == '{"city": "Paris"}'
    assert call.parsed_arguments == {"city": "Paris"}  # strict: the SDK parses them


def test_an_error_after_the_first_byte_is_in_band(keyed: RunningMesh,
                                                  keyed_sdk: openai.OpenAI) -> None:
    events = _events(keyed, {"model": "dropping", "input": "hi"}, key=MASTER)
    assert "partial" in [e.get("delta") for e in events]
    error, failed = events[-2:]
    assert error["type"] == "error" and error["message"] and error["error"]["message"]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "server_error"
    with pytest.raises(openai.APIError):
        list(keyed_sdk.responses.create(model="dropping", input="hi", stream=True))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_caller_hanging_up_cancels_the_call(keyed: RunningMesh, upstream: ChatWireUpstream,
                                              stream: bool) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            call = asyncio.ensure_future(client.post(
                f"{keyed.http_url}/v1/responses", headers={"authorization": f"Bearer {MASTER}"},
                json={"model": "silent", "input": "hi", "stream": stream}))
            assert await asyncio.to_thread(upstream.arrived.acquire, timeout=60), \
                "the request never reached the upstream"
            call.cancel()  # the caller hangs up
            with pytest.raises(asyncio.CancelledError):
                await call
        assert await asyncio.to_thread(upstream.hung_up.acquire, timeout=60), \
            "the upstream request stayed open"
    asyncio.run(run())


def test_the_openapi_document_describes_the_door() -> None:
    post = OPENAPI["paths"]["/v1/responses"]["post"]
    assert set(post["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    request = OPENAPI["components"]["schemas"]["ResponseRequest"]
    assert {"model", "input", "instructions", "tools", "text", "stream"} <= \
        set(request["properties"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
def test_the_door_survives_fuzzing(mesh: RunningMesh, mode: GenerationMode) -> None:
    """Schemathesis from the shim's own document, as tests/bridges/test_fuzz_shim.py fuzzes
    the other doors: no 5xx, a documented status and body, OpenAI's error body, and an
    x-request-id, whatever the body (half of them to the echo model, none streamed)."""
    operation = schemathesis.openapi.from_dict(OPENAPI)["/v1/responses"]["POST"]

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode), use_echo=st.booleans())
    def run(case: schemathesis.Case, use_echo: bool) -> None:
        if isinstance(case.body, dict):
            case.body["stream"] = False
            if use_echo:
                case.body["model"] = "echo/x"
        with requests.Session() as http:
            response = case.call(base_url=mesh.http_url, session=http, timeout=20)
        request = case.as_curl_command()
        assert response.status_code < 500, f"{request}\n-> {response.text}"
        assert response.headers.get("x-request-id"), response.headers
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, error
        case.validate_response(response, checks=CHECKS)

    run()
