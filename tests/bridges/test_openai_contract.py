"""The OpenAI door against OpenAI's own contract.

The schemas are vendored from OpenAI's published OpenAPI document (github.com/openai/
openai-openapi, openapi.json, the commit and version named in the file): the four response
schemas the door serves (`CreateChatCompletionResponse`, `CreateChatCompletionStreamResponse`,
`ListModelsResponse`, `ErrorResponse`) and every schema they reference. The document is
OpenAPI 3.1, whose schemas are JSON Schema 2020-12, except that a few fields still carry 3.0's
`nullable: true`; those are read as "or null", as 3.0 meant.

Every reply shape is checked: plain, `n`, tool calls, a JSON-schema answer, a run behind a
model name (`certainly/smt`), streamed with and without usage, the models list, and error
bodies.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from meshutil import RunningMesh, mesh_settings, start_mesh
from scripted_upstream import ScriptedUpstream

SCHEMAS = Path(__file__).parent / "openai_schemas" / "openai-openapi-2.3.0.json"


def _nullable(node: Any) -> Any:
    """3.0's `nullable: true` as 2020-12: the same schema, or null."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.pop("nullable", False):
        kind = node.get("type")
        if isinstance(kind, str) and "$ref" not in node:
            node["type"] = [kind, "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            return {"anyOf": [node, {"type": "null"}]}
    return node


def _validator(root: str) -> Draft202012Validator:
    document = json.loads(SCHEMAS.read_text())
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "components": _nullable(copy.deepcopy(document["components"])),
              "$ref": f"#/components/schemas/{root}"}
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


VALIDATORS = {root: _validator(root) for root in (
    "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
    "ListModelsResponse", "ErrorResponse")}


def conforms(root: str, body: Any) -> None:
    errors = sorted(VALIDATORS[root].iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def test_the_vendored_document_is_named_and_catches_a_missing_field() -> None:
    document = json.loads(SCHEMAS.read_text())
    assert document["source"].startswith("https://github.com/openai/openai-openapi")
    assert len(document["commit"]) == 40 and document["version"] == "2.3.0"
    good = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": "hi", "refusal": None}}]}
    conforms("CreateChatCompletionResponse", good)
    bad = copy.deepcopy(good)
    del bad["choices"][0]["message"]["refusal"]
    with pytest.raises(AssertionError, match="refusal"):
        conforms("CreateChatCompletionResponse", bad)


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A mesh whose `tool` model answers with a tool call from a scripted upstream."""
    call = {"content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}]}
    upstream = ScriptedUpstream([call]).start()
    tmp = tmp_path_factory.mktemp("contract")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({"model_list": [
        {"model_name": "tool", "litellm_params": {"model": "openai/tool",
                                                  "api_base": upstream.url, "api_key": "x"}},
        {"model_name": "echo/x", "litellm_params": {"model": "echo/x"}}]}))
    running: RunningMesh = start_mesh(mesh_settings(tmp, config_path=config))
    try:
        yield running.http_url
    finally:
        running.stop()
        upstream.stop()


def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("body", [
    {"model": "echo/x", "messages": _user("hello there")},
    {"model": "echo/x", "messages": _user("one two"), "n": 2, "max_tokens": 1},
    {"model": "tool", "messages": _user("add 1 and 2"), "tools": [{"type": "function",
     "function": {"name": "add", "parameters": {"type": "object", "properties": {
         "a": {"type": "integer"}, "b": {"type": "integer"}}}}}]},
    {"model": "echo/x", "messages": _user('{"answer": 42}'), "response_format": {
        "type": "json_schema", "json_schema": {"name": "a", "schema": {
            "type": "object", "properties": {"answer": {"type": "integer"}}}}}},
    {"model": "certainly/smt", "messages": _user("check"), "items": [
        {"preamble": "(declare-const y Int)", "statement": "(= y y)"}]},
], ids=["plain", "n", "tools", "json_schema", "routed-run"])
def test_unary_replies_conform(door: str, body: dict[str, Any]) -> None:
    reply = _post(door, body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    conforms("CreateChatCompletionResponse", data)
    assert all("refusal" in c["message"] for c in data["choices"])


@pytest.mark.parametrize("usage", [False, True], ids=["no-usage", "usage"])
@pytest.mark.parametrize("model", ["echo/x", "tool", "certainly/smt"])
def test_stream_chunks_conform(door: str, model: str, usage: bool) -> None:
    body: dict[str, Any] = {"model": model, "messages": _user("a b c"), "stream": True}
    if model.startswith("certainly"):  # a run behind a model name
        body["items"] = [{"preamble": "(declare-const y Int)", "statement": "(= y y)"}]
    if usage:
        body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{door}/v1/chat/completions", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        conforms("CreateChatCompletionStreamResponse", chunk)
    assert any(c.get("usage") for c in chunks) is usage


def test_models_conform(door: str) -> None:
    reply = httpx.get(f"{door}/v1/models", timeout=10)
    conforms("ListModelsResponse", reply.json())


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "no-such-model", "messages": _user("x")}, 404),
    ({"model": "echo/x", "messages": "not a list"}, 400),
    ({"model": "echo/x", "messages": _user("x"), "n": 0}, 400),
])
def test_error_bodies_conform(door: str, body: dict[str, Any], status: int) -> None:
    reply = _post(door, body)
    assert reply.status_code == status, reply.text
    conforms("ErrorResponse", reply.json())
