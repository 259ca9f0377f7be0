"""One chat message, OpenAI JSON <-> `Message`: content parts and tool calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scillm.completion.v1 import completion_pb2 as pb

from ..errors import InvalidRequestError
from ._values import _ROLE_NAMES, ROLES, _expect, add_extras, extras_text, json_dumps


def _content_to_proto(content: Any, param: str) -> list[pb.ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [pb.ContentPart(text=content)]
    if not isinstance(content, list):  # "must be of type list" read as if text were wrong
        raise InvalidRequestError(f"'{param}' must be a string or a list of content parts",
                                  param=param)
    parts: list[pb.ContentPart] = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        _expect(part, dict, where)
        kind = part.get("type")
        if kind == "text":
            parts.append(pb.ContentPart(text=_expect(part.get("text"), str, f"{where}.text")))
        elif kind == "image_url":
            image = part.get("image_url")
            if isinstance(image, str):
                image = {"url": image}
            _expect(image, dict, f"{where}.image_url")
            parts.append(pb.ContentPart(image_url=pb.ImageUrl(
                url=str(image.get("url", "")), detail=str(image.get("detail", "")))))
        elif kind == "input_audio":
            audio = _expect(part.get("input_audio"), dict, f"{where}.input_audio")
            parts.append(pb.ContentPart(input_audio=pb.InputAudio(
                data=str(audio.get("data", "")), format=str(audio.get("format", "")))))
        elif kind == "file":
            file = _expect(part.get("file"), dict, f"{where}.file")
            parts.append(pb.ContentPart(file=pb.FileInput(
                file_id=str(file.get("file_id", "")), file_data=str(file.get("file_data", "")),
                filename=str(file.get("filename", "")))))
        elif kind == "refusal":
            parts.append(pb.ContentPart(refusal=str(part.get("refusal", ""))))
        else:
            raise InvalidRequestError(f"unknown content part type {kind!r}", param=f"{where}.type")
    return parts


def _tool_calls_to_proto(calls: Any, param: str) -> list[pb.ToolCall]:
    _expect(calls, list, param)
    out = []
    for i, call in enumerate(calls):
        _expect(call, dict, f"{param}[{i}]")
        fn = _expect(call.get("function", {}), dict, f"{param}[{i}].function")
        args = fn.get("arguments", "")
        out.append(pb.ToolCall(id=str(call.get("id", "")), function=pb.FunctionCall(
            name=str(fn.get("name", "")),
            arguments=args if isinstance(args, str) else json_dumps(args))))
    return out


def message_to_proto(message: Any, param: str = "messages[0]") -> pb.Message:
    """One OpenAI message dict as a `Message`."""
    out = pb.Message()
    _fill_message(out, message, param)
    return out


#: The message fields `Message` types; the rest travel in its `extra_json`.
_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_call_id", "reasoning_content",
                           "tool_calls", "refusal"})


def _fill_message(out: pb.Message, message: Any, param: str, *,
                  upstream: bool = False) -> None:
    """`message_to_proto` into `out` (a message in place costs no copy into its parent);
    `upstream` for an upstream's message (its untyped fields are kept when they can be,
    never refused)."""
    _expect(message, dict, param)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequestError(
            f"'{param}.role' must be one of {sorted(ROLES)}, got {role!r}", param=f"{param}.role")
    out.role = ROLES[role]  # type: ignore[assignment]
    content = message.get("content")
    if isinstance(content, str):
        out.content.add(text=content)
    elif content is not None:
        out.content.extend(_content_to_proto(content, f"{param}.content"))
    for key in ("name", "tool_call_id", "reasoning_content"):
        value = message.get(key)
        if value:
            setattr(out, key, str(value))
    if message.get("tool_calls"):
        out.tool_calls.extend(_tool_calls_to_proto(message["tool_calls"], f"{param}.tool_calls"))
    if message.get("refusal"):
        out.content.add(refusal=str(message["refusal"]))
    if not message.keys() <= _MESSAGE_KEYS:
        out.extra_json = extras_text(message, _MESSAGE_KEYS, None if upstream else param)


def _content_from_proto(parts: Sequence[pb.ContentPart]) -> Any:
    if not parts:
        return None
    if len(parts) == 1 and parts[0].WhichOneof("part") == "text":
        return parts[0].text
    out: list[dict[str, Any]] = []
    for part in parts:
        kind = part.WhichOneof("part")
        if kind == "text":
            out.append({"type": "text", "text": part.text})
        elif kind == "image_url":
            image: dict[str, Any] = {"url": part.image_url.url}
            if part.image_url.detail:
                image["detail"] = part.image_url.detail
            out.append({"type": "image_url", "image_url": image})
        elif kind == "input_audio":
            out.append({"type": "input_audio", "input_audio": {
                "data": part.input_audio.data, "format": part.input_audio.format}})
        elif kind == "file":
            file = {k: v for k, v in (("file_id", part.file.file_id),
                                      ("file_data", part.file.file_data),
                                      ("filename", part.file.filename)) if v}
            out.append({"type": "file", "file": file})
        elif kind == "refusal":
            out.append({"type": "refusal", "refusal": part.refusal})
    return out


def message_from_proto(message: pb.Message, param: str | None = None) -> dict[str, Any]:
    """A `Message` as an OpenAI message dict (`param`: where a caller's request holds it,
    so that an unreadable `extra_json` is refused naming it)."""
    parts: Sequence[pb.ContentPart] = message.content
    refusal = [p.refusal for p in parts if p.WhichOneof("part") == "refusal"] \
        if message.role == pb.ROLE_ASSISTANT else []
    if refusal:
        parts = [p for p in parts if p.WhichOneof("part") != "refusal"]
    out: dict[str, Any] = {"role": _ROLE_NAMES.get(message.role, "user"),
                           "content": _content_from_proto(parts)}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.reasoning_content:
        out["reasoning_content"] = message.reasoning_content
    if "".join(refusal):  # an empty one is dropped
        out["refusal"] = "".join(refusal)
    if message.extra_json:
        add_extras(out, message.extra_json, param and f"{param}.extra_json")
    return out
