"""OpenAI's Responses API on chat completions: a `POST /v1/responses` body as a
`CompletionRequest`, and the completion (or its stream) as a `response` object (or the
typed events of its stream).

    instructions                          -> a first `system` message
    input: text                           -> one `user` message
    input: message items                  -> messages (input_text/output_text parts as text)
    input: function_call items            -> an assistant message's tool_calls
    input: function_call_output items     -> `tool` messages
    max_output_tokens                     -> max_completion_tokens
    text.format                           -> response_format
    tools (function) / tool_choice        -> tools / tool_choice
    reasoning.effort                      -> reasoning_effort
    temperature, top_p, metadata, user, parallel_tool_calls, scillm: as chat's

What lives on OpenAI's servers (`previous_response_id`, `conversation`, `prompt`,
`background`, `item_reference` items), built-in tools and input other than text are
refused with InvalidRequestError naming the field. Other keys travel as a chat request's
unknown keys do (to the provider, in `extra_body`), except chat's own names for what the
Responses API names otherwise (`messages`, `response_format`, `max_tokens`, ...), which are
refused pointing at the Responses field.

The answer: the choice's text (and refusal) as one `message` item, each tool call as a
`function_call` item; finish reason `length` is status `incomplete` with reason
`max_output_tokens` (`content_filter`: reason `content_filter`). A stream is OpenAI's
event sequence, each event numbered (`sequence_number`): response.created,
response.in_progress, then per item output_item.added, content_part.added, the deltas,
their done events, output_item.done, and last response.completed (response.incomplete
when incomplete; after a failure an `error` event and response.failed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2 as pb

from ..errors import InvalidRequestError
from ..ids import new_id
from ._request import request_to_proto
from ._response import usage_from_proto
from ._values import _expect, _number, text_from_json

__all__ = ["ResponseStream", "ResponsesRequest", "response_from_completion",
           "responses_request"]

#: What needs a response OpenAI's servers keep: refused, with what to do instead.
_STATEFUL = {
    "previous_response_id": "responses are not stored here, so one cannot be continued by "
                            "id: send the conversation in `input` (the earlier input, then "
                            "the earlier response's output items, then the new turn)",
    "conversation": "conversations are not stored here: send the conversation in `input`",
    "prompt": "stored prompt templates are not served: send the prompt's text in "
              "`instructions` or `input`",
}
#: Chat's names for what the Responses API names otherwise: refused, naming the field.
_CHAT_NAMES = {
    "messages": "input", "response_format": "text.format",
    "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
}
#: The Responses fields read here; every other key goes on as a chat request's unknown key.
_HANDLED = frozenset({
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p",
    "metadata", "user", "text", "tools", "tool_choice", "parallel_tool_calls", "stream",
    "stream_options", "reasoning", "store", "include", "truncation", "background",
    "max_tool_calls", "top_logprobs", "scillm", "n", *_STATEFUL, *_CHAT_NAMES,
})
#: Fields that mean the same in a chat request, passed on as they are.
_SAME = ("temperature", "top_p", "metadata", "user", "parallel_tool_calls", "scillm")
_ROLES = ("user", "system", "developer", "assistant")
#: Content parts read as text, and the input kinds refused (only text is served).
_TEXT_PARTS = ("input_text", "output_text")
_NOT_TEXT = {"input_image": "images", "input_file": "files", "input_audio": "audio"}
_FORMATS = ("text", "json_object", "json_schema")
_TOOL_MODES = ("auto", "none", "required")


@dataclass(frozen=True)
class ResponsesRequest:
    """A Responses request read: the chat call it makes, whether it streams, and the
    request's fields a `response` object repeats (`echo`)."""

    completion: pb.CompletionRequest
    stream: bool
    echo: dict[str, Any]


