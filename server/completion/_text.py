"""Text completions (OpenAI's legacy `POST /completions`): the request's checks, one
upstream attempt, the reply (or stream) read strictly, and the echo provider's continuation.

The engine routes a text completion as it routes a chat completion
(`CompletionEngine.text_complete`: the same deployments, retries, Retry-After, fallbacks,
timeouts and cooldowns); this module holds what differs. A request is OpenAI's JSON with
`prompt` always a list: of texts, or of token-id lists, never both. Without `max_tokens`
every provider is asked for OpenAI's default for this endpoint, `DEFAULT_MAX_TOKENS` (16).
A provider serves text completions when it has a `text_complete` method, and streams them
when it has a `text_stream` one (OpenAI-compatible upstreams, `echo/...`, the local
llama.cpp model, LiteLLM: both); a deployment of another (Anthropic, a Codex sidecar) is
the caller's error, InvalidRequest.

`logprobs` (0 to 5) goes upstream as the caller set it, and each choice's `logprobs` comes
back in OpenAI's legacy shape (`_logprobs`). A provider that gives none answers without
them (null), as its chat completions do: `echo/...`, and the local model (llama.cpp gives
logprobs only to a model loaded with the logits of every position, which it does not
load). `stream` in a request's body is refused (a stream is its own call:
`CompletionEngine.text_stream`), as are cached or deterministic routing (text completions
are not cached).

A reply is read strictly, as an upstream's is untrusted: an object whose `choices` holds
one choice per prompt and `n` (distinct `index`es from 0), each with a `text` string, a
known `finish_reason` and a `logprobs` null (or absent) or of OpenAI's legacy shape: an
object of four lists of one length, `tokens` (texts), `token_logprobs` (numbers or null),
`top_logprobs` (null, or objects of token to number, or null) and `text_offset` (null, or
whole numbers), `MAX_TEXT_CHARS` characters in all at most (a token's and its
alternatives' texts counted, and `_NUMBER_CHARS` for each number). Anything else is an
UpstreamError (502 at the door), never a crash nor a short list of choices. A token with
half a UTF-16 surrogate pair (which no protobuf string holds) has U+FFFD in its place.

A stream (`CompletionEngine.text_stream`, routed as a chat stream is: retries and fallbacks
before the first chunk only) comes from a provider's `text_stream`, OpenAI's
`text_completion` chunks, and is read as strictly, chunk by chunk (`StreamReader`): each
choice an `index` from 0 to one less than the choices expected, a `text` string, a
`finish_reason` null or known and a `logprobs` as a reply's (those of the chunk's text), no
text after its choice finished, `MAX_TEXT_CHARS` in all at most; the stream ends with every
choice finished. A UTF-16 surrogate pair an upstream cut between two chunks is joined (a
half alone becomes U+FFFD), as in chat streams. The usage a chunk carries (OpenAI's last
one, with no choices) is kept for the stream's end.

The echo provider (`echo/...`) continues a prompt with the prompt's own words: its words
(whitespace-separated; a token-id prompt's words are its ids), each after one space, up to
`max_tokens` words (finish "length") or a stop sequence (finish "stop", the text cut before
it), words counted as tokens; with `echo` the prompt comes first. `suffix` is ignored, and
`logprobs` answered with none (null). The same request always gets the same text, streamed
(`echo_chunks`) or not: a stream sends each choice's text word by word (with `echo`, word
by word from the prompt's first), then its finish, then the usage.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._http import mended
from ._provider import Provider, ProviderCall, completion_id
from ._request import _RANGES
from ._types import Routing
from ._usage import clean_usage
from .errors import InvalidRequest, UpstreamError

__all__ = ["DEFAULT_MAX_TOKENS", "MAX_CHOICES", "MAX_PROMPTS", "MAX_TEXT_CHARS", "StreamReader",
           "TextCompleted", "attempt", "check", "echo_chunks", "echo_reply", "stream_of",
           "upstream_body"]

#: OpenAI's `max_tokens` when the request sets none.
DEFAULT_MAX_TOKENS = 16
#: The most prompts one request may hold.
MAX_PROMPTS = 2048
#: The most choices one reply may hold (prompts x n).
MAX_CHOICES = 2048
#: The most characters of text one reply may hold, all choices together (what one gRPC
#: reply of the mesh, 64 MiB, carries with room to spare for UTF-8 and the rest).
MAX_TEXT_CHARS = 16 * 1024 * 1024
#: The echo provider's longest continuation, in words (a model's context).
_ECHO_MAX_WORDS = 4096
#: The keys that do not go upstream.
_NOT_UPSTREAM = frozenset({"model", "scillm", "prompt"})
#: A reply's finish reasons this contract names.
_FINISHES = frozenset({"stop", "length", "content_filter"})
#: What a number of a choice's `logprobs` counts for against `MAX_TEXT_CHARS` (a double and
#: its tag in the reply, with room to spare).
_NUMBER_CHARS = 16
#: The largest `text_offset` one reply can hold (the contract's int32).
_MAX_OFFSET = 2**31 - 1


@dataclass
class TextCompleted:
    """A served text completion: OpenAI's `text_completion` fields, its choices each
    `{"index", "text", "finish_reason", "logprobs"}` in index order (`logprobs` None, or as
    `_logprobs` reads them), the upstream's usage (None when it reported none) and the
    routing."""

    id: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None
    routing: Routing = field(default_factory=Routing)


def check(request: Mapping[str, Any]) -> int:
    """Refuse what OpenAI refuses, naming the field; the number of choices to expect."""
    prompts = request.get("prompt")
    if not isinstance(prompts, list) or not prompts:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidRequest(f"prompt holds {len(prompts)} prompts; at most {MAX_PROMPTS} "
                             "are allowed", param="prompt")
    texts = isinstance(prompts[0], str)
    for i, item in enumerate(prompts):
        if not isinstance(item, str if texts else list) or not (
                texts or (item and all(type(t) is int and t >= 0 for t in item))):
            raise InvalidRequest(f"prompt[{i}] must be a text, or a non-empty list of token "
                                 "ids, like every other prompt", param=f"prompt[{i}]")
    n = _whole(request, "n", 1, 128, 1)
    best_of = _whole(request, "best_of", 1, 20, n)
    if best_of < n:
        raise InvalidRequest(f"best_of ({best_of}) must be at least n ({n})", param="best_of")
    _whole(request, "max_tokens", 0, 2**31 - 1, 0)
    _whole(request, "logprobs", 0, 5, 0)
    for key, low, high in _RANGES:
        value = request.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not low <= value <= high):
            raise InvalidRequest(f"{key} must be between {low:g} and {high:g}", param=key)
    stop = request.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
        raise InvalidRequest("stop must be a string or a list of at most 4 strings",
                             param="stop")
    if request.get("stream") not in (None, False):
        raise InvalidRequest("a streamed text completion is its own call (gRPC "
                             "TextCompletionStream; at the OpenAI door, \"stream\": true): "
                             "leave stream out of this one", param="stream")
    if request.get("echo") is not None and type(request["echo"]) is not bool:
        raise InvalidRequest("echo must be true or false", param="echo")
    if request.get("suffix") is not None and not isinstance(request["suffix"], str):
        raise InvalidRequest("suffix must be a string", param="suffix")
    if len(prompts) * n > MAX_CHOICES:
        raise InvalidRequest(f"{len(prompts)} prompts with n {n} are {len(prompts) * n} "
                             f"choices; at most {MAX_CHOICES} are allowed", param="n")
    options = request.get("scillm")
    if isinstance(options, Mapping) and (options.get("cache") or options.get("deterministic")):
        raise InvalidRequest("text completions are not cached: scillm takes fallbacks, "
                             "timeout_s and num_retries here", param="scillm")
    return len(prompts) * n


def _whole(request: Mapping[str, Any], key: str, low: int, high: int, default: int) -> int:
    """`request[key]`, a whole number from `low` to `high`, or `default` when absent."""
    value = request.get(key)
    if value is None:
        return default
    if type(value) is not int or not low <= value <= high:
        raise InvalidRequest(f"{key} must be a whole number from {low} to {high}", param=key)
    return value


def upstream_body(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request as sent upstream: one prompt as itself (a text, or token ids), several
    as a list; `max_tokens` OpenAI's default when the request sets none."""
    body = {k: v for k, v in request.items() if k not in _NOT_UPSTREAM}
    prompts = request["prompt"]
    body["prompt"] = prompts[0] if len(prompts) == 1 else prompts
    body.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    return body


