"""Asking a model for code variants as strict JSON, and validating its answer.

The request carries the answer's shape as OpenAI's `response_format` (`json_schema`,
`variants_format`): a hosted model returns structured output, the local llama.cpp model is
held to it by grammar-constrained decoding (a base model would otherwise ramble), and a
server that refuses schemas is asked again with `json_object` by CompletionService. The
answer is validated here all the same (`parse_variants`): the shape says nothing about
whether the code parses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._events import Generation
from ._model import Item, Strategy
from .errors import GenerationFailed
from .sandbox import parse_python, utf8_safe

_MAX_TEXT = 200_000


class Complete(Protocol):
    """The injected model call: chat messages in, the assistant's text out."""

    async def __call__(self, messages: list[dict[str, str]], *, model: str,
                       temperature: float, seed: int | None,
                       response_format: dict[str, Any] | None = None) -> str: ...


@dataclass(frozen=True, slots=True)
class Variant:
    """One variant proposed by the model."""

    id: str
    title: str
    rationale: str
    code: str


def variants_prompt(items: Sequence[Item], n: int, language: str, instructions: str,
                    feedback: str = "") -> list[dict[str, str]]:
    """The chat messages asking for ``n`` variants."""
    tasks = "\n".join(f"- {item.task_id}: {item.description}" for item in items[:20])
    system = (
        "You write programs. Answer with strict JSON only, no prose and no code fences: "
        '{"variants": [{"id": str, "title": str, "rationale": str, "code": str}]}. '
        f"Each code is a complete {language} program defining solve(task, context), which "
        "returns the answer for context['input'] as JSON.")
    user = f"Tasks:\n{tasks}\n\nWrite {n} distinct variant(s)."
    if instructions:
        user += f"\n\n{instructions}"
    if feedback:
        user += f"\n\n{feedback}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_FIELDS = ("id", "title", "rationale", "code")


def variants_format(n: int) -> dict[str, Any]:
    """OpenAI's `response_format` for an answer of 1 to ``n`` variants."""
    variant = {"type": "object", "properties": {k: {"type": "string"} for k in _FIELDS},
               "required": list(_FIELDS), "additionalProperties": False}
    schema = {"type": "object", "required": ["variants"], "additionalProperties": False,
              "properties": {"variants": {"type": "array", "items": variant,
                                          "minItems": 1, "maxItems": n}}}
    return {"type": "json_schema", "json_schema": {"name": "code_variants", "schema": schema}}


def parse_variants(text: str, *, n: int, language: str) -> tuple[list[Variant], list[str]]:
    """The valid variants of a model answer and the reasons others were rejected.

    Raises ``GenerationFailed`` when the answer is not the required JSON or holds no
    valid variant.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GenerationFailed(f"answer is not JSON: {exc}") from exc
    except RecursionError:
        raise GenerationFailed("answer is JSON nested too deeply to read") from None
    raw = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        raise GenerationFailed('answer lacks a non-empty "variants" list')
    found: list[Variant] = []
    rejected: list[str] = []
    for index, entry in enumerate(raw[:n]):
        problem = _problem(entry, language, {v.id for v in found})
        if problem:
            rejected.append(f"variant {index}: {problem}")
            continue
        assert isinstance(entry, dict)
        # The answer's JSON escapes make lone surrogates: the id names runs and rankings.
        found.append(Variant(*(utf8_safe(entry[key]) for key in _FIELDS)))
    if not found:
        raise GenerationFailed("no valid variant: " + "; ".join(rejected))
    return found, rejected


def _problem(entry: object, language: str, seen: set[str]) -> str:
    if not isinstance(entry, dict):
        return "not an object"
    for key in _FIELDS:
        if not isinstance(entry.get(key), str):
            return f"{key} is not a string"
    if not entry["id"].strip() or utf8_safe(entry["id"]) in seen:
        return f"id {entry['id']!r} is empty or repeated"
    if not entry["code"].strip():
        return "code is empty"
    if language == "python":
        try:
            parse_python(entry["code"])
        except SyntaxError as exc:
            return f"code does not parse: {exc}"
    return ""


def sha256(text: str) -> str:
    """Hex SHA-256 of ``text`` in UTF-8."""
    return hashlib.sha256(text.encode()).hexdigest()


async def generate(
    complete: Complete,
    messages: list[dict[str, str]],
    *,
    n: int,
    model: str,
    temperature: float,
    seed: int | None,
    language: str,
    prefix: str = "",
) -> tuple[list[Strategy], Generation]:
    """Ask ``complete`` for variants; returns the strategies and the record.

    Never raises for a bad answer or a failing model: the record's ``error`` says why
    and no strategies are returned.
    """
    prompt_hash = sha256(json.dumps(messages, sort_keys=True))
    response = ""
    try:
        response = await complete(messages, model=model, temperature=temperature, seed=seed,
                                  response_format=variants_format(n))
        if not isinstance(response, str) or len(response) > _MAX_TEXT:
            raise GenerationFailed("answer is not text or too long")
        response = utf8_safe(response)
        variants, rejected = parse_variants(response, n=n, language=language)
    except Exception as exc:  # the model call is foreign code: record, never crash
        text = utf8_safe(response) if isinstance(response, str) else ""
        return [], Generation(model, n, temperature, prompt_hash, sha256(text),
                              error=utf8_safe(f"{type(exc).__name__}: {exc}"))
    strategies = [Strategy(name=f"{prefix}{v.id}", source=v.code, language=language)
                  for v in variants]
    return strategies, Generation(model, n, temperature, prompt_hash, sha256(response),
                                  variant_ids=tuple(s.name for s in strategies),
                                  rejected=tuple(rejected))
