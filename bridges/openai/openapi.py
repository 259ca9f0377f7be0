"""The shim's OpenAPI 3.1 document, written by hand from app.py and clients/openai_wire.py.

`OPENAPI` is served as `GET /openapi.json` and is what tests/bridges/test_fuzz_shim.py
fuzzes the live shim against, so it must stay true to the code:

- a chat request takes every field `openai_wire.request_to_proto` translates, plus any
  other key (passed to the provider in `extra_body`); bounds are the servicer's checks;
- every error is OpenAI's body `{"error": {"message", "type", "param", "code"}}` with the
  status of `errors.STATUS_TABLE`;
- every response carries `x-request-id`.

Its building blocks (references, error responses, objects) are `_openapi_parts`, the
`/key/*` routes `_openapi_keys`, `/v1/responses` `_openapi_responses`.
"""

from __future__ import annotations

from typing import Any

from ._openapi_keys import KEY_INFO, KEY_PATHS
from ._openapi_parts import (
    AGE,
    CALL_ERRORS,
    GET_ERRORS,
    JSON_OBJECT,
    REQUEST_ID_HEADER,
    SECONDS,
    errors,
    nullable,
    obj,
    ref,
    response,
)
from ._openapi_responses import RESPONSE_PATHS, RESPONSE_SCHEMAS

__all__ = ["OPENAPI"]

def _content_parts() -> dict[str, Any]:
    def part(kind: str, value: dict[str, Any]) -> dict[str, Any]:
        return obj({"type": {"const": kind}, kind: value}, ("type", kind))

    return {"oneOf": [
        part("text", {"type": "string"}),
        part("image_url", {"anyOf": [
            {"type": "string"},
            obj({"url": {"type": "string"}, "detail": {"type": "string"}}, ("url",))]}),
        part("input_audio", obj({"data": {"type": "string"}, "format": {"type": "string"}},
                                    ("data", "format"))),
        part("file", obj({"file_id": {"type": "string"}, "file_data": {"type": "string"},
                              "filename": {"type": "string"}})),
        part("refusal", {"type": "string"}),
    ]}


_TOOL_CALL = obj({
    "id": {"type": "string"},
    "type": {"const": "function"},
    "function": obj({"name": {"type": "string"},
                         "arguments": {"type": "string",
                                       "description": "JSON text (an object is encoded)"}},
                        ("name", "arguments")),
}, ("id", "function"))

_MESSAGE = obj({
    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"anyOf": [{"type": "null"}, {"type": "string"},
                          {"type": "array", "items": ref("ContentPart")}]},
    "name": {"type": "string"},
    "tool_calls": {"type": "array", "items": ref("ToolCall")},
    "tool_call_id": {"type": "string"},
    "reasoning_content": {"type": "string"},
    "refusal": nullable({"type": "string"}),
}, ("role",))

_TOOL = obj({
    "type": {"const": "function"},
    "function": obj({
        "name": {"type": "string"},
        "description": {"type": "string"},
        "parameters": {**JSON_OBJECT, "description": "JSON Schema of the arguments"},
        "strict": {"type": "boolean"},
    }, ("name",)),
}, ("function",))

_TOOL_CHOICE = {"anyOf": [
    {"enum": ["auto", "none", "required"]},
    obj({"type": {"const": "function"},
             "function": obj({"name": {"type": "string"}}, ("name",))}, ("function",)),
]}

_RESPONSE_FORMAT = {"oneOf": [
    obj({"type": {"const": "text"}}, ("type",)),
    obj({"type": {"const": "json_object"}}, ("type",)),
    obj({"type": {"const": "json_schema"},
             "json_schema": obj({"name": {"type": "string"},
                                     "description": {"type": "string"},
                                     "schema": JSON_OBJECT,
                                     "strict": {"type": "boolean"}})},
            ("type", "json_schema")),
]}


#: LiteLLM's per-request cache controls; they act only where a cache is configured.
_CACHE_CONTROLS = obj({
    "no-cache": {"type": "boolean", "description": "skip the lookup (still stored)"},
    "no-store": {"type": "boolean", "description": "do not store the response"},
    "ttl": {**SECONDS, "description": "seconds the stored response lives"},
    "s-maxage": {**AGE, "description": "accept only a stored response this many seconds old"},
    "s-max-age": AGE,
    "namespace": {"type": "string"},
    "use-cache": {"type": "boolean",
                  "description": "opt in (cache_params.mode: default_off) or out"},
}, additional=False, description="LiteLLM's per-request cache controls")