async def attempt(provider: Provider, call: ProviderCall, choices: int) -> TextCompleted:
    """One upstream call (the engine holds it to the call's timeout), its reply read."""
    serve = getattr(provider, "text_complete", None)
    if serve is None:
        raise _not_served(provider, call)
    return read_reply(await serve(call), call, choices)


def stream_of(provider: Provider, call: ProviderCall) -> AsyncGenerator[Any, None]:
    """The provider's stream of `text_completion` chunks for `call` (not started);
    InvalidRequest when its provider streams no text completions."""
    serve = getattr(provider, "text_stream", None)
    if serve is None:
        raise _not_served(provider, call)
    stream: AsyncGenerator[Any, None] = serve(call)
    return stream


def _not_served(provider: Provider, call: ProviderCall) -> InvalidRequest:
    return InvalidRequest(f"model {call.deployment.model_name!r} is served by "
                          f"{provider.name!r} (deployment {call.deployment.id}), which "
                          "serves no text completions", param="model")


def read_reply(reply: Any, call: ProviderCall, expected: int) -> TextCompleted:
    """An upstream's `text_completion` as `TextCompleted` (see the module docstring)."""
    where = call.deployment.id
    raw = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(raw, list):
        raise UpstreamError(f"{where}: the reply is not a text completion (no `choices` "
                            "array)")
    if len(raw) != expected:
        raise UpstreamError(f"{where}: the reply holds {len(raw)} choices for {expected}")
    choices: list[dict[str, Any] | None] = [None] * expected
    chars = 0
    for i, item in enumerate(raw):
        index = item.get("index", i) if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < expected or choices[index] is not None:
            raise UpstreamError(f"{where}: choices[{i}] has no index of its own (an object "
                                f"with an index from 0 to {expected - 1}, once each)")
        assert isinstance(item, dict)
        text, finish = item.get("text"), item.get("finish_reason")
        if not isinstance(text, str) or finish not in _FINISHES:
            raise UpstreamError(f"{where}: choices[{i}] needs a text and a finish_reason "
                                "(stop, length or content_filter)")
        logprobs, size = _logprobs(item.get("logprobs"), where, f"choices[{i}]")
        chars += len(text) + size
        choices[index] = {"index": index, "text": text, "finish_reason": finish,
                          "logprobs": logprobs}
    if chars > MAX_TEXT_CHARS:
        raise UpstreamError(f"{where}: the reply holds {chars:,} characters; at most "
                            f"{MAX_TEXT_CHARS:,} fit in one reply of the mesh")
    rid, created, model = (reply.get(k) for k in ("id", "created", "model"))
    return TextCompleted(
        rid if isinstance(rid, str) and rid else completion_id("cmpl"),
        created if type(created) is int and created >= 0 else int(time.time()),
        model if isinstance(model, str) and model else call.model,
        [c for c in choices if c is not None], clean_usage(reply.get("usage"), where))


