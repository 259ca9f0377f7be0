"""Model names that reach other services through `/v1/chat/completions`, as the seed did:

    codeworld, codeworld/...      -> CodeWorldService.CodeWorldRun
    agent/<model>                 -> AgentService.AgentRun (driven by <model>)
    certainly/<backend>, lean4/.. -> ProveService.Prove

The reply is a `chat.completion` whose content is the run's one-line outcome (the agent's
final answer), with the structured result in the extra field `scillm`. Streamed, every
event becomes a chunk carrying it in `scillm.event` (no content), then the outcome.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from scillm.clients import ScillmClient

from ..seed import agent as agent_seed
from ..seed import codeworld as codeworld_seed
from ..seed import prove as prove_seed

__all__ = ["RoutedRun", "route"]


def _to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@dataclass
class RoutedRun:
    """A service run behind a model name: its events and how to render them."""

    service: str
    model: str
    events: AsyncIterator[Any]
    #: The terminal event's field name in the oneof envelope.
    terminal: str
    #: Outcome text from the terminal message.
    text: Callable[[Any], str]

    async def collect(self) -> tuple[str, dict[str, Any]]:
        """Run to the end; the reply text and the structured result."""
        seen: list[dict[str, Any]] = []
        async for event in self.events:
            kind = event.WhichOneof("event")
            if kind == self.terminal:
                body = getattr(event, kind)
                return self.text(body), {"service": self.service, "result": _to_dict(body),
                                         "events": seen}
            seen.append({kind: _to_dict(getattr(event, kind))})
        raise RuntimeError(f"{self.service} stream ended without its {self.terminal} event")

    async def chunks(self, completion_id: str) -> AsyncIterator[dict[str, Any]]:
        """OpenAI chunks: one per event (in `scillm.event`), then the outcome text."""
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk",
                                   "created": created, "model": self.model,
                                   "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": finish}]}
            if extra is not None:
                out["scillm"] = extra
            return out

        yield chunk({"role": "assistant", "content": ""})
        async for event in self.events:
            kind = event.WhichOneof("event")
            body = getattr(event, kind)
            if kind == self.terminal:
                yield chunk({"content": self.text(body)})
                yield chunk({}, "stop", {"service": self.service, "result": _to_dict(body)})
                return
            yield chunk({}, None, {"event": {kind: _to_dict(body)}})


def _agent_text(final: Any) -> str:
    return str(final.answer or final.error)


def route(client: ScillmClient, body: Mapping[str, Any], request_id: str,
          metadata: Sequence[tuple[str, str]] = ()) -> RoutedRun | None:
    """The run a model name routes to, or None for an ordinary completion model."""
    model = body.get("model")
    if not isinstance(model, str):
        return None
    if model == "codeworld" or model.startswith("codeworld/"):
        codeworld = codeworld_seed.request_from_envelope(body)
        return RoutedRun("codeworld", model,
                         client.codeworld.run(codeworld, request_id=request_id,
                                              metadata=metadata),
                         "summary", codeworld_seed.summary_text)
    if model.startswith("agent/"):
        agent = agent_seed.request_from_envelope(body, model.removeprefix("agent/"))
        return RoutedRun("agent", model,
                         client.agent.run(agent, request_id=request_id, metadata=metadata),
                         "final", _agent_text)
    if model.startswith(("certainly/", "lean4/")) or model in ("certainly", "lean4"):
        prove = prove_seed.request_from_envelope(body)
        return RoutedRun("prove", model, client.prove.prove(prove, request_id=request_id,
                                                             metadata=metadata),
                         "summary", prove_seed.summary_text)
    return None


def new_completion_id() -> str:
    """An id for a routed run's reply."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"
