"""The `/v1/responses` part of the shim's OpenAPI document (openapi.py): OpenAI's Responses
API served on chat completions (bridges/openai/responses.py,
clients/openai_wire/_responses.py)."""

from __future__ import annotations

from typing import Any

from ._openapi_parts import (
    CALL_ERRORS,
    JSON_OBJECT,
    REQUEST_ID_HEADER,
    errors,
    nullable,
    obj,
    ref,
)

__all__ = ["RESPONSE_PATHS", "RESPONSE_SCHEMAS"]

_TEXT_PART = {"oneOf": [
    obj({"type": {"enum": ["input_text", "output_text"]}, "text": {"type": "string"}},
        ("type", "text")),
    obj({"type": {"const": "refusal"}, "refusal": {"type": "string"}}, ("type", "refusal")),
]}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}],
            "description": "text, or text parts; input_image, input_file and input_audio are "
                           "refused (400 naming the part)"}
_ITEM = {"oneOf": [
    obj({"type": {"const": "message"},
         "role": {"enum": ["user", "system", "developer", "assistant"]},
         "content": _CONTENT}, ("role", "content"),
        description="a message (`type` may be left out)"),
    obj({"type": {"const": "function_call"}, "call_id": {"type": "string"},
         "name": {"type": "string"}, "arguments": {"type": "string"}},
        ("type", "call_id", "name", "arguments"),
        description="an earlier response's tool call: the assistant message's tool_calls"),
    obj({"type": {"const": "function_call_output"}, "call_id": {"type": "string"},
         "output": _CONTENT}, ("type", "call_id", "output"),
        description="a tool's result: a `tool` message"),
    obj({"type": {"const": "reasoning"}}, ("type",),
        description="an earlier response's reasoning: passed over"),
]}
_FUNCTION_TOOL = obj({
    "type": {"const": "function"}, "name": {"type": "string"},
    "description": nullable({"type": "string"}),
    "parameters": nullable({**JSON_OBJECT, "description": "JSON Schema of the arguments"}),
    "strict": nullable({"type": "boolean"}),
}, ("type", "name"))
_FORMAT = {"oneOf": [
    obj({"type": {"const": "text"}}, ("type",)),
    obj({"type": {"const": "json_object"}}, ("type",)),
    obj({"type": {"const": "json_schema"}, "name": {"type": "string"},
         "schema": JSON_OBJECT, "description": {"type": "string"},
         "strict": nullable({"type": "boolean"})}, ("type", "name", "schema")),
]}
_TOOL_CHOICE = {"anyOf": [
    {"enum": ["auto", "none", "required"]},
    obj({"type": {"const": "function"}, "name": {"type": "string"}}, ("type", "name")),
]}
_REFUSED = {"description": "not served: any value but null is a 400 naming it (nothing is "
                           "stored here; send the conversation in `input`)"}

