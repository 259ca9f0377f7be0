"""The `/key/*` part of the shim's OpenAPI document (openapi.py): virtual keys in
LiteLLM's shape (bridges/openai/keys.py, bridges/seed/keys.py)."""

from __future__ import annotations

from typing import Any

from ._openapi_parts import CALL_ERRORS, SECONDS, errors, nullable, obj, ref, response

__all__ = ["KEY_INFO", "KEY_PATHS"]

KEY_INFO = obj({
    "key_id": {"type": "string"}, "key_alias": {"type": "string"},
    "models": {"type": "array", "items": {"type": "string"}},
    "expires": nullable({"type": "string"}),
    "max_budget": nullable({"type": "number"}), "spend": {"type": "number"},
    "rpm_limit": nullable({"type": "integer"}), "tpm_limit": nullable({"type": "integer"}),
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    "created_at": {"type": "string"},
})

KEYS_OFF = (" Without a configured master key, key management answers 400 "
             "(`invalid_request_error`, code `KeysDisabled`).")

#: A key's fields as /key/generate and /key/update take them.
KEY_FIELDS: dict[str, Any] = {
    "key_alias": nullable({
        "type": "string", "maxLength": 256,
        "description": "names one key: an alias another key has is a 409 (code "
                       "`DuplicateKeyAlias`, param `key_alias`); null or empty: no alias, "
                       "which any number of keys share"}),
    "models": {"type": "array", "maxItems": 1024,
               "items": {"type": "string", "minLength": 1, "maxLength": 256}},
    "duration": {"anyOf": [
        {"type": "string", "pattern": r"^\s*\d{1,5}(\.\d+)?\s*[smhdw]\s*$",
         "description": "e.g. 30d, 12h, 15m, 45s"},
        {**SECONDS, "description": "seconds"}, {"type": "null"},
        {"const": "-1", "description": "no expiry, as null (LiteLLM's deprecated form)"}]},
    "max_budget": nullable({"type": "number", "exclusiveMinimum": 0}),
    "rpm_limit": nullable({"type": "integer", "minimum": 1, "maximum": 2**63 - 1}),
    "tpm_limit": nullable({"type": "integer", "minimum": 1, "maximum": 2**63 - 1}),
    "metadata": {"type": "object", "maxProperties": 64,
                 "description": "at most 64 entries and 16 KiB of keys and values (UTF-8; a "
                                "value that is not a string counts as its JSON)"},
}

#: The key routes, as the document's `paths` holds them.
KEY_PATHS: dict[str, Any] = {
    "/key/generate": {"post": {
        "operationId": "generateKey",
        "summary": "A new virtual key (LiteLLM's shape)." + KEYS_OFF,
        "requestBody": {"required": True, "content": {"application/json": {"schema": obj({
            **KEY_FIELDS,
        }, description="null or a field left out: no limit; an explicit 0 is refused "
                       "(LiteLLM reads it as nothing allowed); other fields are refused "
                       "by name unless they only describe the key (user_id, team_id, "
                       "tags, ...) or set nothing")}}},
        "responses": {"200": response({"allOf": [ref("KeyInfo"), obj(
            {"key": {"type": "string"}}, ("key",))]}, "the key (shown once)"),
            **errors(*CALL_ERRORS)},
    }},
    "/key/info": {"get": {
        "operationId": "keyInfo",
        "summary": "A key's description (without `key`: the caller's own)." + KEYS_OFF,
        "parameters": [{"name": "key", "in": "query", "required": False,
                        "schema": {"type": "string"}}],
        "responses": {"200": response(obj({"key": {"type": "string"},
                                            "info": ref("KeyInfo")}, ("key", "info")),
                                   "the key"),
                      **errors(*CALL_ERRORS)},
    }},
    "/key/update": {"post": {
        "operationId": "updateKey",
        "summary": "Change a key: the fields sent change, the others (its spend among "
                   "them) stay; the next call with the key sees the change (on "
                   "PostgreSQL, other processes within 2 s)." + KEYS_OFF,
        "requestBody": {"required": True, "content": {"application/json": {"schema": obj({
            "key": {"type": "string", "minLength": 1,
                    "description": "the key to change: its secret or its key_id"},
            **KEY_FIELDS,
            "models": nullable(KEY_FIELDS["models"]),
            "metadata": nullable({**KEY_FIELDS["metadata"],
                                   "description": "replaces the key's whole metadata; "
                                   + KEY_FIELDS["metadata"]["description"]}),
        }, ("key",), description="a field sent as null goes back to none (no alias, "
                                 "every model, no expiry, no limit, no metadata); "
                                 "`duration` is counted from now; an explicit 0 limit, "
                                 "`spend` and the fields /key/generate refuses are a "
                                 "400, as is a body changing nothing; a key stored with "
                                 "more metadata or models than a key may now hold is a "
                                 "400 unless the update sends that field too")}}},
        "responses": {"200": response({"allOf": [ref("KeyInfo"), obj(
            {"key": {"type": "string", "description": "the key's key_id"}}, ("key",))]},
            "the key as changed (never its secret)"),
            **errors(*CALL_ERRORS)},
    }},
    "/key/list": {"get": {
        "operationId": "listKeys",
        "summary": "The keys, a page at a time, oldest first, without their secrets "
                   "(master key only)." + KEYS_OFF,
        "parameters": [
            {"name": "page", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1,
                        "default": 1}},
            {"name": "size", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}},
            {"name": "key_alias", "in": "query", "required": False,
             "schema": {"type": "string"}, "description": "only the key of this alias"},
            {"name": "return_full_object", "in": "query", "required": False,
             "schema": {"type": "boolean", "default": False},
             "description": "the keys' descriptions rather than their key_ids"}],
        "responses": {"200": response(obj({
            "keys": {"type": "array", "items": {"anyOf": [{"type": "string"},
                                                          ref("KeyInfo")]}},
            "total_count": {"type": "integer", "minimum": 0},
            "current_page": {"type": "integer", "minimum": 1},
            "total_pages": {"type": "integer", "minimum": 0},
        }, ("keys", "total_count", "current_page", "total_pages")), "a page of keys"),
            **errors(*CALL_ERRORS)},
    }},
    "/key/delete": {"post": {
        "operationId": "deleteKeys",
        "summary": "Delete keys." + KEYS_OFF,
        "requestBody": {"required": True, "content": {"application/json": {"schema": obj({
            "keys": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        }, ("keys",))}}},
        "responses": {"200": response(obj({"deleted_keys": {
            "type": "array", "items": {"type": "string"}}}, ("deleted_keys",)),
            "the deleted keys"),
            **errors(*CALL_ERRORS)},
    }},
}
