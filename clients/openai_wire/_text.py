"""A text completion (OpenAI's legacy `/completions`), OpenAI JSON <->
`TextCompletionRequest` / `TextCompletionResponse` / `TextCompletionChunk`.

`prompt` is a string, an array of strings, an array of token ids, or an array of such
arrays, as OpenAI takes it; the proto holds a list of prompts, each a text or token ids.
What the proto cannot hold (a number among texts, `true`, a token id past int64, a
`max_tokens` past int32) is refused here naming the item; what it can hold but OpenAI
refuses (no prompt, n past best_of, logprobs past 5, ...) is the server's to refuse, for
every door alike (server/completion/_text.py). Unknown keys (`best_of`, `logit_bias`,
`stream`) travel in `extra_body`.

A choice's `logprobs` is OpenAI's legacy object, four lists of one entry per token:

    {"text_offset": [0, 3], "token_logprobs": [null, -0.5], "tokens": ["The", " cat"],
     "top_logprobs": [null, {" cat": -0.5, " dog": -1.2}]}

and `TextLogprobs` one message per token: a null entry is an unset field, and a list the
upstream gave as null (`top_logprobs`, `text_offset`) is said so (`top_logprobs_absent`,
`text_offset_absent`) and written back as null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scillm.completion.v1 import completion_pb2 as pb

from ..errors import InvalidRequestError
from ._embeddings import _token_ids
from ._request import options_from_proto, options_to_proto, required_model
from ._values import (
    _FINISH_NAMES,
    FINISH_REASONS,
    _expect,
    _number,
)

__all__ = ["text_chunk_from_proto", "text_chunk_to_proto", "text_request_from_proto",
           "text_request_to_proto", "text_response_from_proto", "text_response_to_proto"]

#: The optional numbers of the request: JSON key -> Python type (int fields are int32,
#: `seed` int64).
_NUMBERS: dict[str, type] = {
    "max_tokens": int, "temperature": float, "top_p": float, "n": int,
    "presence_penalty": float, "frequency_penalty": float, "seed": int, "logprobs": int}
#: The request keys read here; any other goes to `extra_body`, then to the provider
#: (`stream`: refused unless false, and then not passed on).
_HANDLED = frozenset({*_NUMBERS, "model", "prompt", "stop", "echo", "suffix", "user",
                      "scillm", "stream", "stream_options"})


def _prompts(value: Any) -> list[pb.EmbeddingInput]:
    """OpenAI's `prompt` as the proto's prompts (an empty list stays empty, for the
    server to refuse)."""
    if isinstance(value, str):
        return [pb.EmbeddingInput(text=value)]
    items = _expect(value, list, "prompt")
    if items and all(type(i) is int for i in items):  # one prompt, as token ids
        return [pb.EmbeddingInput(tokens=_token_ids(items, "prompt"))]
    prompts = []
    for i, item in enumerate(items):
        if not isinstance(item, str | list):
            raise InvalidRequestError(f"'prompt[{i}]' must be a string or an array of token "
                                      "ids", param=f"prompt[{i}]")
        prompts.append(pb.EmbeddingInput(text=item) if isinstance(item, str) else
                       pb.EmbeddingInput(tokens=_token_ids(item, f"prompt[{i}]")))
    return prompts


def text_request_to_proto(body: Mapping[str, Any]) -> pb.TextCompletionRequest:
    """OpenAI's completions request body as a `TextCompletionRequest`; InvalidRequestError
    naming the offending parameter."""
    model = required_model(body)
    if body.get("stream") not in (None, False):  # a stream would be its own call
        raise InvalidRequestError("a streamed text completion is its own call "
                                  "(CompletionClient.text_stream): leave out stream here",
                                  param="stream")
    if "prompt" not in body:
        raise InvalidRequestError("'prompt' is required", param="prompt")
    try:
        req = pb.TextCompletionRequest(model=model, prompt=_prompts(body["prompt"]))
        _fill(req, body)
    except UnicodeEncodeError:
        raise InvalidRequestError("the request holds a string that is not valid Unicode (a "
                                  "lone surrogate)") from None
    return req


def _fill(req: pb.TextCompletionRequest, body: Mapping[str, Any]) -> None:
    for key, kind in _NUMBERS.items():
        if body.get(key) is not None:
            setattr(req, key, _number(body[key], kind, key, bits=64 if key == "seed" else 32))
    stop = body.get("stop")
    if stop is not None:
        req.stop.extend([stop] if isinstance(stop, str) else
                        [_expect(s, str, "stop") for s in _expect(stop, list, "stop")])
    if body.get("echo") is not None:
        req.echo = _expect(body["echo"], bool, "echo")
    if body.get("suffix") is not None:
        req.suffix = _expect(body["suffix"], str, "suffix")
    if body.get("user") is not None:
        req.user = _expect(body["user"], str, "user")
    options_to_proto(req, body, _HANDLED)


def text_request_from_proto(req: pb.TextCompletionRequest) -> dict[str, Any]:
    """A `TextCompletionRequest` as the engine's request: OpenAI's JSON with `prompt` a
    list (texts, or token-id lists) and the routing options under `scillm`."""
    body: dict[str, Any] = {"model": req.model, "prompt": [
        item.text if item.WhichOneof("input") != "tokens" else list(item.tokens.ids)
        for item in req.prompt]}
    for key in (*_NUMBERS, "echo", "suffix"):
        if req.HasField(key):  # type: ignore[arg-type]
            body[key] = getattr(req, key)
    if req.stop:
        body["stop"] = list(req.stop)
    if req.user:
        body["user"] = req.user
    options_from_proto(req, body)
    return body


def text_response_to_proto(reply: Any) -> pb.TextCompletionResponse:
    """The engine's `TextCompleted` (`id`, `created`, `model`, `choices`) as a response
    (usage, routing and manifest are the servicer's to fill)."""
    out = pb.TextCompletionResponse(id=reply.id, created=reply.created, model=reply.model)
    for choice in reply.choices:
        entry = out.choices.add(index=choice["index"], text=choice["text"],
                                finish_reason=FINISH_REASONS[  # type: ignore[arg-type]
                                    choice["finish_reason"]])
        _logprobs_to_proto(choice.get("logprobs"), entry)
    return out


def text_response_from_proto(resp: pb.TextCompletionResponse) -> dict[str, Any]:
    """A `TextCompletionResponse` as OpenAI's `text_completion` object."""
    usage = resp.usage
    return {"id": resp.id, "object": "text_completion", "created": resp.created,
            "model": resp.model,
            "choices": [{"index": c.index, "text": c.text, "logprobs": _logprobs_from_proto(c),
                         "finish_reason": _FINISH_NAMES.get(c.finish_reason)}
                        for c in resp.choices],
            "usage": {"prompt_tokens": usage.prompt_tokens,
                      "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.total_tokens}}


def text_chunk_to_proto(chunk: Mapping[str, Any]) -> pb.TextCompletionChunk:
    """A streamed `text_completion` chunk as the engine reads it (`_text.StreamReader`:
    `id`, `created`, `model`, and choices of `index`, `text`, `finish_reason` null or
    named, `logprobs`) as a `TextCompletionChunk`."""
    out = pb.TextCompletionChunk(id=chunk["id"], created=chunk["created"], model=chunk["model"])
    for choice in chunk["choices"]:
        finish = choice["finish_reason"]
        entry = out.choices.add(index=choice["index"], text=choice["text"], finish_reason=(
            FINISH_REASONS[finish] if finish  # type: ignore[arg-type]
            else pb.FINISH_REASON_UNSPECIFIED))
        _logprobs_to_proto(choice.get("logprobs"), entry)
    return out


def text_chunk_from_proto(chunk: pb.TextCompletionChunk) -> dict[str, Any]:
    """A `TextCompletionChunk` as OpenAI's streamed `text_completion` chunk (no usage)."""
    return {"id": chunk.id, "object": "text_completion", "created": chunk.created,
            "model": chunk.model,
            "choices": [{"text": c.text, "index": c.index, "logprobs": _logprobs_from_proto(c),
                         "finish_reason": _FINISH_NAMES.get(c.finish_reason)}
                        for c in chunk.choices]}


def _logprobs_to_proto(logprobs: Mapping[str, Any] | None,
                       choice: pb.TextChoice | pb.TextChunkChoice) -> None:
    """OpenAI's legacy `logprobs` object (as the engine reads it: four lists of one length,
    the last two possibly None) into `choice.logprobs`; nothing for None."""
    if logprobs is None:
        return
    out = choice.logprobs
    out.SetInParent()  # set, even with no token: an empty object is not null
    tops, offsets = logprobs.get("top_logprobs"), logprobs.get("text_offset")
    out.top_logprobs_absent, out.text_offset_absent = tops is None, offsets is None
    for i, token in enumerate(logprobs["tokens"]):
        entry = out.tokens.add(token=token)
        value = logprobs["token_logprobs"][i]
        if value is not None:
            entry.logprob = value
        if tops is not None and tops[i] is not None:
            entry.top_logprobs.SetInParent()
            for name, top in tops[i].items():
                entry.top_logprobs.alternatives.add(token=name, logprob=top)
        if offsets is not None:
            entry.text_offset = offsets[i]


def _logprobs_from_proto(choice: pb.TextChoice | pb.TextChunkChoice) -> dict[str, Any] | None:
    """`choice.logprobs` as OpenAI's legacy object (the module docstring); None when
    unset."""
    if not choice.HasField("logprobs"):
        return None
    logprobs = choice.logprobs
    tokens = logprobs.tokens
    return {
        "text_offset": None if logprobs.text_offset_absent else [t.text_offset for t in tokens],
        "token_logprobs": [t.logprob if t.HasField("logprob") else None for t in tokens],
        "tokens": [t.token for t in tokens],
        "top_logprobs": None if logprobs.top_logprobs_absent else [
            {a.token: a.logprob for a in t.top_logprobs.alternatives}
            if t.HasField("top_logprobs") else None for t in tokens]}