_ROUTING_OPTIONS = obj({
    "fallbacks": {"type": "array", "items": {"type": "string"},
                  "description": "models tried in order when the first fails"},
    "timeout_s": {**SECONDS, "description": "per-attempt timeout (millisecond resolution)"},
    "num_retries": {"type": "integer", "minimum": 0, "maximum": 2147483647},
    "deterministic": {"type": "boolean"},
    "cache": obj({"bypass": {"type": "boolean"}, "no_store": {"type": "boolean"},
                      "ttl_s": SECONDS, "namespace": {"type": "string"},
                      "max_age_s": AGE, "enabled": {"type": "boolean"}}, additional=False),
    "session_id": {"type": "string", "description": "run context: session"},
    "track": {"type": "string", "description": "run context: track inside the session"},
}, additional=False, description="SciLLM's routing options; unknown keys are refused")

_INT32 = {"type": "integer", "minimum": -2147483648, "maximum": 2147483647}

_CHAT_REQUEST = obj({
    "model": {"type": "string", "minLength": 1,
              "description": "a configured model, or codeworld/..., agent/<model>, "
                             "certainly/..., lean4/... (runs of the other services)"},
    "messages": {"type": "array", "minItems": 1, "items": ref("Message")},
    "tools": {"type": "array", "items": ref("Tool")},
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
    "stream_options": obj({"include_usage": {"type": "boolean"}}),
    "scillm": ref("RoutingOptions"),
    "cache": _CACHE_CONTROLS,
    "caching": {"type": "boolean",
                "description": "use the response cache for this call (true) or not (false)"},
}, ("model", "messages"),
    description="OpenAI's chat request; other keys go to the provider unchanged")

_USAGE = obj({
    "prompt_tokens": {"type": "integer"},
    "completion_tokens": {"type": "integer"},
    "total_tokens": {"type": "integer"},
    "prompt_tokens_details": obj({"cached_tokens": {"type": "integer"},
                                      "audio_tokens": {"type": "integer"}}),
    "completion_tokens_details": obj({
        "reasoning_tokens": {"type": "integer"}, "audio_tokens": {"type": "integer"},
        "accepted_prediction_tokens": {"type": "integer"},
        "rejected_prediction_tokens": {"type": "integer"}}),
}, ("prompt_tokens", "completion_tokens", "total_tokens"),
    description="OpenAI's usage; the provider's other fields (such as a cost) as it sent them")

_TOP_LOGPROB = obj({"token": {"type": "string"}, "logprob": {"type": "number"},
                        "bytes": {"type": "array", "items": {"type": "integer"}}},
                       ("token", "logprob"))
_TOKEN_LOGPROBS = nullable({"type": "array", "items": obj({
    **_TOP_LOGPROB["properties"],
    "top_logprobs": {"type": "array", "items": _TOP_LOGPROB}}, ("token", "logprob"))})
_LOGPROBS = nullable(obj({"content": _TOKEN_LOGPROBS, "refusal": _TOKEN_LOGPROBS},
                              ("content", "refusal")))

_FINISH = {"enum": ["stop", "length", "tool_calls", "content_filter", None]}

_CHAT_COMPLETION = obj({
    "id": {"type": "string"},
    "object": {"const": "chat.completion"},
    "created": {"type": "integer"},
    "model": {"type": "string"},
    "choices": {"type": "array", "items": obj({
        "index": {"type": "integer"},
        "message": ref("Message"),
        "finish_reason": _FINISH,
        "logprobs": _LOGPROBS,
    }, ("index", "message", "finish_reason"))},
    "usage": ref("Usage"),
    "system_fingerprint": {"type": "string"},
    "scillm": {**JSON_OBJECT,
               "description": "routing record and run id, or a routed run's result"},
}, ("id", "object", "created", "model", "choices"))

_SSE = {"schema": {"type": "string",
                   "description": "With \"stream\": true: `data: <chat.completion.chunk JSON>` "
                                  "events ending in `data: [DONE]`; an error after the stream "
                                  "started is an in-band `data: {\"error\": ...}` event before "
                                  "`[DONE]`."}}

_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0,
                                                       "maximum": 2**63 - 1}}
_EMBEDDING_REQUEST = obj({
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
    "scillm": obj({"fallbacks": {"type": "array", "items": {"type": "string"}},
                       "timeout_s": SECONDS,
                       "num_retries": {"type": "integer", "minimum": 0, "maximum": 20},
                       "session_id": {"type": "string"}, "track": {"type": "string"}},
                      additional=False, description="SciLLM's routing options (embeddings "
                      "are not cached)"),
}, ("model", "input"), description="OpenAI's embeddings request; other keys go to the "
                                   "provider unchanged")
