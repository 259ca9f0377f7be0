"""The shim's OpenAPI 3.1 document, written by hand from app.py and clients/openai_wire.py.

`OPENAPI` is served as `GET /openapi.json` and is what tests/bridges/test_fuzz_shim.py
fuzzes the live shim against, so it must stay true to the code:

- a chat request takes every field `openai_wire.request_to_proto` translates, plus any
  other key (passed to the provider in `extra_body`); bounds are the servicer's checks;
- every error is OpenAI's body `{"error": {"message", "type", "param", "code"}}` with the
  status of `errors.STATUS_TABLE`;
- every response carries `x-request-id`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_REQUEST_ID_HEADER = {"x-request-id": {"$ref": "#/components/headers/RequestId"}}

#: Statuses an error can have (errors.STATUS_TABLE, 413 for oversized bodies, 415 for
#: compressed ones, 502 for a failing provider), with what they mean here.
_ERRORS: dict[str, str] = {
    "400": "Invalid request (`invalid_request_error`): a malformed body or field (`param` "
           "names it), or a failed precondition such as key management while no master "
           "key is configured (`code` `KeysDisabled`).",
    "401": "Missing or unknown key (`authentication_error`).",
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


def _json(schema: dict[str, Any], description: str,
          headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "headers": {**_REQUEST_ID_HEADER, **(headers or {})},
            "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    out = {}
    for status in statuses:
        headers = ({"retry-after": {"$ref": "#/components/headers/RetryAfter"}}
                   if status in ("429", "503") else None)
        out[status] = _json(_ref("ErrorResponse"), _ERRORS[status], headers)
    return out


_CALL_ERRORS = ("400", "401", "403", "404", "408", "409", "413", "415", "429", "500", "501",
                "502", "503")
_GET_ERRORS = ("401", "403", "408", "429", "500", "501", "503")
_JSON_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}


def _object(properties: dict[str, Any], required: tuple[str, ...] = (),
            additional: bool = True, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties,
                           "additionalProperties": additional, **extra}
    if required:
        out["required"] = list(required)
    return out


def _content_parts() -> dict[str, Any]:
    def part(kind: str, value: dict[str, Any]) -> dict[str, Any]:
        return _object({"type": {"const": kind}, kind: value}, ("type", kind))

    return {"oneOf": [
        part("text", {"type": "string"}),
        part("image_url", {"anyOf": [
            {"type": "string"},
            _object({"url": {"type": "string"}, "detail": {"type": "string"}}, ("url",))]}),
        part("input_audio", _object({"data": {"type": "string"}, "format": {"type": "string"}},
                                    ("data", "format"))),
        part("file", _object({"file_id": {"type": "string"}, "file_data": {"type": "string"},
                              "filename": {"type": "string"}})),
        part("refusal", {"type": "string"}),
    ]}


_TOOL_CALL = _object({
    "id": {"type": "string"},
    "type": {"const": "function"},
    "function": _object({"name": {"type": "string"},
                         "arguments": {"type": "string",
                                       "description": "JSON text (an object is encoded)"}},
                        ("name", "arguments")),
}, ("id", "function"))

_MESSAGE = _object({
    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"anyOf": [{"type": "null"}, {"type": "string"},
                          {"type": "array", "items": _ref("ContentPart")}]},
    "name": {"type": "string"},
    "tool_calls": {"type": "array", "items": _ref("ToolCall")},
    "tool_call_id": {"type": "string"},
    "reasoning_content": {"type": "string"},
    "refusal": _nullable({"type": "string"}),
}, ("role",))

_TOOL = _object({
    "type": {"const": "function"},
    "function": _object({
        "name": {"type": "string"},
        "description": {"type": "string"},
        "parameters": {**_JSON_OBJECT, "description": "JSON Schema of the arguments"},
        "strict": {"type": "boolean"},
    }, ("name",)),
}, ("function",))

_TOOL_CHOICE = {"anyOf": [
    {"enum": ["auto", "none", "required"]},
    _object({"type": {"const": "function"},
             "function": _object({"name": {"type": "string"}}, ("name",))}, ("function",)),
]}

_RESPONSE_FORMAT = {"oneOf": [
    _object({"type": {"const": "text"}}, ("type",)),
    _object({"type": {"const": "json_object"}}, ("type",)),
    _object({"type": {"const": "json_schema"},
             "json_schema": _object({"name": {"type": "string"},
                                     "description": {"type": "string"},
                                     "schema": _JSON_OBJECT,
                                     "strict": {"type": "boolean"}})},
            ("type", "json_schema")),
]}

_SECONDS = {"type": "number", "exclusiveMinimum": 0, "maximum": 315576000000}
_AGE = {"type": "number", "minimum": 0, "maximum": 315576000000}

#: LiteLLM's per-request cache controls; they act only where a cache is configured.
_CACHE_CONTROLS = _object({
    "no-cache": {"type": "boolean", "description": "skip the lookup (still stored)"},
    "no-store": {"type": "boolean", "description": "do not store the response"},
    "ttl": {**_SECONDS, "description": "seconds the stored response lives"},
    "s-maxage": {**_AGE, "description": "accept only a stored response this many seconds old"},
    "s-max-age": _AGE,
    "namespace": {"type": "string"},
    "use-cache": {"type": "boolean",
                  "description": "opt in (cache_params.mode: default_off) or out"},
}, additional=False, description="LiteLLM's per-request cache controls")

_ROUTING_OPTIONS = _object({
    "fallbacks": {"type": "array", "items": {"type": "string"},
                  "description": "models tried in order when the first fails"},
    "timeout_s": {**_SECONDS, "description": "per-attempt timeout (millisecond resolution)"},
    "num_retries": {"type": "integer", "minimum": 0, "maximum": 2147483647},
    "deterministic": {"type": "boolean"},
    "cache": _object({"bypass": {"type": "boolean"}, "no_store": {"type": "boolean"},
                      "ttl_s": _SECONDS, "namespace": {"type": "string"},
                      "max_age_s": _AGE, "enabled": {"type": "boolean"}}, additional=False),
    "session_id": {"type": "string", "description": "run context: session"},
    "track": {"type": "string", "description": "run context: track inside the session"},
}, additional=False, description="SciLLM's routing options; unknown keys are refused")

_INT32 = {"type": "integer", "minimum": -2147483648, "maximum": 2147483647}

_CHAT_REQUEST = _object({
    "model": {"type": "string", "minLength": 1,
              "description": "a configured model, or codeworld/..., agent/<model>, "
                             "certainly/..., lean4/... (runs of the other services)"},
    "messages": {"type": "array", "minItems": 1, "items": _ref("Message")},
    "tools": {"type": "array", "items": _ref("Tool")},
    "tool_choice": _TOOL_CHOICE,
    "response_format": _RESPONSE_FORMAT,
    "n": {"type": "integer", "minimum": 1, "maximum": 128},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 2147483647},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2147483647},
    "logprobs": {"type": "boolean"},
    "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
    "reasoning_effort": {"type": "string"},
    "user": {"type": "string"},
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "parallel_tool_calls": {"type": "boolean"},
    "stream": {"type": "boolean"},
    "stream_options": _object({"include_usage": {"type": "boolean"}}),
    "scillm": _ref("RoutingOptions"),
    "cache": _CACHE_CONTROLS,
    "caching": {"type": "boolean",
                "description": "use the response cache for this call (true) or not (false)"},
}, ("model", "messages"),
    description="OpenAI's chat request; other keys go to the provider unchanged")

_USAGE = _object({
    "prompt_tokens": {"type": "integer"},
    "completion_tokens": {"type": "integer"},
    "total_tokens": {"type": "integer"},
    "prompt_tokens_details": _object({"cached_tokens": {"type": "integer"},
                                      "audio_tokens": {"type": "integer"}}),
    "completion_tokens_details": _object({
        "reasoning_tokens": {"type": "integer"}, "audio_tokens": {"type": "integer"},
        "accepted_prediction_tokens": {"type": "integer"},
        "rejected_prediction_tokens": {"type": "integer"}}),
}, ("prompt_tokens", "completion_tokens", "total_tokens"),
    description="OpenAI's usage; the provider's other fields (such as a cost) as it sent them")

_TOP_LOGPROB = _object({"token": {"type": "string"}, "logprob": {"type": "number"},
                        "bytes": {"type": "array", "items": {"type": "integer"}}},
                       ("token", "logprob"))
_TOKEN_LOGPROBS = _nullable({"type": "array", "items": _object({
    **_TOP_LOGPROB["properties"],
    "top_logprobs": {"type": "array", "items": _TOP_LOGPROB}}, ("token", "logprob"))})
_LOGPROBS = _nullable(_object({"content": _TOKEN_LOGPROBS, "refusal": _TOKEN_LOGPROBS},
                              ("content", "refusal")))

_FINISH = {"enum": ["stop", "length", "tool_calls", "content_filter", None]}

_CHAT_COMPLETION = _object({
    "id": {"type": "string"},
    "object": {"const": "chat.completion"},
    "created": {"type": "integer"},
    "model": {"type": "string"},
    "choices": {"type": "array", "items": _object({
        "index": {"type": "integer"},
        "message": _ref("Message"),
        "finish_reason": _FINISH,
        "logprobs": _LOGPROBS,
    }, ("index", "message", "finish_reason"))},
    "usage": _ref("Usage"),
    "system_fingerprint": {"type": "string"},
    "scillm": {**_JSON_OBJECT,
               "description": "routing record and run id, or a routed run's result"},
}, ("id", "object", "created", "model", "choices"))

_SSE = {"schema": {"type": "string",
                   "description": "With \"stream\": true: `data: <chat.completion.chunk JSON>` "
                                  "events ending in `data: [DONE]`; an error after the stream "
                                  "started is an in-band `data: {\"error\": ...}` event before "
                                  "`[DONE]`."}}

_KEY_INFO = _object({
    "key_id": {"type": "string"}, "key_alias": {"type": "string"},
    "models": {"type": "array", "items": {"type": "string"}},
    "expires": _nullable({"type": "string"}),
    "max_budget": _nullable({"type": "number"}), "spend": {"type": "number"},
    "rpm_limit": _nullable({"type": "integer"}), "tpm_limit": _nullable({"type": "integer"}),
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    "created_at": {"type": "string"},
})

_KEYS_OFF = (" Without a configured master key, key management answers 400 "
             "(`invalid_request_error`, code `KeysDisabled`).")

#: A key's fields as /key/generate and /key/update take them.
_KEY_FIELDS: dict[str, Any] = {
    "key_alias": _nullable({
        "type": "string", "maxLength": 256,
        "description": "names one key: an alias another key has is a 409 (code "
                       "`DuplicateKeyAlias`, param `key_alias`); null or empty: no alias, "
                       "which any number of keys share"}),
    "models": {"type": "array", "maxItems": 1024,
               "items": {"type": "string", "minLength": 1, "maxLength": 256}},
    "duration": {"anyOf": [
        {"type": "string", "pattern": r"^\s*\d{1,5}(\.\d+)?\s*[smhdw]\s*$",
         "description": "e.g. 30d, 12h, 15m, 45s"},
        {**_SECONDS, "description": "seconds"}, {"type": "null"},
        {"const": "-1", "description": "no expiry, as null (LiteLLM's deprecated form)"}]},
    "max_budget": _nullable({"type": "number", "exclusiveMinimum": 0}),
    "rpm_limit": _nullable({"type": "integer", "minimum": 1, "maximum": 2**63 - 1}),
    "tpm_limit": _nullable({"type": "integer", "minimum": 1, "maximum": 2**63 - 1}),
    "metadata": {"type": "object", "maxProperties": 64,
                 "description": "at most 64 entries and 16 KiB of keys and values (UTF-8; a "
                                "value that is not a string counts as its JSON)"},
}

_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0,
                                                       "maximum": 2**63 - 1}}
_EMBEDDING_REQUEST = _object({
    "model": {"type": "string", "minLength": 1},
    "input": {"anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "minItems": 1, "maxItems": 2048,
         "items": {"type": "string", "minLength": 1}},
        _TOKEN_IDS,
        {"type": "array", "minItems": 1, "maxItems": 2048, "items": _TOKEN_IDS}]},
    "dimensions": {"type": "integer", "minimum": 1, "maximum": 2147483647},
    "encoding_format": {"enum": ["float", "base64"]},
    "user": {"type": "string"},
    "scillm": _object({"fallbacks": {"type": "array", "items": {"type": "string"}},
                       "timeout_s": _SECONDS,
                       "num_retries": {"type": "integer", "minimum": 0, "maximum": 20},
                       "session_id": {"type": "string"}, "track": {"type": "string"}},
                      additional=False, description="SciLLM's routing options (embeddings "
                      "are not cached)"),
}, ("model", "input"), description="OpenAI's embeddings request; other keys go to the "
                                   "provider unchanged")
_EMBEDDING_LIST = _object({
    "object": {"const": "list"},
    "data": {"type": "array", "items": _object({
        "object": {"const": "embedding"}, "index": {"type": "integer"},
        "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                {"type": "string", "contentEncoding": "base64"}]},
    }, ("object", "index", "embedding"))},
    "model": {"type": "string"},
    "usage": _object({"prompt_tokens": {"type": "integer"},
                      "total_tokens": {"type": "integer"}}, ("prompt_tokens", "total_tokens")),
    "scillm": {**_JSON_OBJECT, "description": "routing record and run id"},
}, ("object", "data", "model", "usage"))

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "SciLLM OpenAI-compatible shim", "version": "1",
             "description": "OpenAI's chat-completions API in front of the SciLLM gRPC mesh. "
                            "`Authorization: Bearer <key>` (or `x-api-key`) is passed to the "
                            "mesh. Every response carries `x-request-id` (the caller's, or a "
                            "new one)."},
    "components": {
        "headers": {
            "RequestId": {"description": "the request's id (also the gRPC call's)",
                          "required": True, "schema": {"type": "string", "minLength": 1}},
            "RetryAfter": {"description": "seconds to wait before retrying",
                           "schema": {"type": "string"}},
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        "schemas": {
            "ErrorResponse": _object({"error": _object({
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _nullable({"type": "string"}),
                "code": _nullable({"type": "string"}),
            }, ("message", "type", "param", "code"))}, ("error",)),
            "ContentPart": _content_parts(),
            "ToolCall": _TOOL_CALL,
            "Message": _MESSAGE,
            "Tool": _TOOL,
            "RoutingOptions": _ROUTING_OPTIONS,
            "ChatCompletionRequest": _CHAT_REQUEST,
            "ChatCompletion": _CHAT_COMPLETION,
            "Usage": _USAGE,
            "KeyInfo": _KEY_INFO,
        },
    },
    "security": [{}, {"bearer": []}, {"apiKey": []}],
    "paths": {
        "/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion",
            "summary": "A chat completion, as JSON or (\"stream\": true) as SSE",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("ChatCompletionRequest")}}},
            "responses": {
                "200": {"description": "the completion",
                        "headers": _REQUEST_ID_HEADER,
                        "content": {"application/json": {"schema": _ref("ChatCompletion")},
                                    "text/event-stream": _SSE}},
                **_errors(*_CALL_ERRORS),
            },
        }},
        "/v1/embeddings": {"post": {
            "operationId": "createEmbedding",
            "summary": "Embeddings: a vector per input, as numbers or (encoding_format "
                       "base64) the base64 of little-endian float32 bytes; also at "
                       "/embeddings",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _EMBEDDING_REQUEST}}},
            "responses": {"200": _json(_EMBEDDING_LIST, "the embeddings"),
                          **_errors(*_CALL_ERRORS)},
        }},
        "/v1/models": {"get": {
            "operationId": "listModels",
            "summary": "The configured model names",
            "responses": {
                "200": _json(_object({
                    "object": {"const": "list"},
                    "data": {"type": "array", "items": _object({
                        "id": {"type": "string"}, "object": {"const": "model"},
                        "created": {"type": "integer"}, "owned_by": {"type": "string"},
                    }, ("id", "object", "created", "owned_by"))},
                }, ("object", "data")), "the models"),
                **_errors(*_GET_ERRORS),
            },
        }},
        "/v1/models/{model}": {"get": {
            "operationId": "retrieveModel",
            "summary": "One model the caller may call: a configured name, or one a wildcard "
                       "name serves",
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "description": "the model's name (it may hold slashes)",
                            "schema": {"type": "string"}}],
            "responses": {
                "200": _json(_object({
                    "id": {"type": "string"}, "object": {"const": "model"},
                    "created": {"type": "integer"}, "owned_by": {"type": "string"},
                }, ("id", "object", "created", "owned_by")), "the model"),
                **_errors(*_GET_ERRORS, "404"),
            },
        }},
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "The process is up", "security": [{}],
            "responses": {"200": _json(_object({"status": {"const": "ok"}}, ("status",)),
                                       "up")},
        }},
        "/readyz": {"get": {
            "operationId": "readyz", "security": [{}],
            "summary": "Every served service is SERVING (gRPC health)",
            "responses": {
                status: _json(_object({
                    "ready": {"type": "boolean"},
                    "services": {"type": "object",
                                 "additionalProperties": {"type": "string"}},
                }, ("ready", "services")), text)
                for status, text in (("200", "ready"), ("503", "not ready"))},
        }},
        "/ready": {"get": {
            "operationId": "ready", "security": [{}],
            "summary": "/readyz in the seed agent app's shape ({\"ok\": ...})",
            "responses": {
                status: _json(_object({
                    "ok": {"type": "boolean"},
                    "services": {"type": "object",
                                 "additionalProperties": {"type": "string"}},
                }, ("ok", "services")), text)
                for status, text in (("200", "ready"), ("503", "not ready"))},
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "security": [{}], "summary": "Prometheus metrics",
            "responses": {"200": {"description": "text exposition format",
                                  "headers": _REQUEST_ID_HEADER,
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/agent/run": {"post": {
            "operationId": "agentRun",
            "summary": "The agent envelope; answers the final event (AgentFinal as JSON), or "
                       "the seed agent app's reply {ok, final_answer, stopped_reason, "
                       "messages, metrics} to the seed's envelope",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _JSON_OBJECT}}},
            "responses": {"200": _json(_JSON_OBJECT, "the final event"),
                          **_errors(*_CALL_ERRORS)},
        }},
        "/bridge/complete": {"post": {
            "operationId": "bridgeComplete",
            "summary": "The seed's {messages, items, provider, options} envelope, run by "
                       "CodeWorld, Certainly (Prove) or the agent",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _JSON_OBJECT}}},
            "responses": {
                "200": {"description": "the run's outcome as a chat.completion; a "
                                       "seed-shaped request (provider.name, a legacy field, "
                                       "or x-scillm-envelope: seed) gets the seed bridge's "
                                       "reply",
                        "headers": _REQUEST_ID_HEADER,
                        "content": {"application/json": {"schema": {"anyOf": [
                            _ref("ChatCompletion"), _object({
                                "summary": _JSON_OBJECT, "results": {"type": "array"},
                                "run_manifest": _JSON_OBJECT, "duration_ms": {"type": "number"},
                            }, ("summary", "results", "run_manifest", "duration_ms"))]}},
                                    "text/event-stream": _SSE}},
                **_errors(*_CALL_ERRORS)},
        }},
        "/key/generate": {"post": {
            "operationId": "generateKey",
            "summary": "A new virtual key (LiteLLM's shape)." + _KEYS_OFF,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _object({
                **_KEY_FIELDS,
            }, description="null or a field left out: no limit; an explicit 0 is refused "
                           "(LiteLLM reads it as nothing allowed); other fields are refused "
                           "by name unless they only describe the key (user_id, team_id, "
                           "tags, ...) or set nothing")}}},
            "responses": {"200": _json({"allOf": [_ref("KeyInfo"), _object(
                {"key": {"type": "string"}}, ("key",))]}, "the key (shown once)"),
                **_errors(*_CALL_ERRORS)},
        }},
        "/key/info": {"get": {
            "operationId": "keyInfo",
            "summary": "A key's description (without `key`: the caller's own)." + _KEYS_OFF,
            "parameters": [{"name": "key", "in": "query", "required": False,
                            "schema": {"type": "string"}}],
            "responses": {"200": _json(_object({"key": {"type": "string"},
                                                "info": _ref("KeyInfo")}, ("key", "info")),
                                       "the key"),
                          **_errors(*_CALL_ERRORS)},
        }},
        "/key/update": {"post": {
            "operationId": "updateKey",
            "summary": "Change a key: the fields sent change, the others (its spend among "
                       "them) stay; the next call with the key sees the change (on "
                       "PostgreSQL, other processes within 2 s)." + _KEYS_OFF,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _object({
                "key": {"type": "string", "minLength": 1,
                        "description": "the key to change: its secret or its key_id"},
                **_KEY_FIELDS,
                "models": _nullable(_KEY_FIELDS["models"]),
                "metadata": _nullable({**_KEY_FIELDS["metadata"],
                                       "description": "replaces the key's whole metadata; "
                                       + _KEY_FIELDS["metadata"]["description"]}),
            }, ("key",), description="a field sent as null goes back to none (no alias, "
                                     "every model, no expiry, no limit, no metadata); "
                                     "`duration` is counted from now; an explicit 0 limit, "
                                     "`spend` and the fields /key/generate refuses are a "
                                     "400, as is a body changing nothing; a key stored with "
                                     "more metadata or models than a key may now hold is a "
                                     "400 unless the update sends that field too")}}},
            "responses": {"200": _json({"allOf": [_ref("KeyInfo"), _object(
                {"key": {"type": "string", "description": "the key's key_id"}}, ("key",))]},
                "the key as changed (never its secret)"),
                **_errors(*_CALL_ERRORS)},
        }},
        "/key/list": {"get": {
            "operationId": "listKeys",
            "summary": "The keys, a page at a time, oldest first, without their secrets "
                       "(master key only)." + _KEYS_OFF,
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
            "responses": {"200": _json(_object({
                "keys": {"type": "array", "items": {"anyOf": [{"type": "string"},
                                                              _ref("KeyInfo")]}},
                "total_count": {"type": "integer", "minimum": 0},
                "current_page": {"type": "integer", "minimum": 1},
                "total_pages": {"type": "integer", "minimum": 0},
            }, ("keys", "total_count", "current_page", "total_pages")), "a page of keys"),
                **_errors(*_CALL_ERRORS)},
        }},
        "/key/delete": {"post": {
            "operationId": "deleteKeys",
            "summary": "Delete keys." + _KEYS_OFF,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _object({
                "keys": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            }, ("keys",))}}},
            "responses": {"200": _json(_object({"deleted_keys": {
                "type": "array", "items": {"type": "string"}}}, ("deleted_keys",)),
                "the deleted keys"),
                **_errors(*_CALL_ERRORS)},
        }},
    },
}
