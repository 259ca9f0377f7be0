"""A chat request as the sidecar reads it: checked, and turned into a CLI job."""

from __future__ import annotations

import re
from typing import Any

from ..completion import InvalidRequest
from ..completion import _request as completion_request
from ..completion._provider import text_of
from ._cli import CodexJob
from .errors import BadRequest

__all__ = ["JSON_INSTRUCTION", "check", "job_of", "plain_model", "prompt_of"]

#: Appended to the prompt for `response_format: {"type": "json_object"}` (the CLI has no
#: JSON mode; a JSON schema goes to `--output-schema` instead).
JSON_INSTRUCTION = "Answer with one JSON object and nothing else."
_EFFORT = re.compile(r"[a-z]{1,16}")
#: Model names that mean "the CLI's configured default": no --model flag.
_DEFAULT_MODELS = ("", "default", "codex")


def check(body: Any) -> tuple[str, list[dict[str, Any]]]:
    """The model name and messages of an OpenAI chat request (checked as the Completion
    engine checks one), or BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        model = completion_request.check(body)
    except InvalidRequest as exc:
        raise BadRequest(exc.message, param=exc.param) from None
    return model, body["messages"]


def plain_model(model: str) -> str:
    """The model name without a `codex-agent/` or `codex/` prefix."""
    for prefix in ("codex-agent/", "codex/"):
        if model.startswith(prefix):
            return model[len(prefix):]
    return model


def prompt_of(messages: list[dict[str, Any]]) -> str:
    """The conversation as one prompt: system and user text as is, the others labelled."""
    labels = {"assistant": "Assistant: ", "tool": "Tool result: "}
    parts = []
    for message in messages:
        text = text_of(message.get("content")).strip()
        if text:
            parts.append(labels.get(message["role"], "") + text)
    return "\n\n".join(parts)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message ("" when there is none)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def job_of(body: dict[str, Any], model: str, messages: list[dict[str, Any]]) -> CodexJob:
    """The CLI job for a request: prompt, model, reasoning effort, output schema."""
    prompt = prompt_of(messages)
    if not prompt:
        raise BadRequest("the messages hold no text", param="messages")
    reasoning = body.get("reasoning")
    effort = (reasoning.get("effort") if isinstance(reasoning, dict) else None) \
        or body.get("reasoning_effort")
    if effort is not None and not (isinstance(effort, str) and _EFFORT.fullmatch(effort)):
        raise BadRequest("reasoning effort must be a word such as low, medium or high",
                         param="reasoning_effort")
    schema = None
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON object",
                             param="response_format")
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        prompt = f"{prompt}\n\n{JSON_INSTRUCTION}"
    cli_model = plain_model(model)
    return CodexJob(prompt=prompt, model=None if cli_model in _DEFAULT_MODELS else cli_model,
                    effort=effort, output_schema=schema)