_REQUEST = obj({
    "model": {"type": "string", "minLength": 1,
              "description": "a configured completion model (codeworld/..., agent/..., "
                             "certainly/... and lean4/... runs answer at "
                             "/v1/chat/completions: 400 here)"},
    "input": {"anyOf": [{"type": "string"},
                        {"type": "array", "items": _ITEM}]},
    "instructions": {"type": "string", "description": "a first system message"},
    "max_output_tokens": {"type": "integer", "minimum": 1, "maximum": 2147483647,
                          "description": "chat's max_completion_tokens"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    "user": {"type": "string"},
    "text": obj({"format": _FORMAT, "verbosity": {"type": "string"}},
                description="`format` is chat's response_format"),
    "tools": {"type": "array", "items": _FUNCTION_TOOL,
              "description": "function tools; built-in tools (web_search, file_search, "
                             "code_interpreter, computer_use, mcp, image_generation, ...) "
                             "are a 400 naming the tool"},
    "tool_choice": _TOOL_CHOICE,
    "parallel_tool_calls": {"type": "boolean"},
    "reasoning": obj({"effort": {"type": "string"}},
                     description="`effort` is chat's reasoning_effort"),
    "stream": {"type": "boolean"},
    "stream_options": JSON_OBJECT,
    "store": {"type": "boolean", "description": "accepted; nothing is stored but the "
                                                "mesh's run manifest (the reply says false)"},
    "include": {"type": "array", "items": {"type": "string"},
                "description": "accepted; nothing extra is included"},
    "truncation": {"enum": ["disabled", None]},
    "previous_response_id": _REFUSED, "conversation": _REFUSED, "prompt": _REFUSED,
    "background": {"enum": [False, None], "description": "true is a 400: not served"},
    "scillm": ref("RoutingOptions"),
}, ("model", "input"), description="OpenAI's Responses request, served as a chat "
                                   "completion; other keys go to the provider unchanged, "
                                   "but chat's own names (messages, response_format, "
                                   "max_tokens, ...) are a 400 naming the Responses field")

_OUTPUT_ITEM = {"oneOf": [
    obj({"type": {"const": "message"}, "id": {"type": "string"},
         "role": {"const": "assistant"},
         "status": {"enum": ["in_progress", "completed", "incomplete"]},
         "content": {"type": "array", "items": {"oneOf": [
             obj({"type": {"const": "output_text"}, "text": {"type": "string"},
                  "annotations": {"type": "array"}}, ("type", "text", "annotations")),
             obj({"type": {"const": "refusal"}, "refusal": {"type": "string"}},
                 ("type", "refusal"))]}}},
        ("type", "id", "role", "status", "content")),
    obj({"type": {"const": "function_call"}, "id": {"type": "string"},
         "call_id": {"type": "string"}, "name": {"type": "string"},
         "arguments": {"type": "string"},
         "status": {"enum": ["in_progress", "completed", "incomplete"]}},
        ("type", "call_id", "name", "arguments")),
]}

_RESPONSE = obj({
    "id": {"type": "string", "pattern": "^resp_"},
    "object": {"const": "response"},
    "created_at": {"type": "integer"},
    "completed_at": {"type": "integer"},
    "status": {"enum": ["completed", "incomplete", "in_progress", "failed"]},
    "error": nullable(JSON_OBJECT),
    "incomplete_details": nullable(obj({
        "reason": {"enum": ["max_output_tokens", "content_filter"]}}, ("reason",))),
    "model": {"type": "string"},
    "output": {"type": "array", "items": _OUTPUT_ITEM},
    "usage": nullable(obj({
        "input_tokens": {"type": "integer"},
        "input_tokens_details": obj({"cached_tokens": {"type": "integer"},
                                     "cache_write_tokens": {"type": "integer"}},
                                    ("cached_tokens", "cache_write_tokens")),
        "output_tokens": {"type": "integer"},
        "output_tokens_details": obj({"reasoning_tokens": {"type": "integer"}},
                                     ("reasoning_tokens",)),
        "total_tokens": {"type": "integer"},
    }, ("input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details",
        "total_tokens"))),
    "store": {"const": False},
    "scillm": {**JSON_OBJECT, "description": "routing record and run id"},
}, ("id", "object", "created_at", "status", "model", "output"),
    description="OpenAI's `response`; the request's fields (instructions, metadata, tools, "
                "text, temperature, ...) are repeated as OpenAI repeats them")

_SSE = {"schema": {"type": "string", "description": (
    "With \"stream\": true: OpenAI's typed events, each `event: <type>` and `data: <JSON>` "
    "with its `sequence_number`: response.created, response.in_progress, then per output "
    "item response.output_item.added, response.content_part.added, "
    "response.output_text.delta (response.refusal.delta; "
    "response.function_call_arguments.delta for a tool call), their done events, "
    "response.output_item.done, and last response.completed (response.incomplete when "
    "cut at max_output_tokens). An error after the stream started is an `error` event "
    "(with OpenAI's error object under `error`) followed by response.failed. No "
    "`data: [DONE]`.")}}

#: The schemas the document's components gain.
RESPONSE_SCHEMAS: dict[str, Any] = {"ResponseRequest": _REQUEST, "Response": _RESPONSE}

#: The route, as the document's `paths` holds it.
RESPONSE_PATHS: dict[str, Any] = {
    "/v1/responses": {"post": {
        "operationId": "createResponse",
        "summary": "A response (OpenAI's Responses API) made by a chat completion, as JSON "
                   "or (\"stream\": true) as typed SSE events; nothing is stored; also at "
                   "/responses",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": ref("ResponseRequest")}}},
        "responses": {
            "200": {"description": "the response", "headers": REQUEST_ID_HEADER,
                    "content": {"application/json": {"schema": ref("Response")},
                                "text/event-stream": _SSE}},
            **errors(*CALL_ERRORS),
        },
    }},
}