_EMBEDDING_LIST = obj({
    "object": {"const": "list"},
    "data": {"type": "array", "items": obj({
        "object": {"const": "embedding"}, "index": {"type": "integer"},
        "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                {"type": "string", "contentEncoding": "base64"}]},
    }, ("object", "index", "embedding"))},
    "model": {"type": "string"},
    "usage": obj({"prompt_tokens": {"type": "integer"},
                      "total_tokens": {"type": "integer"}}, ("prompt_tokens", "total_tokens")),
    "scillm": {**JSON_OBJECT, "description": "routing record and run id"},
}, ("object", "data", "model", "usage"))
_TEXT_REQUEST = obj({
    "model": {"type": "string", "minLength": 1},
    "prompt": {"anyOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "maxItems": 2048, "items": {"type": "string"}},
        _TOKEN_IDS,
        {"type": "array", "minItems": 1, "maxItems": 2048, "items": _TOKEN_IDS}]},
    "max_tokens": {"type": "integer", "minimum": 0, "maximum": 2147483647,
                   "description": "16 when unset (OpenAI's default here)"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "n": {"type": "integer", "minimum": 1, "maximum": 128},
    "best_of": {"type": "integer", "minimum": 1, "maximum": 20,
                "description": "at least n; passed to the provider"},
    "stop": {"anyOf": [{"type": "string"},
                       {"type": "array", "maxItems": 4, "items": {"type": "string"}}]},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "seed": {"type": "integer"},
    "logprobs": {"type": "integer", "minimum": 0, "maximum": 5,
                 "description": "log probabilities of the chosen tokens and of this many "
                                "most likely ones at each position, in each choice's "
                                "`logprobs` (null from a provider that gives none)"},
    "echo": {"type": "boolean"},
    "suffix": {"type": "string"},
    "user": {"type": "string"},
    "stream": {"type": "boolean",
               "description": "true: the completion as SSE, chunk by chunk (see the 200)"},
    "stream_options": obj({"include_usage": {"type": "boolean"}}, description=(
        "with stream: include_usage adds a last chunk with no choices and the usage")),
    "scillm": {**_EMBEDDING_REQUEST["properties"]["scillm"],
               "description": "SciLLM's routing options (text completions are not cached)"},
}, ("model", "prompt"), description="OpenAI's legacy completions request; other keys go to "
                                    "the provider unchanged")
#: OpenAI's legacy `logprobs` of a text choice: four lists of one entry per token (null
#: where there is none: the first token of a prompt returned with `echo`).
_TEXT_LOGPROBS = obj({
    "text_offset": nullable({"type": "array", "items": nullable({"type": "integer"})}),
    "token_logprobs": {"type": "array", "items": nullable({"type": "number"})},
    "tokens": {"type": "array", "items": {"type": "string"}},
    "top_logprobs": nullable({"type": "array", "items": nullable(
        {"type": "object", "additionalProperties": {"type": "number"}})}),
}, ("text_offset", "token_logprobs", "tokens", "top_logprobs"))
_TEXT_COMPLETION = obj({
    "id": {"type": "string"}, "object": {"const": "text_completion"},
    "created": {"type": "integer"}, "model": {"type": "string"},
    "choices": {"type": "array", "items": obj({
        "index": {"type": "integer"}, "text": {"type": "string"},
        "logprobs": nullable(_TEXT_LOGPROBS),
        "finish_reason": nullable({"type": "string"}),
    }, ("index", "text", "finish_reason"))},
    "usage": ref("Usage"),
    "scillm": {**JSON_OBJECT, "description": "routing record and run id"},
}, ("id", "object", "created", "model", "choices"))

