"""Output control: schema-first JSON replies and their validation.

A `json_schema` response format is sent as is; an upstream that rejects it with 400 is
asked once more with `json_object` and the schema spelled out in a system message.
Replies are checked with `jsonschema` when it is installed, else with a small
validator covering the subset structured outputs use (type, properties, required,
additionalProperties, items, enum, const, anyOf/oneOf/allOf, bounds).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from .errors import InvalidRequest

__all__ = ["check_schema", "json_object_body", "json_validity", "schema_of",
           "wants_json_schema"]

_SCHEMA_PARAM = "response_format.json_schema.schema"

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def wants_json_schema(body: dict[str, Any]) -> bool:
    """Whether the body asks for `response_format: json_schema`."""
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") == "json_schema"


def schema_of(fmt: Any) -> dict[str, Any] | None:
    """The JSON schema inside an OpenAI `json_schema` response format."""
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema") or {}
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def check_schema(schema: dict[str, Any]) -> None:
    """InvalidRequest unless every `$ref` of `schema` leads inside it: one leading nowhere
    or off to a URL failed the call once the upstream had answered, as an INTERNAL error
    from the validator. A walk of the schema, linear in its size; the rest of what makes a
    schema one is found by `validate` on the reply (checking a schema against the
    metaschema up front took 9.6 s of the event loop for a 3.5 MB schema)."""
    for ref in _refs(schema):
        if not _resolves(schema, ref):
            raise InvalidRequest(f"{_SCHEMA_PARAM}: $ref {ref!r} leads nowhere inside the "
                                 "schema (references are followed inside it only: '#' or "
                                 "'#/...')"[:500], param=_SCHEMA_PARAM)


def _refs(node: Any) -> Iterator[Any]:
    """Every `$ref` value in a schema."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolves(root: Any, ref: Any) -> bool:
    """Whether `ref` is a JSON pointer into `root` ('#', '#/a/0/b') that leads somewhere."""
    if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
        return False
    target = root
    for part in ref[2:].split("/") if ref != "#" else ():
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return False
    return True


def json_object_body(body: dict[str, Any]) -> dict[str, Any]:
    """The fallback body: `json_object` plus the schema as a leading system message."""
    schema = schema_of(body.get("response_format")) or {}
    note = {"role": "system", "content": "Reply with a single JSON object matching this "
            f"JSON schema, and nothing else: {json.dumps(schema)}"}
    return {**body, "response_format": {"type": "json_object"},
            "messages": [note, *body.get("messages", ())]}


def json_validity(response: dict[str, Any], fmt: Any) -> bool | None:
    """None unless JSON was asked for; else whether every choice is valid JSON
    (an object for `json_object`) matching the schema, if any."""
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return None
    schema = schema_of(fmt)
    choices = response.get("choices") or ()
    if not choices:
        return False
    if not isinstance(choices, list):
        return False
    for choice in choices:  # a reply of another shape is no valid JSON (nor a crash)
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        try:
            value = json.loads(content) if isinstance(content, str) else None
        except (ValueError, RecursionError):  # nested too deeply for any reader: not valid
            return False
        if schema is None:
            if not isinstance(value, dict):
                return False
        elif not validate(value, schema):
            return False
    return True


def validate(value: Any, schema: dict[str, Any]) -> bool:
    """Whether `value` matches `schema` (jsonschema if installed, else the subset)."""
    try:
        jsonschema: Any = importlib.import_module("jsonschema")
    except ImportError:
        jsonschema = None
    try:
        if jsonschema is None:
            return _valid(value, schema, schema)
        return not any(True for _ in jsonschema.Draft202012Validator(schema).iter_errors(value))
    except RecursionError:  # a schema that refers to itself without end ({"$ref": "#"})
        return False
    except Exception as exc:  # the schema is none (`"type": 5`): the caller's, not ours
        raise InvalidRequest(f"{_SCHEMA_PARAM}: not a JSON schema a reply can be checked "
                             f"against: {type(exc).__name__}: {exc}"[:500],
                             param=_SCHEMA_PARAM) from None


def _valid(value: Any, schema: Any, root: dict[str, Any]) -> bool:
    if not isinstance(schema, dict):
        return schema is not False
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _valid(value, target, root)
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES.get(k, lambda _v: True)(value) for k in kinds):
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if "allOf" in schema and not all(_valid(value, s, root) for s in schema["allOf"]):
        return False
    if "anyOf" in schema and not any(_valid(value, s, root) for s in schema["anyOf"]):
        return False
    if "oneOf" in schema and sum(_valid(value, s, root) for s in schema["oneOf"]) != 1:
        return False
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        if any(name not in value for name in schema.get("required") or ()):
            return False
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                if not _valid(item, props[name], root):
                    return False
            elif extra is False or (isinstance(extra, dict) and not _valid(item, extra, root)):
                return False
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict) and not all(_valid(v, items, root) for v in value):
            return False
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1e18):
            return False
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1e18):
            return False
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            return False
        if "maximum" in schema and value > schema["maximum"]:
            return False
    return True