def responses_request(body: Mapping[str, Any]) -> ResponsesRequest:
    """A `POST /v1/responses` body read as a chat completion. Raises InvalidRequestError
    naming the Responses field at fault."""
    _refuse(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required and must be a non-empty string",
                                  param="model")
    chat: dict[str, Any] = {k: v for k, v in body.items() if k not in _HANDLED}
    chat["model"] = model
    instructions = body.get("instructions")
    messages: list[dict[str, Any]] = []
    if instructions is not None:
        messages.append({"role": "system",
                         "content": _expect(instructions, str, "instructions")})
    messages.extend(_input_messages(body.get("input")))
    if not messages:
        raise InvalidRequestError("'input' is required: text, or a non-empty array of "
                                  "input items", param="input")
    chat["messages"] = messages
    for key in _SAME:
        if body.get(key) is not None:
            chat[key] = body[key]
    limit = body.get("max_output_tokens")
    if limit is not None:
        limit = _number(limit, int, "max_output_tokens")
        if limit < 1:
            raise InvalidRequestError("'max_output_tokens' must be at least 1",
                                      param="max_output_tokens")
        chat["max_completion_tokens"] = limit
    text = body.get("text")
    fmt: dict[str, Any] = {"type": "text"}
    if text is not None:
        _expect(text, dict, "text")
        if text.get("format") is not None:
            chat["response_format"] = _format(_expect(text["format"], dict, "text.format"))
            fmt = _format_echo(chat["response_format"])
        if text.get("verbosity") is not None:
            chat["verbosity"] = _expect(text["verbosity"], str, "text.verbosity")
    given = body.get("tools")  # `{}`, "" or false were read as no tools
    tools = [_tool(tool, i) for i, tool in
             enumerate(_expect([] if given is None else given, list, "tools"))]
    if tools:
        chat["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None:
        chat["tool_choice"] = _tool_choice(choice)
    reasoning = body.get("reasoning")
    if reasoning is not None and _expect(reasoning, dict, "reasoning").get("effort") is not None:
        chat["reasoning_effort"] = _expect(reasoning["effort"], str, "reasoning.effort")
    stream = body.get("stream")
    if stream is not None:
        _expect(stream, bool, "stream")
    echo = {
        "instructions": instructions, "max_output_tokens": limit, "model": model,
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "temperature": body.get("temperature"), "top_p": body.get("top_p"),
        "text": {"format": fmt} if text is None or text.get("verbosity") is None
        else {"format": fmt, "verbosity": text["verbosity"]},
        "tool_choice": "auto" if choice is None else choice if isinstance(choice, str)
        else {"type": "function", "name": chat["tool_choice"]["function"]["name"]},
        "tools": [_tool_echo(tool) for tool in body.get("tools") or []],
        "reasoning": None if reasoning is None else {"effort": reasoning.get("effort"),
                                                     "summary": None},
        "user": body.get("user"), "max_tool_calls": body.get("max_tool_calls"),
        # Nothing is kept to be read back (`store`) beyond the mesh's run manifest.
        "store": False, "background": False, "previous_response_id": None,
        "truncation": "disabled",
    }
    return ResponsesRequest(request_to_proto(chat), bool(stream), echo)


def _refuse(body: Mapping[str, Any]) -> None:
    """The fields this door does not serve, each refused by name."""
    for key, why in _STATEFUL.items():
        if body.get(key) is not None:
            raise InvalidRequestError(f"'{key}' is not supported: {why}", param=key)
    for key, instead in _CHAT_NAMES.items():
        if key in body:
            raise InvalidRequestError(f"'{key}' is a chat-completions field: the Responses "
                                      f"API's is '{instead}'", param=key)
    if body.get("background") is not None and _expect(body["background"], bool, "background"):
        raise InvalidRequestError("'background': true is not supported: responses are not "
                                  "stored here to be polled; call without it (or stream)",
                                  param="background")
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):  # `true` == 1 passed
        raise InvalidRequestError("a response has one output: 'n' must be 1 (or left out)",
                                  param="n")
    truncation = body.get("truncation")
    if truncation not in (None, "disabled"):
        raise InvalidRequestError(f"'truncation': {truncation!r} is not supported: the input "
                                  "is sent whole ('disabled')", param="truncation")
    top = body.get("top_logprobs")
    if top is not None and (type(top) is not int or top != 0):  # `false` == 0 passed
        raise InvalidRequestError("'top_logprobs' is not supported", param="top_logprobs")
    for key in ("include", "stream_options", "store", "max_tool_calls"):
        value = body.get(key)  # read, nothing to do: no hosted tool or store here
        if value is not None:
            _expect(value, {"include": list, "stream_options": dict, "store": bool,
                            "max_tool_calls": int}[key], key)
            if key == "max_tool_calls" and value < 1:
                raise InvalidRequestError("'max_tool_calls' must be a whole number of at "
                                          "least 1", param=key)