_TEXT_SSE = {"schema": {
    "type": "string",
    "description": "With \"stream\": true: `data: <text_completion chunk JSON>` events (the "
                   "fields above but usage; each choice's text in pieces, finish_reason null "
                   "until its last), with stream_options.include_usage a last chunk with "
                   "`\"choices\": []` and the usage, then `data: [DONE]`; an error after the "
                   "stream started is an in-band `data: {\"error\": ...}` event before "
                   "`[DONE]`."}}

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
            "ErrorResponse": obj({"error": obj({
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": nullable({"type": "string"}),
                "code": nullable({"type": "string"}),
            }, ("message", "type", "param", "code"))}, ("error",)),
            "ContentPart": _content_parts(),
            "ToolCall": _TOOL_CALL,
            "Message": _MESSAGE,
            "Tool": _TOOL,
            "RoutingOptions": _ROUTING_OPTIONS,
            "ChatCompletionRequest": _CHAT_REQUEST,
            "ChatCompletion": _CHAT_COMPLETION,
            "Usage": _USAGE,
            "KeyInfo": KEY_INFO,
            **RESPONSE_SCHEMAS,
        },
    },
    "security": [{}, {"bearer": []}, {"apiKey": []}],
    "paths": {
        "/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion",
            "summary": "A chat completion, as JSON or (\"stream\": true) as SSE",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": ref("ChatCompletionRequest")}}},
            "responses": {
                "200": {"description": "the completion",
                        "headers": REQUEST_ID_HEADER,
                        "content": {"application/json": {"schema": ref("ChatCompletion")},
                                    "text/event-stream": _SSE}},
                **errors(*CALL_ERRORS),
            },
        }},
        "/v1/embeddings": {"post": {
            "operationId": "createEmbedding",
            "summary": "Embeddings: a vector per input, as numbers or (encoding_format "
                       "base64) the base64 of little-endian float32 bytes; also at "
                       "/embeddings",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _EMBEDDING_REQUEST}}},
            "responses": {"200": response(_EMBEDDING_LIST, "the embeddings"),
                          **errors(*CALL_ERRORS)},
        }},
        "/v1/completions": {"post": {
            "operationId": "createCompletion",
            "summary": "A text completion (OpenAI's legacy endpoint): a continuation of each "
                       "prompt, as base models want, as JSON or (\"stream\": true) as SSE; "
                       "also at /completions",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _TEXT_REQUEST}}},
            "responses": {
                "200": {"description": "the completion",
                        "headers": REQUEST_ID_HEADER,
                        "content": {"application/json": {"schema": _TEXT_COMPLETION},
                                    "text/event-stream": _TEXT_SSE}},
                **errors(*CALL_ERRORS),
            },
        }},
        "/v1/models": {"get": {
            "operationId": "listModels",
            "summary": "The configured model names",
            "responses": {
                "200": response(obj({
                    "object": {"const": "list"},
                    "data": {"type": "array", "items": obj({
                        "id": {"type": "string"}, "object": {"const": "model"},
                        "created": {"type": "integer"}, "owned_by": {"type": "string"},
                    }, ("id", "object", "created", "owned_by"))},
                }, ("object", "data")), "the models"),
                **errors(*GET_ERRORS),
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
                "200": response(obj({
                    "id": {"type": "string"}, "object": {"const": "model"},
                    "created": {"type": "integer"}, "owned_by": {"type": "string"},
                }, ("id", "object", "created", "owned_by")), "the model"),
                **errors(*GET_ERRORS, "404"),
            },
        }},
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "The process is up", "security": [{}],
            "responses": {"200": response(obj({"status": {"const": "ok"}}, ("status",)),
                                       "up")},
        }},
        "/readyz": {"get": {
            "operationId": "readyz", "security": [{}],
            "summary": "Every served service is SERVING (gRPC health)",
            "responses": {
                status: response(obj({
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
                status: response(obj({
                    "ok": {"type": "boolean"},
                    "services": {"type": "object",
                                 "additionalProperties": {"type": "string"}},
                }, ("ok", "services")), text)
                for status, text in (("200", "ready"), ("503", "not ready"))},
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "security": [{}], "summary": "Prometheus metrics",
            "responses": {"200": {"description": "text exposition format",
                                  "headers": REQUEST_ID_HEADER,
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/agent/run": {"post": {
            "operationId": "agentRun",
            "summary": "The agent envelope; answers the final event (AgentFinal as JSON), or "
                       "the seed agent app's reply {ok, final_answer, stopped_reason, "
                       "messages, metrics} to the seed's envelope",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": JSON_OBJECT}}},
            "responses": {"200": response(JSON_OBJECT, "the final event"),
                          **errors(*CALL_ERRORS)},
        }},
        "/bridge/complete": {"post": {
            "operationId": "bridgeComplete",
            "summary": "The seed's {messages, items, provider, options} envelope, run by "
                       "CodeWorld, Certainly (Prove) or the agent",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": JSON_OBJECT}}},
            "responses": {
                "200": {"description": "the run's outcome as a chat.completion; a "
                                       "seed-shaped request (provider.name, a legacy field, "
                                       "or x-scillm-envelope: seed) gets the seed bridge's "
                                       "reply",
                        "headers": REQUEST_ID_HEADER,
                        "content": {"application/json": {"schema": {"anyOf": [
                            ref("ChatCompletion"), obj({
                                "summary": JSON_OBJECT, "results": {"type": "array"},
                                "run_manifest": JSON_OBJECT, "duration_ms": {"type": "number"},
                            }, ("summary", "results", "run_manifest", "duration_ms"))]}},
                                    "text/event-stream": _SSE}},
                **errors(*CALL_ERRORS)},
        }},
        **RESPONSE_PATHS,
        **KEY_PATHS,
    },
}