class StreamReader:
    """One attempt's stream of `text_completion` chunks, read strictly (the module
    docstring): `read` each chunk as it comes, `end` when the stream has ended.

    Every chunk read goes on with the id, time and model of the first (or ones made here
    when the upstream sent none), and its choices as
    `{"index", "text", "finish_reason", "logprobs"}` (as `TextCompleted`'s).
    """

    def __init__(self, call: ProviderCall, expected: int) -> None:
        self._where = call.deployment.id
        self._model = call.model
        self._expected = expected
        self._finished = [False] * expected
        self._chars = 0
        #: The high half of a surrogate pair waiting for its other half, by choice index.
        self._held: dict[int, str] = {}
        self._head: dict[str, Any] | None = None
        #: The upstream's usage, once a chunk has carried one (cleaned: `clean_usage`).
        self.usage: dict[str, Any] | None = None

    def read(self, raw: Any) -> dict[str, Any] | None:
        """`raw` as a chunk to pass on, or None when it holds no choice (the usage alone,
        kept in `usage`); UpstreamError when it is no chunk of this stream."""
        where = self._where
        if not isinstance(raw, dict):
            raise UpstreamError(f"{where}: a chunk of the stream is not an object")
        if raw.get("usage") is not None:
            self.usage = clean_usage(raw["usage"], where)
        items = raw.get("choices")
        if not items:
            return None
        if not isinstance(items, list):
            raise UpstreamError(f"{where}: a chunk's choices are not a list")
        if self._head is None:
            rid, created, model = (raw.get(k) for k in ("id", "created", "model"))
            self._head = {
                "id": rid if isinstance(rid, str) and rid else completion_id("cmpl"),
                "object": "text_completion",
                "created": created if type(created) is int and created >= 0
                else int(time.time()),
                "model": model if isinstance(model, str) and model else self._model}
        return {**self._head, "choices": [self._choice(i, item) for i, item in enumerate(items)]}

    def _choice(self, i: int, item: Any) -> dict[str, Any]:
        where, expected = self._where, self._expected
        index = item.get("index", 0 if expected == 1 else None) if isinstance(item, dict) \
            else None
        if type(index) is not int or not 0 <= index < expected:
            raise UpstreamError(f"{where}: a chunk's choices[{i}] has no index of its own "
                                f"(an object with an index from 0 to {expected - 1})")
        assert isinstance(item, dict)
        text, finish = item.get("text"), item.get("finish_reason")
        if not isinstance(text, str) or (finish is not None and finish not in _FINISHES):
            raise UpstreamError(f"{where}: a chunk's choices[{i}] needs a text and a "
                                "finish_reason null, stop, length or content_filter")
        if self._finished[index]:
            raise UpstreamError(f"{where}: choice {index} went on after it finished")
        logprobs, size = _logprobs(item.get("logprobs"), where, f"a chunk's choices[{i}]")
        self._chars += len(text) + size
        if self._chars > MAX_TEXT_CHARS:
            raise UpstreamError(f"{where}: the stream holds more than {MAX_TEXT_CHARS:,} "
                                "characters, the most one text completion of the mesh holds")
        if self._held or _SURROGATE.search(text):
            text = self._join_halves(index, text)
        if finish is not None:
            self._finished[index] = True
            self._held.pop(index, None)  # a half still waiting goes: nothing follows it
        return {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}

    def _join_halves(self, index: int, text: str) -> str:
        """`text` after the half its choice's last text ended with, ending before a high
        half (kept for the next); a half alone as U+FFFD."""
        text = self._held.pop(index, "") + text
        if text and "\ud800" <= text[-1] <= "\udbff":
            self._held[index] = text[-1]
            text = text[:-1]
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")

    def end(self) -> None:
        """UpstreamError unless every choice has finished."""
        if not all(self._finished):
            missing = self._finished.index(False)
            raise UpstreamError(f"{self._where}: the stream ended before choice {missing} "
                                "finished")


