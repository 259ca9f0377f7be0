"""Embeddings (OpenAI `POST /embeddings`): the request's checks, one upstream attempt, and
the reply read into vectors.

The engine routes an embeddings request as it routes a completion (`CompletionEngine.embed`:
the same deployments, retries, Retry-After, fallbacks, timeouts and cooldowns); this module
holds what differs. A request is OpenAI's JSON with `input` always a list: of texts, or of
token-id lists, never both. A provider serves embeddings when it has an `embed` method
(OpenAI-compatible upstreams, `echo/...`, LiteLLM); a deployment of another (Anthropic, a
local model, a Codex sidecar) is the caller's error, InvalidRequest, not the upstream's.

A reply is read strictly, as an upstream's reply is untrusted: an object whose `data` holds
one `embedding` per input (a list of finite numbers, or the base64 of little-endian float32
bytes) with distinct `index`es, every vector of one length, `MAX_VALUES` numbers at most in
all (what one gRPC reply can carry). Anything else is an UpstreamError (502 at the door),
never a crash, a short list of vectors, nor a reply the mesh then fails to send.

Providers ask their upstream for the encoding they read best: OpenAI-compatible upstreams
are asked for base64 (2/5 of the floats' JSON: OpenAI's largest batch, 2048 inputs of
3,072 numbers, is ~33 MB instead of ~85 MB, which passed the transport's MAX_REPLY_BYTES),
and one that ignores it and answers floats is read as well. Vectors are converted by C
paths (base64 to an `array`, a list to an `array`), never number by number in Python, and
a reply of more than `_INLINE_VALUES` numbers is read in a worker thread, which gives the
event loop the GIL between vectors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._provider import Provider, ProviderCall
from ._types import Routing
from ._usage import clean_usage
from .errors import InvalidRequest, UpstreamError

__all__ = ["MAX_INPUTS", "MAX_VALUES", "Embedded", "attempt", "check", "upstream_body"]

#: The most inputs one request may hold (OpenAI's limit).
MAX_INPUTS = 2048
#: The most bytes of one gRPC message the mesh sends and its clients receive
#: (`grpc.max_send_message_length` in server/app.py, `grpc.max_receive_message_length` in
#: clients/_client.py).
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The most numbers one reply may hold, all vectors together: 4 bytes each in the
#: `EmbeddingResponse`, with 1 MiB left for the rest (each vector's index and lengths, at
#: most ~40 KB for `MAX_INPUTS`; model, usage, routing, manifest). Past it the mesh could
#: not send the reply (RESOURCE_EXHAUSTED, which a door answers 429 as if it were the
#: caller's quota): it is the upstream's UpstreamError instead, naming the size.
MAX_VALUES = (_MAX_MESSAGE_BYTES - 1024 * 1024) // 4
#: The most numbers a reply may hold to be read on the event loop (~10 ms); a larger one
#: is read in a worker thread.
_INLINE_VALUES = 256 * 1024
#: The request's keys that do not go upstream (`encoding_format` is how the door writes
#: the vectors; each provider asks its upstream for the encoding it reads best).
_NOT_UPSTREAM = frozenset({"model", "scillm", "encoding_format"})
#: The types of a JSON vector's numbers (a bool is an int to Python, not a number to JSON).
_NUMBER_TYPES = frozenset((float, int))


@dataclass
class Embedded:
    """A served embeddings request: one vector per input, in input order, the model that
    answered, the upstream's usage (None when it reported none) and the routing."""

    vectors: list[array[float]]
    model: str
    usage: dict[str, Any] | None
    routing: Routing


def check(request: Mapping[str, Any]) -> int:
    """Refuse what OpenAI refuses, naming the field; the number of inputs."""
    inputs = request.get("input")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("input must not be empty", param="input")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(f"input holds {len(inputs)} items; at most {MAX_INPUTS} are "
                             "allowed", param="input")
    texts = isinstance(inputs[0], str)
    for i, item in enumerate(inputs):
        if not isinstance(item, str if texts else list):
            raise InvalidRequest("input must be texts or token-id lists, not both",
                                 param=f"input[{i}]")
        if not item:
            raise InvalidRequest(f"input[{i}] is empty: every input must hold text or "
                                 "tokens", param=f"input[{i}]")
        if not texts and not all(type(t) is int and t >= 0 for t in item):
            raise InvalidRequest(f"input[{i}] must hold token ids (whole numbers, at "
                                 "least 0)", param=f"input[{i}]")
    dimensions = request.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise InvalidRequest("dimensions must be a whole number of at least 1",
                             param="dimensions")
    options = request.get("scillm")
    if isinstance(options, Mapping) and (options.get("cache") or options.get("deterministic")):
        raise InvalidRequest("embeddings are not cached, and are deterministic already: "
                             "scillm takes fallbacks, timeout_s and num_retries here",
                             param="scillm")
    return len(inputs)


