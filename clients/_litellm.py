"""LiteLLM-style functions for people migrating: `completion`, `acompletion`,
`parallel_acompletions`. They talk to a running mesh and return OpenAI-shaped dicts.

The mesh address is `target=`, else `$SCILLM_TARGET`, else 127.0.0.1:50051.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from . import openai_wire
from ._client import ScillmClient

__all__ = ["acompletion", "completion", "parallel_acompletions"]


def _target(target: str | None) -> str:
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
    active = client or ScillmClient(_target(target))
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


async def parallel_acompletions(requests: Sequence[Mapping[str, Any]], *,
                                concurrency: int = 8, preserve_order: bool = True,
                                return_exceptions: bool = True, target: str | None = None,
                                timeout: float = 600.0) -> list[Any]:
    """Fan out many requests (each OpenAI's request dict) over one channel.

    With preserve_order the results line up with `requests`, else they come in
    completion order. With return_exceptions a failure is returned in its slot
    instead of raised.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    gate = asyncio.Semaphore(concurrency)
    async with ScillmClient(_target(target)) as client:
        async def one(body: Mapping[str, Any]) -> Any:
            async with gate:
                req = dict(body)
                return await acompletion(req.pop("model"), req.pop("messages"), client=client,
                                         timeout=timeout, **req)
        tasks = [asyncio.ensure_future(one(r)) for r in requests]
        if preserve_order:
            return list(await asyncio.gather(*tasks, return_exceptions=return_exceptions))
        out: list[Any] = []
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    out.append(await fut)
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    out.append(exc)
        finally:
            for t in tasks:
                t.cancel()
        return out
