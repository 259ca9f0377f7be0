"""JSON mode: a final answer must parse as JSON (and match a `json_schema` response format);
one repair round asks the model to fix an answer that does not."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema  # type: ignore[import-untyped]

from ._records import Message

__all__ = ["is_json_mode", "is_repair_request", "json_problem", "repair_request"]

_FORMATS = ("json_object", "json_schema")
_REPAIR = "Your final answer is not valid JSON"


def _schema(fmt: Mapping[str, Any]) -> dict[str, Any] | None:
    spec = fmt.get("json_schema") if fmt.get("type") == "json_schema" else None
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    return dict(schema) if isinstance(schema, Mapping) else None


def json_problem(fmt: Mapping[str, Any] | None, answer: str) -> str | None:
    """Why `answer` fails the JSON response format `fmt`; None when it passes or when
    `fmt` asks for no JSON. `json_object` wants an object; `json_schema` its schema."""
    if not fmt or fmt.get("type") not in _FORMATS:
        return None
    try:
        value = json.loads(answer)
    except ValueError as exc:
        return f"it does not parse ({exc})"
    except RecursionError:
        return "it nests too deeply to read"
    schema = _schema(fmt)
    if schema is None:
        return None if isinstance(value, dict) else "it is not a JSON object"
    try:
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(value))
    except jsonschema.exceptions.SchemaError as exc:
        return f"the response_format schema is invalid: {exc.message}"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return f"it does not match the schema at {where}: {error.message}"


def is_json_mode(fmt: Mapping[str, Any] | None) -> bool:
    """Whether `fmt` asks for JSON."""
    return fmt is not None and fmt.get("type") in _FORMATS


def repair_request(problem: str) -> Message:
    """The message asking for the one repair round."""
    return {"role": "user", "content": f"{_REPAIR}: {problem}. Reply again with only the "
                                       "corrected JSON, nothing else."}


def is_repair_request(message: Message | None) -> bool:
    """Whether `message` is the repair request (so the repair round has been asked)."""
    return message is not None and message.get("role") == "user" and str(
        message.get("content") or "").startswith(_REPAIR)
