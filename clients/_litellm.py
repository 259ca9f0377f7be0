"""LiteLLM-style functions for people migrating: `completion`, `acompletion` (and, in
`_batch`, `parallel_acompletions`). They talk to a running mesh and return OpenAI-shaped
dicts.

The mesh address is `target=`, else `$SCILLM_TARGET`, else 127.0.0.1:50051.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from . import openai_wire
from ._client import ScillmClient

__all__ = ["acompletion", "completion", "default_target"]


def default_target(target: str | None) -> str:
    """`target`, else `$SCILLM_TARGET`, else 127.0.0.1:50051."""
    return target or os.environ.get("SCILLM_TARGET", "127.0.0.1:50051")


def _with_extras(body: dict[str, Any], routing: Any, json_valid: bool | None) -> dict[str, Any]:
    body["scillm"] = {"routing": openai_wire.routing_from_proto(routing)}
    if json_valid is not None:
        body["scillm"]["json_valid"] = json_valid
    return body


async def _stream_dicts(client: ScillmClient, body: Mapping[str, Any], owned: bool,
                        ) -> AsyncIterator[dict[str, Any]]:
    try:
        async for event in client.completion.stream(body):
            if event.HasField("chunk"):
                yield openai_wire.chunk_from_proto(event.chunk)
            else:
                yield {"id": event.end.id, "object": "chat.completion.chunk", "choices": [],
                       "usage": openai_wire.usage_from_proto(event.end.usage),
                       "scillm": {"routing": openai_wire.routing_from_proto(event.end.routing)}}
    finally:
        if owned:
            await client.close()


async def acompletion(model: str, messages: Sequence[Mapping[str, Any]], *,
                      stream: bool = False, target: str | None = None,
                      client: ScillmClient | None = None, timeout: float = 600.0,
                      **params: Any) -> Any:
    """One chat completion as OpenAI's dict, or an async iterator of chunk dicts."""
    body = {"model": model, "messages": list(messages), **params}
    owned = client is None
    active = client or ScillmClient(default_target(target))
    if stream:
        return _stream_dicts(active, body, owned)
    try:
        reply = await active.completion.create(body, timeout=timeout)
    finally:
        if owned:
            await active.close()
    out = openai_wire.response_from_proto(reply)
    return _with_extras(out, reply.routing,
                        reply.json_valid if reply.HasField("json_valid") else None)


def completion(model: str, messages: Sequence[Mapping[str, Any]], *,
               target: str | None = None, timeout: float = 600.0, **params: Any,
               ) -> dict[str, Any]:
    """Blocking `acompletion` (not streamed). Not for use inside a running event loop."""
    result: dict[str, Any] = asyncio.run(
        acompletion(model, messages, target=target, timeout=timeout, **params))
    return result