#: A UTF-16 surrogate: half of a character, which no protobuf string (nor UTF-8) holds.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _logprobs(raw: Any, where: str, at: str) -> tuple[dict[str, Any] | None, int]:
    """A choice's `logprobs` read strictly (the module docstring), and what it counts for
    against `MAX_TEXT_CHARS`: None for null (or none); else OpenAI's legacy object,
    `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, its numbers floats (the
    last two lists None when the upstream gave none). UpstreamError otherwise."""
    if raw is None:
        return None, 0
    tokens = raw.get("tokens") if isinstance(raw, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise UpstreamError(f"{where}: {at}.logprobs is not OpenAI's logprobs object (a "
                            "`tokens` array of texts, and its token_logprobs, top_logprobs "
                            "and text_offset)")
    assert isinstance(raw, dict)
    count = len(tokens)
    values, top, offsets = (raw.get(k) for k in ("token_logprobs", "top_logprobs",
                                                  "text_offset"))
    if not isinstance(values, list) or len(values) != count or not all(
            v is None or _is_number(v) for v in values):
        raise UpstreamError(f"{where}: {at}.logprobs.token_logprobs must hold a number (or "
                            f"null) for each of its {count} tokens")
    if top is not None and (not isinstance(top, list) or len(top) != count or not all(
            t is None or (isinstance(t, dict) and all(
                isinstance(k, str) and _is_number(v) for k, v in t.items())) for t in top)):
        raise UpstreamError(f"{where}: {at}.logprobs.top_logprobs must hold an object of "
                            f"token to number (or null) for each of its {count} tokens")
    if offsets is not None and (not isinstance(offsets, list) or len(offsets) != count or not all(
            type(o) is int and 0 <= o <= _MAX_OFFSET for o in offsets)):
        raise UpstreamError(f"{where}: {at}.logprobs.text_offset must hold a whole number "
                            f"from 0 for each of its {count} tokens")
    size = sum(map(len, tokens)) + _NUMBER_CHARS * count * 2
    alternatives = None
    if top is not None:
        alternatives = [None if t is None else {mended(k): float(v) for k, v in t.items()}
                        for t in top]
        size += sum(len(k) + _NUMBER_CHARS for t in top if t for k in t)
    return {"tokens": [mended(t) for t in tokens],
            "token_logprobs": [None if v is None else float(v) for v in values],
            "top_logprobs": alternatives, "text_offset": offsets}, size


def _is_number(value: Any) -> bool:
    """Whether `value` is a finite JSON number a double holds (not true or false)."""
    if type(value) is int:
        return abs(value) <= 2**53
    return type(value) is float and math.isfinite(value)


#: A word with the space before it, or the space after the last.
_PIECE = re.compile(r"\s*\S+|\s+")


def echo_chunks(body: Mapping[str, Any], model: str) -> list[dict[str, Any]]:
    """The echo provider's stream of `text_completion` chunks: `echo_reply`'s texts, each
    choice word by word, then its finish; the usage last, alone."""
    reply = echo_reply(body, model)
    head = {k: reply[k] for k in ("id", "object", "created", "model")}
    chunks = []
    for choice in reply["choices"]:
        index = choice["index"]
        chunks += [{**head, "choices": [{"index": index, "text": piece, "logprobs": None,
                                         "finish_reason": None}]}
                   for piece in _PIECE.findall(choice["text"])]
        chunks.append({**head, "choices": [{"index": index, "text": "", "logprobs": None,
                                            "finish_reason": choice["finish_reason"]}]})
    chunks.append({**head, "choices": [], "usage": reply["usage"]})
    return chunks


def echo_reply(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The echo provider's `text_completion` for an upstream body (the module docstring)."""
    prompts = body["prompt"]
    if isinstance(prompts, str) or not prompts or type(prompts[0]) is int:
        prompts = [prompts]
    n, limit = int(body.get("n") or 1), min(int(body["max_tokens"]), _ECHO_MAX_WORDS)
    stop = body.get("stop") or ()
    stops = [stop] if isinstance(stop, str) else [s for s in stop if s]
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for p, prompt in enumerate(prompts):
        words = prompt.split() if isinstance(prompt, str) else [str(t) for t in prompt]
        prompt_tokens += len(words)
        said, finish = words[:limit], "length" if len(words) > limit else "stop"
        text = "".join(" " + w for w in said)
        cuts = [i for s in stops if (i := text.find(s)) >= 0]
        if cuts:
            text, finish = text[:min(cuts)], "stop"
        completion_tokens += len(text.split()) * n
        if body.get("echo"):
            text = (prompt if isinstance(prompt, str) else " ".join(map(str, prompt))) + text
        choices += [{"index": p * n + j, "text": text, "finish_reason": finish,
                     "logprobs": None} for j in range(n)]
    return {"id": completion_id("cmpl"), "object": "text_completion",
            "created": int(time.time()), "model": f"echo/{model}", "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
