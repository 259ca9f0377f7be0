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
    """The request's messages and the response's choices, as (role, text) and (finish
    reason, text): a text completion's prompts and continuations, or embeddings' inputs
    and vector sizes (no reason), in the same places."""

    messages: list[tuple[str, str]]
    choices: list[tuple[str, str]]
    usage: common_pb2.Usage | None


def _text(message: cp.Message) -> str:
    return "\n".join(p.text for p in message.content if p.WhichOneof("part") == "text")


def _input(item: cp.EmbeddingInput) -> str:
    """A prompt or an embedding input: its text, or how many token ids it is."""
    if item.WhichOneof("input") == "tokens":
        return f"{len(item.tokens.ids)} token ids"
    return item.text


def completion_view(request: Message, result: Message) -> CompletionView:
    """The page's content for a run of Completion's calls: a chat completion (unary or
    streamed), a text completion (its prompts, and each continuation) or embeddings (its
    inputs, and each vector's size)."""
    inner = getattr(request, "request", request)  # a stream's request wraps the call's
    usage = getattr(result, "usage", None)
    if isinstance(inner, cp.TextCompletionRequest):
        return CompletionView(
            [("prompt", _input(p)) for p in inner.prompt],
            [(enum_name(cp.FinishReason, c.finish_reason), c.text)
             for c in getattr(result, "choices", [])], usage)
    if isinstance(inner, cp.EmbeddingRequest):
        return CompletionView(
            [("input", _input(p)) for p in inner.input],
            [("", f"{len(v.embedding)} numbers") for v in getattr(result, "data", [])],
            usage)
    messages = [(enum_name(cp.Role, m.role), _text(m))
                for m in getattr(inner, "messages", [])]
    choices = [(enum_name(cp.FinishReason, c.finish_reason), _text(c.message))
               for c in getattr(result, "choices", [])]
    return CompletionView(messages, choices, usage)
