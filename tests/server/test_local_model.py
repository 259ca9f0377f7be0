"""Real generations from the embedded local model (Gemma 3 270M GGUF, llama.cpp), through
CompletionService: a base model, so the prompt is a plain continuation."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import openai
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import ScillmClient


async def test_local_gemma_continues_text(mesh: RunningMesh) -> None:
    request = {"model": "local/gemma", "max_tokens": 8, "temperature": 0,
               "messages": [{"role": "user", "content": "The capital of France is"}]}
    async with ScillmClient(mesh.grpc_target) as client:
        reply = await client.completion.create(request, timeout=300)
        text = reply.choices[0].message.content[0].text
        assert text.strip()
        assert 0 < reply.usage.completion_tokens <= 8
        assert reply.routing.provider == "local"
        chunks = [e async for e in client.completion.stream(request, timeout=300)]
    streamed = "".join(c.delta.content for e in chunks if e.HasField("chunk")
                       for c in e.chunk.choices)
    assert chunks[-1].HasField("end") and streamed.strip()
    assert chunks[-1].end.usage.completion_tokens == reply.usage.completion_tokens
    assert chunks[-1].end.usage.prompt_tokens == reply.usage.prompt_tokens
    assert streamed == text  # temperature 0: the same continuation, streamed


def test_length_is_the_callers_or_the_deployments_never_llama_cpp_16(tmp_path: Path) -> None:
    """Without max_tokens the model writes until it stops or hits the deployment's cap
    (llama.cpp alone would stop at 16); `response_format` constrains decoding to JSON."""
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": "gemma-40", "litellm_params": {
        "model": "local/gemma3-270m", "max_tokens": 40}}]}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, services=("completion",)))
    try:
        sdk = openai.OpenAI(base_url=f"{running.http_url}/v1", api_key="x", max_retries=0,
                            timeout=300)
        counted = sdk.chat.completions.create(model="gemma-40", temperature=0, messages=[
            {"role": "user", "content": "Count: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"}])
        assert counted.usage is not None and counted.usage.completion_tokens == 40
        assert counted.choices[0].finish_reason == "length"
        answer = {"type": "object", "properties": {"answer": {"type": "integer"}},
                  "required": ["answer"]}
        # Whole numbers in a schema (minItems) reach llama.cpp's converter as integers.
        numbers = {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer"}}
        for prompt, schema in (("The answer as JSON:", answer),
                               ("Two numbers as a JSON list:", numbers)):
            shaped = sdk.chat.completions.create(
                model="gemma-40", temperature=0, max_tokens=30,
                messages=[{"role": "user", "content": prompt}],
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "shape", "schema": schema}})
            jsonschema.validate(json.loads(shaped.choices[0].message.content or ""), schema)
    finally:
        running.stop()


@pytest.mark.parametrize("schema", [
    {"type": "array", "minItems": "x", "items": {"type": "integer"}}, {"type": 5},
    {"type": "object", "properties": 3}, {"$ref": "#/nowhere"}])
def test_a_schema_llama_cpp_cannot_read_is_a_400(schema: dict[str, object]) -> None:
    from scillm.server.completion._local import _cached_grammar, grammar_for
    from scillm.server.completion.errors import InvalidRequest

    _cached_grammar.cache_clear()
    with pytest.raises(InvalidRequest) as raised:
        grammar_for({"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert raised.value.param == "response_format.json_schema.schema"


def test_a_large_schema_is_compiled_for_its_call_not_kept() -> None:
    """The local model's grammar cache kept 64 grammars by schema text: 64 schemas of
    megabytes each stayed in memory. A schema past 64 KiB is compiled and not kept."""
    from scillm.server.completion._local import _cached_grammar, grammar_for

    _cached_grammar.cache_clear()
    small = {"type": "object", "properties": {"a": {"type": "integer"}}}
    large = {"type": "object", "properties": {
        f"p{i}": {"type": "integer", "description": "d" * 20_000} for i in range(4)}}
    for schema in (small, small, large, large):
        assert grammar_for({"type": "json_schema", "json_schema": {"name": "s",
                                                                   "schema": schema}})
    info = _cached_grammar.cache_info()
    assert (info.currsize, info.hits) == (1, 1)
