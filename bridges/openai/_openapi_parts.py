"""The building blocks of the shim's OpenAPI document (openapi.py, _openapi_keys.py):
references, OpenAI's error responses by status, objects, and the number schemas."""

from __future__ import annotations

from typing import Any

__all__ = ["AGE", "CALL_ERRORS", "ERROR_STATUSES", "GET_ERRORS", "JSON_OBJECT",
           "REQUEST_ID_HEADER", "SECONDS", "errors", "nullable", "obj", "ref", "response"]

_REF = "#/components/schemas/"


def ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


REQUEST_ID_HEADER = {"x-request-id": {"$ref": "#/components/headers/RequestId"}}

#: Statuses an error can have (errors.STATUS_TABLE, 413 for oversized bodies, 415 for
#: compressed ones, 502 for a failing provider), with what they mean here.
ERROR_STATUSES: dict[str, str] = {
    "400": "Invalid request (`invalid_request_error`): a malformed body or field (`param` "
           "names it), or a failed precondition such as key management while no master "
           "key is configured (`code` `KeysDisabled`).",
    "401": "Missing or unknown key (`authentication_error`), answered before anything of "
           "the request's body or query is checked.",
    "403": "The key may not use this model or operation (`permission_error`).",
    "404": "Unknown model (`not_found_error`, code `model_not_found`) or key.",
    "408": "The call's deadline passed (`timeout_error`).",
    "409": "Conflict (`conflict_error`): e.g. a `key_alias` another key has (code "
           "`DuplicateKeyAlias`).",
    "413": "The request body exceeds the shim's limit (code `request_too_large`).",
    "415": "The request body is compressed (code `unsupported_content_encoding`).",
    "429": "Rate limit or budget exhausted (`rate_limit_error`); may carry `retry-after`.",
    "500": "A server bug (`api_error`).",
    "501": "The service is not implemented by this mesh (`not_implemented_error`).",
    "502": "The upstream provider failed or answered garbage (`upstream_error`).",
    "503": "The mesh or the provider is unavailable (`service_unavailable_error`).",
}


def response(schema: dict[str, Any], description: str,
          headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "headers": {**REQUEST_ID_HEADER, **(headers or {})},
            "content": {"application/json": {"schema": schema}}}


def errors(*statuses: str) -> dict[str, Any]:
    out = {}
    for status in statuses:
        headers = ({"retry-after": {"$ref": "#/components/headers/RetryAfter"}}
                   if status in ("429", "503") else None)
        out[status] = response(ref("ErrorResponse"), ERROR_STATUSES[status], headers)
    return out


CALL_ERRORS = ("400", "401", "403", "404", "408", "409", "413", "415", "429", "500", "501",
                "502", "503")
GET_ERRORS = ("401", "403", "408", "429", "500", "501", "503")
JSON_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}


def obj(properties: dict[str, Any], required: tuple[str, ...] = (),
            additional: bool = True, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties,
                           "additionalProperties": additional, **extra}
    if required:
        out["required"] = list(required)
    return out


SECONDS = {"type": "number", "exclusiveMinimum": 0, "maximum": 315576000000}
AGE = {"type": "number", "minimum": 0, "maximum": 315576000000}