def _input_messages(given: Any) -> list[dict[str, Any]]:
    """`input` as chat messages."""
    if given is None:
        return []
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if not isinstance(given, list):
        raise InvalidRequestError("'input' must be a string or an array of input items",
                                  param="input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(given):
        where = f"input[{i}]"
        _expect(item, dict, where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise InvalidRequestError(f"'{where}.role' must be one of {list(_ROLES)}, "
                                          f"got {role!r}", param=f"{where}.role")
            messages.append({"role": role,
                             "content": _content(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = {"id": _expect(item.get("call_id"), str, f"{where}.call_id"),
                    "type": "function",
                    "function": {"name": _expect(item.get("name"), str, f"{where}.name"),
                                 "arguments": _expect(item.get("arguments"), str,
                                                      f"{where}.arguments")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool",
                             "tool_call_id": _expect(item.get("call_id"), str,
                                                     f"{where}.call_id"),
                             "content": _content(item.get("output"), f"{where}.output")})
        elif kind == "reasoning":
            continue  # an earlier response's reasoning: nothing a chat upstream reads back
        elif kind == "item_reference":
            raise InvalidRequestError("item references are not supported: responses are not "
                                      "stored here; send the item itself",
                                      param=f"{where}.type")
        else:
            raise InvalidRequestError(
                f"input item type {kind!r} is not supported: messages, function_call and "
                "function_call_output are (built-in tools are not served)",
                param=f"{where}.type")
    return messages


def _content(content: Any, param: str) -> Any:
    """A message's (or a tool output's) content as chat content: text, or text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"'{param}' must be a string or an array of content parts",
                                  param=param)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        _expect(part, dict, where)
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": _expect(part.get("text"), str,
                                                          f"{where}.text")})
        elif kind == "refusal":
            parts.append({"type": "refusal", "refusal": _expect(part.get("refusal"), str,
                                                                f"{where}.refusal")})
        elif kind in _NOT_TEXT:
            raise InvalidRequestError(f"input {_NOT_TEXT[kind]} ({kind!r}) are not supported "
                                      "by /v1/responses: send text, or use "
                                      "/v1/chat/completions", param=f"{where}.type")
        else:
            raise InvalidRequestError(f"unknown content part type {kind!r}",
                                      param=f"{where}.type")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _format(fmt: dict[str, Any]) -> dict[str, Any]:
    """`text.format` as chat's `response_format`."""
    kind = fmt.get("type")
    if kind not in _FORMATS:
        raise InvalidRequestError(f"unknown text.format type {kind!r}",
                                  param="text.format.type")
    if kind != "json_schema":
        return {"type": kind}
    schema: dict[str, Any] = {"name": _expect(fmt.get("name"), str, "text.format.name")}
    if fmt.get("schema") is not None:
        text_from_json(fmt["schema"], "text.format.schema")  # refused here by its own name
        schema["schema"] = fmt["schema"]
    else:
        raise InvalidRequestError("'text.format.schema' is required for json_schema",
                                  param="text.format.schema")
    if fmt.get("description") is not None:
        schema["description"] = _expect(fmt["description"], str, "text.format.description")
    if fmt.get("strict") is not None:
        schema["strict"] = _expect(fmt["strict"], bool, "text.format.strict")
    return {"type": "json_schema", "json_schema": schema}


def _format_echo(fmt: dict[str, Any]) -> dict[str, Any]:
    """Chat's `response_format` (as `_format` made it) as the Responses `text.format` a
    response repeats: the fields read, not the caller's others."""
    if fmt["type"] != "json_schema":
        return {"type": fmt["type"]}
    return {"type": "json_schema", **fmt["json_schema"]}


def _tool(tool: Any, i: int) -> dict[str, Any]:
    """A Responses function tool as chat's (built-in tools refused)."""
    where = f"tools[{i}]"
    _expect(tool, dict, where)
    kind = tool.get("type")
    if kind != "function":
        raise InvalidRequestError(
            f"tool type {kind!r} is not supported: only function tools are (built-in tools "
            "such as web_search, file_search, code_interpreter, computer_use, mcp or "
            "image_generation run on OpenAI's servers)", param=f"{where}.type")
    fn: dict[str, Any] = {"name": _expect(tool.get("name"), str, f"{where}.name")}
    if tool.get("description") is not None:
        fn["description"] = _expect(tool["description"], str, f"{where}.description")
    if tool.get("parameters") is not None:
        text_from_json(tool["parameters"], f"{where}.parameters")
        fn["parameters"] = tool["parameters"]
    if tool.get("strict") is not None:
        fn["strict"] = _expect(tool["strict"], bool, f"{where}.strict")
    return {"type": "function", "function": fn}


def _tool_echo(tool: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "name": tool["name"], "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": tool.get("strict")}


def _tool_choice(choice: Any) -> Any:
    """`tool_choice` as chat's: a mode, or {"type": "function", "name": ...}."""
    if isinstance(choice, str):
        if choice not in _TOOL_MODES:
            raise InvalidRequestError(f"unknown tool_choice {choice!r}", param="tool_choice")
        return choice
    _expect(choice, dict, "tool_choice")
    if choice.get("type") != "function":
        raise InvalidRequestError(
            f"tool_choice type {choice.get('type')!r} is not supported: name a function "
            "({\"type\": \"function\", \"name\": ...}) or a mode (auto, none, required)",
            param="tool_choice.type")
    return {"type": "function",
            "function": {"name": _expect(choice.get("name"), str, "tool_choice.name")}}


# -- answers ---------------------------------------------------------------------------

#: A chat finish reason that leaves a response incomplete, and OpenAI's reason for it.
_INCOMPLETE: dict[int, str] = {pb.FINISH_REASON_LENGTH: "max_output_tokens",
                               pb.FINISH_REASON_CONTENT_FILTER: "content_filter"}


def _usage(u: common_pb2.Usage) -> dict[str, Any]:
    """Chat's usage as the Responses API's (input/output tokens and their details)."""
    chat = usage_from_proto(u)
    prompt = chat.get("prompt_tokens_details")
    prompt = prompt if isinstance(prompt, dict) else {}
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens,
                                     "cache_write_tokens": _count(prompt, "cache_write_tokens")},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.total_tokens}


def _count(details: Mapping[str, Any], key: str) -> int:
    value = details.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ResponseStream:
    """One response being made: its output items, and the stream events that make them.

    Fed a completion's pieces (`text`, `refusal`, `tool_call`, `finish`), it keeps the
    output items and returns the events each piece makes; `start` opens the stream and
    `end` (or `fail`) closes it. A whole completion is answered by feeding it in one go
    (`response_from_completion`), so both shapes come from one place.
    """

    def __init__(self, echo: Mapping[str, Any], model: str) -> None:
        self.id = f"resp_{new_id()}"
        self.created_at = int(time.time())
        self.echo = echo
        self.model = model or str(echo.get("model", ""))
        self.output: list[dict[str, Any]] = []
        self.done = False
        self._seq = 0
        self._message: dict[str, Any] | None = None
        self._text_index: int | None = None
        self._refusal_index: int | None = None
        self._calls: dict[int, dict[str, Any]] = {}  # chat's tool-call index -> item
        self._finish: int = pb.FINISH_REASON_UNSPECIFIED

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def response(self, status: str, *, usage: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The `response` object as it stands."""
        reason = _INCOMPLETE.get(self._finish) if status == "incomplete" else None
        out: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "error": error,
            "incomplete_details": {"reason": reason} if reason else None,
            **self.echo, "model": self.model, "output": list(self.output),
            "usage": usage,
        }
        if status in ("completed", "incomplete"):
            out["completed_at"] = int(time.time())
        if extra:
            out.update(extra)
        return out

    def start(self) -> list[dict[str, Any]]:
        """response.created and response.in_progress."""
        return [self._event(kind, response=self.response("in_progress"))
                for kind in ("response.created", "response.in_progress")]

    def _open_message(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if self._message is not None:
            return self._message, []
        item = {"id": f"msg_{new_id()}", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}
        self._message = item
        self.output.append(item)
        return item, [self._event("response.output_item.added",
                                  output_index=len(self.output) - 1, item=_copy(item))]

    def _part(self, kind: str) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
        """The message's part of `kind` (output_text or refusal), opened when new."""
        item, events = self._open_message()
        index = self._text_index if kind == "output_text" else self._refusal_index
        if index is None:
            part: dict[str, Any] = ({"type": "output_text", "text": "", "annotations": [],
                                     "logprobs": []} if kind == "output_text"
                                    else {"type": "refusal", "refusal": ""})
            item["content"].append(part)
            index = len(item["content"]) - 1
            if kind == "output_text":
                self._text_index = index
            else:
                self._refusal_index = index
            events.append(self._event("response.content_part.added", item_id=item["id"],
                                      output_index=self.output.index(item),
                                      content_index=index, part=dict(part)))
        return item, index, events

    def text(self, delta: str) -> list[dict[str, Any]]:
        item, index, events = self._part("output_text")
        item["content"][index]["text"] += delta
        events.append(self._event("response.output_text.delta", item_id=item["id"],
                                  output_index=self.output.index(item), content_index=index,
                                  delta=delta, logprobs=[]))
        return events

    def refusal(self, delta: str) -> list[dict[str, Any]]:
        item, index, events = self._part("refusal")
        item["content"][index]["refusal"] += delta
        events.append(self._event("response.refusal.delta", item_id=item["id"],
                                  output_index=self.output.index(item), content_index=index,
                                  delta=delta))
        return events

    def tool_call(self, index: int, call_id: str, name: str,
                  arguments: str) -> list[dict[str, Any]]:
        """A tool call's piece (chat's delta: the first carries its id and name)."""
        events: list[dict[str, Any]] = []
        item = self._calls.get(index)
        if item is None:
            item = {"id": f"fc_{new_id()}", "type": "function_call", "status": "in_progress",
                    "call_id": call_id or f"call_{new_id()}", "name": name, "arguments": ""}
            self._calls[index] = item
            self.output.append(item)
            events.append(self._event("response.output_item.added",
                                      output_index=len(self.output) - 1, item=_copy(item)))
        elif name and not item["name"]:
            item["name"] = name
        if arguments:
            item["arguments"] += arguments
            events.append(self._event("response.function_call_arguments.delta",
                                      item_id=item["id"], output_index=self.output.index(item),
                                      delta=arguments))
        return events

    def finish(self, reason: int) -> None:
        if reason != pb.FINISH_REASON_UNSPECIFIED:
            self._finish = reason

    def chunk(self, chunk: pb.CompletionChunk) -> list[dict[str, Any]]:
        """A completion chunk's events (its first choice: a response has one output)."""
        if chunk.model:
            self.model = chunk.model
        events: list[dict[str, Any]] = []
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            d = choice.delta
            if d.content:
                events += self.text(d.content)
            if d.refusal:
                events += self.refusal(d.refusal)
            for call in d.tool_calls:
                events += self.tool_call(call.index, call.id, call.name, call.arguments)
            self.finish(choice.finish_reason)
        return events

    def _close_items(self) -> list[dict[str, Any]]:
        """The done events of every item, in output order; each item's status set."""
        status = "incomplete" if self._finish in _INCOMPLETE else "completed"
        events: list[dict[str, Any]] = []
        for position, item in enumerate(self.output):
            item["status"] = status
            if item["type"] == "message":
                for index, part in enumerate(item["content"]):
                    if part["type"] == "output_text":
                        events.append(self._event(
                            "response.output_text.done", item_id=item["id"],
                            output_index=position, content_index=index, text=part["text"],
                            logprobs=[]))
                    else:
                        events.append(self._event(
                            "response.refusal.done", item_id=item["id"],
                            output_index=position, content_index=index,
                            refusal=part["refusal"]))
                    events.append(self._event("response.content_part.done", item_id=item["id"],
                                              output_index=position, content_index=index,
                                              part=dict(part)))
            else:
                events.append(self._event("response.function_call_arguments.done",
                                          item_id=item["id"], output_index=position,
                                          name=item["name"], arguments=item["arguments"]))
            events.append(self._event("response.output_item.done", output_index=position,
                                      item=_copy(item)))
        return events

    def end(self, usage: common_pb2.Usage,
            extra: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The done events, then response.completed (or response.incomplete) carrying
        `usage` and the `extra` fields (the mesh's `scillm`). An empty answer still has
        its message with an empty output_text, as the unary reply holds it."""
        events = [] if self.output else self._part("output_text")[2]
        events += self._close_items()
        status = "incomplete" if self._finish in _INCOMPLETE else "completed"
        self.done = True
        events.append(self._event(f"response.{status}", response=self.response(
            status, usage=_usage(usage), extra=extra)))
        return events

    def fail(self, error: Mapping[str, Any], code: str) -> list[dict[str, Any]]:
        """A failure once the stream has started: an `error` event (OpenAI's error body
        too, as chat's in-band error) and response.failed. `error` is OpenAI's error
        object; `code` the Responses API's code for it (server_error,
        rate_limit_exceeded)."""
        self.done = True
        for item in self.output:
            item["status"] = "incomplete"
        return [
            self._event("error", code=error.get("code"), message=error.get("message"),
                        param=error.get("param"), error=dict(error)),
            self._event("response.failed", response=self.response("failed", error={
                "code": code, "message": error.get("message"), "param": error.get("param"),
                "type": error.get("type")})),
        ]


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """An item as it stands (its content parts copied: they change after the event)."""
    out = dict(item)
    if "content" in out:
        out["content"] = [dict(part) for part in out["content"]]
    return out


def response_from_completion(resp: pb.CompletionResponse, echo: Mapping[str, Any],
                             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A whole completion as the `response` object (its first choice)."""
    out = ResponseStream(echo, resp.model)
    if resp.choices:
        choice = resp.choices[0]
        text = "".join(p.text for p in choice.message.content if p.WhichOneof("part") == "text")
        refusal = "".join(p.refusal for p in choice.message.content
                          if p.WhichOneof("part") == "refusal")
        if text or not (refusal or choice.message.tool_calls):
            out.text(text)
        if refusal:
            out.refusal(refusal)
        for i, call in enumerate(choice.message.tool_calls):
            out.tool_call(i, call.id, call.function.name, call.function.arguments)
        out.finish(choice.finish_reason)
    last: dict[str, Any] = out.end(resp.usage, extra)[-1]["response"]
    return last