def upstream_body(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request as sent upstream (a shallow copy; nested values are shared)."""
    return {k: v for k, v in request.items() if k not in _NOT_UPSTREAM}


async def attempt(provider: Provider, call: ProviderCall, inputs: int) -> Embedded:
    """One upstream call (the engine holds it to the call's timeout), its reply read (see
    the module)."""
    embed = getattr(provider, "embed", None)
    if embed is None:
        raise InvalidRequest(f"model {call.deployment.model_name!r} is served by "
                             f"{provider.name!r} (deployment {call.deployment.id}), which "
                             "serves no embeddings", param="model")
    reply = await embed(call)
    if _first_size(reply) * inputs > _INLINE_VALUES:
        # 2048 vectors of 3,072 numbers held the loop 128 ms inline; at most 12 ms so.
        return await asyncio.to_thread(read_reply, reply, call, inputs)
    return read_reply(reply, call, inputs)


def _first_size(reply: Any) -> int:
    """How many numbers the reply's first vector holds (0 for a reply of another shape)."""
    data = reply.get("data") if isinstance(reply, dict) else None
    first = data[0] if isinstance(data, list) and data else None
    return _size(first.get("embedding")) if isinstance(first, dict) else 0


def read_reply(reply: Any, call: ProviderCall, inputs: int) -> Embedded:
    """An upstream's embeddings list as `Embedded` (routing left blank)."""
    where = call.deployment.id
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, list):
        raise UpstreamError(f"{where}: the reply is not an embeddings list (no `data` array)")
    if len(data) != inputs:
        raise UpstreamError(f"{where}: the reply holds {len(data)} embeddings for {inputs} "
                            "inputs")
    at: list[int | None] = [None] * inputs  # by index: the position in `data`
    for i, item in enumerate(data):
        index = item.get("index", i) if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < inputs or at[index] is not None:
            raise UpstreamError(f"{where}: data[{i}] has no index of its own (an object "
                                f"with an index from 0 to {inputs - 1}, once each)")
        at[index] = i
    raws = [(i, data[i].get("embedding")) for i in at if i is not None]
    values = sum(_size(raw) for _, raw in raws)
    if values > MAX_VALUES:  # counted before any is converted
        raise UpstreamError(f"{where}: the reply holds {values:,} numbers ({inputs} vectors); "
                            f"at most {MAX_VALUES:,} fit in one reply of the mesh (64 MiB): "
                            "ask for fewer inputs or dimensions")
    done = [_vector(raw, f"{where}: data[{i}].embedding") for i, raw in raws]
    if len({len(v) for v in done}) != 1 or not done[0]:
        raise UpstreamError(f"{where}: the vectors are empty or of different lengths")
    model = reply.get("model")
    return Embedded(done, model if isinstance(model, str) and model else call.model,
                    clean_usage(reply.get("usage"), where), Routing())


def _size(raw: Any) -> int:
    """How many numbers a vector as received holds (its base64's, padding aside); 0 for
    what is no vector (`_vector` refuses it)."""
    if isinstance(raw, str):
        return (len(raw) * 3 // 4 - raw.count("=", -2)) // 4
    return len(raw) if isinstance(raw, list) else 0


def _vector(raw: Any, where: str) -> array[float]:
    """A vector: finite numbers, or the base64 of little-endian float32 bytes."""
    if isinstance(raw, str):
        try:
            packed = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise UpstreamError(f"{where} is a string that is not base64") from None
        if len(packed) % 4:
            raise UpstreamError(f"{where}: {len(packed)} bytes are no float32 vector")
        out = array("f")
        out.frombytes(packed)
        if sys.byteorder == "big":
            out.byteswap()
    elif isinstance(raw, list) and set(map(type, raw)) <= _NUMBER_TYPES:
        try:
            out = array("f", raw)
        except OverflowError:  # an integer past a double's range
            raise UpstreamError(f"{where} holds a number out of range") from None
    else:
        raise UpstreamError(f"{where} is neither a list of numbers nor base64")
    if not math.isfinite(sum(out)):  # a double's sum of float32s is finite unless one is not
        raise UpstreamError(f"{where} holds a number that is not finite (or past float32's "
                            "range)")
    return out
