"""A stored completion as its page shows it: the messages asked and the choices given."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2 as cp

from ._views import enum_name

__all__ = ["CompletionView", "completion_view"]


@dataclass(frozen=True)
class CompletionView:
    """The request's messages and the response's choices, as (role or reason, text)."""

    messages: list[tuple[str, str]]
    choices: list[tuple[str, str]]
    usage: common_pb2.Usage | None


def _text(message: cp.Message) -> str:
    return "\n".join(p.text for p in message.content if p.WhichOneof("part") == "text")


def completion_view(request: Message, result: Message) -> CompletionView:
    """The page's content for a completion run (unary or streamed)."""
    inner = request.request if isinstance(request, cp.CompletionStreamRequest) else request
    messages = [(enum_name(cp.Role, m.role), _text(m))
                for m in getattr(inner, "messages", [])]
    choices = [(enum_name(cp.FinishReason, c.finish_reason), _text(c.message))
               for c in getattr(result, "choices", [])]
    usage = result.usage if isinstance(result, cp.CompletionResponse | cp.CompletionStreamEnd) \
        else None
    return CompletionView(messages, choices, usage)
