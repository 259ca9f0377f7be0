"""What a completion stream made: its chunks joined into the completion it streamed.

The run store keeps a finished stream as the completion it made (each choice's text, its
tool calls, refusal, reasoning and logprobs, finish reasons; the end's usage, routing and
manifest), so that its page and `scillm runs show` show the answer, and a stream that
ended early with what it had made so far; replay joins a replayed stream the same way to
compare the two (`_replay`).
"""

from __future__ import annotations

from scillm.completion.v1 import completion_pb2 as pb

__all__ = ["StreamSoFar"]


class _Call:
    """One tool call as streamed so far."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class _Choice:
    """One choice as streamed so far."""

    __slots__ = ("calls", "finish", "logprobs", "reasoning", "refusal", "role", "text",
                 "text_logprobs")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.role: pb.Role.ValueType = pb.ROLE_UNSPECIFIED
        self.finish: pb.FinishReason.ValueType = pb.FINISH_REASON_UNSPECIFIED
        #: Tool calls by their index.
        self.calls: dict[int, _Call] = {}
        self.refusal: list[str] = []
        self.reasoning: list[str] = []
        self.logprobs: pb.Logprobs | None = None
        #: A text completion's (`add_text`).
        self.text_logprobs: pb.TextLogprobs | None = None


class StreamSoFar:
    """A stream's chunks, chat's (`add_chat`) or text completions' (`add_text`), joined:
    `chat` and `text` give the completion they made, `chat_so_far` and `text_so_far`
    what they have made so far. Kept only where a store keeps the run."""

    __slots__ = ("_choices", "last")

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        #: The last chunk (its id, time and model are the completion's).
        self.last: pb.CompletionChunk | pb.TextCompletionChunk | None = None

    def _choice(self, index: int) -> _Choice:
        made = self._choices.get(index)
        if made is None:
            made = self._choices[index] = _Choice()
        return made

    def add_chat(self, chunk: pb.CompletionChunk) -> None:
        self.last = chunk
        for choice in chunk.choices:
            made = self._choice(choice.index)
            delta = choice.delta
            if delta.content:
                made.text.append(delta.content)
            if delta.role:
                made.role = delta.role
            for piece in delta.tool_calls:
                call = made.calls.get(piece.index)
                if call is None:
                    call = made.calls[piece.index] = _Call()
                if piece.id:
                    call.id = piece.id
                if piece.name:  # sent once; a provider repeating it does not double it
                    call.name = piece.name
                call.arguments.append(piece.arguments)
            if delta.refusal:
                made.refusal.append(delta.refusal)
            if delta.reasoning_content:
                made.reasoning.append(delta.reasoning_content)
            if choice.finish_reason:
                made.finish = choice.finish_reason
            if choice.HasField("logprobs"):
                if made.logprobs is None:
                    made.logprobs = pb.Logprobs()
                made.logprobs.content.extend(choice.logprobs.content)
                made.logprobs.refusal.extend(choice.logprobs.refusal)

    def add_text(self, chunk: pb.TextCompletionChunk) -> None:
        self.last = chunk
        for choice in chunk.choices:
            made = self._choice(choice.index)
            made.text.append(choice.text)
            if choice.finish_reason:
                made.finish = choice.finish_reason
            if choice.HasField("logprobs"):
                if made.text_logprobs is None:
                    made.text_logprobs = pb.TextLogprobs()
                made.text_logprobs.tokens.extend(choice.logprobs.tokens)
                made.text_logprobs.top_logprobs_absent |= choice.logprobs.top_logprobs_absent
                made.text_logprobs.text_offset_absent |= choice.logprobs.text_offset_absent

    def chat_so_far(self) -> pb.CompletionResponse | None:
        """The chat completion made so far; None before the first chunk."""
        return None if self.last is None else self._chat()

    def chat(self, end: pb.CompletionStreamEnd) -> pb.CompletionResponse:
        """The chat completion the stream made, with its `end`'s usage, routing and
        manifest."""
        made = self._chat()
        made.id = made.id or end.id
        made.usage.CopyFrom(end.usage)
        made.routing.CopyFrom(end.routing)
        made.manifest.CopyFrom(end.manifest)
        return made

    def _chat(self) -> pb.CompletionResponse:
        """The chunks so far as one chat completion. A choice's message holds its text (a
        part, unless it only called tools or refused), its refusal (a part after it, as a
        unary reply's), its reasoning and its tool calls in their order."""
        made = pb.CompletionResponse()
        if self.last is not None:
            made.id, made.created, made.model = self.last.id, self.last.created, self.last.model
        for index in sorted(self._choices):
            choice = self._choices[index]
            out = made.choices.add(index=index, finish_reason=choice.finish)
            message = out.message
            message.role = choice.role or pb.ROLE_ASSISTANT
            if choice.text or not (choice.calls or choice.refusal):
                message.content.add(text="".join(choice.text))
            if choice.refusal:
                message.content.add(refusal="".join(choice.refusal))
            if choice.reasoning:
                message.reasoning_content = "".join(choice.reasoning)
            for call in (choice.calls[i] for i in sorted(choice.calls)):
                message.tool_calls.add(id=call.id, function=pb.FunctionCall(
                    name=call.name, arguments="".join(call.arguments)))
            if choice.logprobs is not None:
                out.logprobs.CopyFrom(choice.logprobs)
        return made

    def text_so_far(self) -> pb.TextCompletionResponse | None:
        """The text completion made so far; None before the first chunk."""
        return None if self.last is None else self._text()

    def text(self, end: pb.CompletionStreamEnd) -> pb.TextCompletionResponse:
        """The text completion the stream made, with its `end`'s usage, routing and
        manifest."""
        made = self._text()
        made.usage.CopyFrom(end.usage)
        made.routing.CopyFrom(end.routing)
        made.manifest.CopyFrom(end.manifest)
        return made

    def _text(self) -> pb.TextCompletionResponse:
        made = pb.TextCompletionResponse()
        if self.last is not None:
            made.id, made.created, made.model = self.last.id, self.last.created, self.last.model
        for index in sorted(self._choices):
            choice = self._choices[index]
            out = made.choices.add(index=index, text="".join(choice.text),
                                   finish_reason=choice.finish)
            if choice.text_logprobs is not None:
                out.logprobs.CopyFrom(choice.text_logprobs)
        return made
