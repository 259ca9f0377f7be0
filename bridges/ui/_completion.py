"""A stored completion as its page shows it: the messages asked and the choices given."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message

from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2 as cp

from ._views import enum_name

__all__ = ["ChoiceView", "CompletionView", "completion_view"]


@dataclass(frozen=True)
class ChoiceView:
    """One choice as its page shows it: why it stopped, its text, and the tools it called
    (name, arguments), for a chat completion's (a stream's too: kept as the completion
    it made)."""

    reason: str
    text: str
    tool_calls: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class CompletionView:
    """The request's messages, as (role, text), and the response's choices: a text
    completion's prompts and continuations, or embeddings' inputs and vector sizes (no
    reason), in the same places."""

    messages: list[tuple[str, str]]
    choices: list[ChoiceView]
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
    streamed: its messages, and each choice's answer and tool calls), a text completion
    (its prompts, and each continuation) or embeddings (its inputs, and each vector's
    size). A chat stream kept before streams were kept as what they made holds no
    answer: its choices are none."""
    inner = getattr(request, "request", request)  # a stream's request wraps the call's
    usage = getattr(result, "usage", None)
    if isinstance(inner, cp.TextCompletionRequest):
        return CompletionView(
            [("prompt", _input(p)) for p in inner.prompt],
            [ChoiceView(enum_name(cp.FinishReason, c.finish_reason), c.text)
             for c in getattr(result, "choices", [])], usage)
    if isinstance(inner, cp.EmbeddingRequest):
        return CompletionView(
            [("input", _input(p)) for p in inner.input],
            [ChoiceView("", f"{len(v.embedding)} numbers")
             for v in getattr(result, "data", [])], usage)
    messages = [(enum_name(cp.Role, m.role), _text(m))
                for m in getattr(inner, "messages", [])]
    choices = [ChoiceView(enum_name(cp.FinishReason, c.finish_reason), _text(c.message),
                          [(t.function.name, t.function.arguments)
                           for t in c.message.tool_calls])
               for c in getattr(result, "choices", [])]
    return CompletionView(messages, choices, usage)
