"""Which service a model name reaches through `/v1/chat/completions`, as the seed did.

`ROUTES` is the whole table, read top to bottom; a model name matching no row is an
ordinary completion model (CompletionService.Completion / CompletionStream):

    model name                      service     client call                    terminal
    codeworld, codeworld/...        codeworld   client.codeworld.run           summary
    agent/<model>                   agent       client.agent.run (<model>)     final
    certainly[/...], lean4[/...]    prove       client.prove.prove             summary

`/bridge/complete` and `/agent/run` use the same table. Each service's calls go to the
channel the client holds for it (its own target when the mesh is split over processes).

The reply is a `chat.completion` whose content is the run's one-line outcome (the agent's
final answer; for CodeWorld, the seed's line followed by any model generation that failed),
with the structured result in the extra field `scillm`, and as `usage` the tokens of the
model calls the run made (the agent's turns; Prove's formalize attempts; CodeWorld reports
none). Streamed, every event becomes a chunk carrying it in `scillm.event` (no content),
then the outcome.

A run reads its stream to the end, past the terminal event (the server ends the stream
right after it): a call left open would never finish, and neither would its client span
when tracing (OpenTelemetry ends a streaming call's span when the stream ends).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from scillm.agent.v1 import agent_pb2
from scillm.clients import ScillmClient
from scillm.clients.errors import InvalidRequestError

from ..seed import agent as agent_seed
from ..seed import codeworld as codeworld_seed
from ..seed import prove as prove_seed

__all__ = ["ROUTES", "Route", "RoutedRun", "route"]

Metadata = Sequence[tuple[str, str]]


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
    #: (prompt, completion) tokens an event of the run accounts for (none: no usage).
    usage: Callable[[str, Any], tuple[int, int]] = lambda kind, body: (0, 0)
    #: The reply's finish_reason, from the terminal message.
    finish: Callable[[Any], str] = lambda terminal: "stop"

    async def _until_terminal(self) -> AsyncGenerator[tuple[str, Any], None]:
        """(kind, body) of every event up to the terminal one. Once the terminal event is
        taken, the rest of the stream (its end) is read, so the call ends OK; closed
        earlier, the call is cancelled. Use it with `aclosing`."""
        try:
            async for event in self.events:
                kind = event.WhichOneof("event")
                if kind != self.terminal:
                    yield kind, getattr(event, kind)
                    continue
                try:
                    yield kind, getattr(event, kind)
                finally:
                    async for _ in self.events:  # only the end of the stream is left
                        pass
                return
        finally:
            await self.events.aclose()  # type: ignore[attr-defined]

    async def outcome(self) -> tuple[Any, list[tuple[str, Any]]]:
        """Run to the end; the terminal message and the (kind, message) events before it."""
        seen: list[tuple[str, Any]] = []
        async with aclosing(self._until_terminal()) as events:
            async for kind, body in events:
                if kind == self.terminal:
                    return body, seen
                seen.append((kind, body))
        raise RuntimeError(f"{self.service} stream ended without its {self.terminal} event")

    async def collect(self) -> tuple[str, dict[str, Any], dict[str, int], str]:
        """Run to the end; the reply text, the structured result, the usage and the
        finish_reason."""
        terminal, seen = await self.outcome()
        usage = _Usage()
        for kind, body in [*seen, (self.terminal, terminal)]:
            usage.add(*self.usage(kind, body))
        return self.text(terminal), {"service": self.service, "result": _to_dict(terminal),
                                     "events": [{kind: _to_dict(body)} for kind, body in seen]
                                     }, usage.openai(), self.finish(terminal)

    async def chunks(self, completion_id: str, *,
                     include_usage: bool = False) -> AsyncIterator[dict[str, Any]]:
        """OpenAI chunks: one per event (in `scillm.event`), then the outcome text, and
        with `include_usage` a last chunk of the run's usage."""
        created = int(time.time())
        usage = _Usage()

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
        async with aclosing(self._until_terminal()) as events:
            async for kind, body in events:
                usage.add(*self.usage(kind, body))
                if kind == self.terminal:
                    yield chunk({"content": self.text(body)})
                    yield chunk({}, self.finish(body), {"service": self.service,
                                                        "result": _to_dict(body)})
                    if include_usage:
                        yield {**chunk({}), "choices": [], "usage": usage.openai()}
                else:
                    yield chunk({}, None, {"event": {kind: _to_dict(body)}})


class _Usage:
    """Tokens summed over a run's events."""

    def __init__(self) -> None:
        self.prompt = self.completion = 0

    def add(self, prompt: int, completion: int) -> None:
        self.prompt += prompt
        self.completion += completion

    def openai(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt, "completion_tokens": self.completion,
                "total_tokens": self.prompt + self.completion}


@dataclass(frozen=True)
class Route:
    """One row of `ROUTES`: model names `names` (exactly, or followed by `/...`) reach
    `service` through `call`, whose stream ends with the `terminal` event."""

    names: tuple[str, ...]
    service: str
    #: (client, request body, model name, request id, metadata) -> the call's events.
    call: Callable[[ScillmClient, Mapping[str, Any], str, str, Metadata], AsyncIterator[Any]]
    terminal: str
    #: The reply's one-line outcome, from the terminal message.
    text: Callable[[Any], str]
    #: (prompt, completion) tokens an event accounts for (each model call counted once).
    usage: Callable[[str, Any], tuple[int, int]]
    #: Whether the bare name (without `/...`) routes too.
    bare: bool = True
    #: The reply's finish_reason, from the terminal message.
    finish: Callable[[Any], str] = lambda terminal: "stop"

    def matches(self, model: str) -> bool:
        return any((self.bare and model == name) or model.startswith(f"{name}/")
                   for name in self.names)


def _codeworld(client: ScillmClient, body: Mapping[str, Any], model: str, request_id: str,
               metadata: Metadata) -> AsyncIterator[Any]:
    return client.codeworld.run(codeworld_seed.request_from_envelope(body),
                                timeout=codeworld_seed.call_timeout(body) or 3600.0,
                                request_id=request_id, metadata=metadata)


def _agent(client: ScillmClient, body: Mapping[str, Any], model: str, request_id: str,
           metadata: Metadata) -> AsyncIterator[Any]:
    request = agent_seed.request_from_envelope(body, model.removeprefix("agent/"))
    return client.agent.run(request, request_id=request_id, metadata=metadata)


def _prove(client: ScillmClient, body: Mapping[str, Any], model: str, request_id: str,
           metadata: Metadata) -> AsyncIterator[Any]:
    return client.prove.prove(prove_seed.request_from_envelope(body),
                              request_id=request_id, metadata=metadata)


def _agent_usage(kind: str, body: Any) -> tuple[int, int]:
    """The final event's total (the turns' events carry their own share of it)."""
    if kind != "final":
        return 0, 0
    usage = body.metrics.usage
    return usage.prompt_tokens, usage.completion_tokens


def _prove_usage(kind: str, body: Any) -> tuple[int, int]:
    """Each item result's formalize attempts."""
    if kind != "result":
        return 0, 0
    return (sum(a.usage.prompt_tokens for a in body.attempts),
            sum(a.usage.completion_tokens for a in body.attempts))


def _no_usage(kind: str, body: Any) -> tuple[int, int]:
    """CodeWorld's events report no tokens (an MCTS search's model calls are charged to
    the caller's key all the same)."""
    return 0, 0


def _agent_text(final: Any) -> str:
    """The answer; for a run that ended in error, that it failed and why (a model's last
    words, "I give up", read as the run's answer), with that last answer after it."""
    if final.stop_reason == agent_pb2.STOP_REASON_ERROR:
        text = f"The agent run failed: {final.error or 'no reason given'}"
        return f"{text}\n\nIts last answer: {final.answer}" if final.answer else text
    return str(final.answer or final.error)


def _agent_finish(final: Any) -> str:
    """"length" when a budget or max_iterations stopped the run (its answer is not a
    whole one), else "stop"."""
    return "length" if final.stop_reason in (agent_pb2.STOP_REASON_BUDGET,
                                             agent_pb2.STOP_REASON_MAX_ITERATIONS) else "stop"


def _codeworld_text(summary: Any) -> str:
    """The seed's line, then, plainly, any model generation that failed: a run whose
    variants the model could not write must not read as a plain success."""
    text = codeworld_seed.summary_text(summary)
    stats = summary.mcts_stats
    if stats.generation.error:
        text += (f"; generation failed ({stats.generation.model or 'no model'}): "
                 f"{_cut(stats.generation.error)}")
    failed = [g for g in stats.expansions if g.error]
    if failed:
        text += (f"; {len(failed)} of {len(stats.expansions)} variant expansions failed "
                 f"(last: {_cut(failed[-1].error)})")
    if summary.session.error:
        text += (f"; not recorded in session {summary.session.session_id!r}: "
                 f"{_cut(summary.session.error)}")
    return text


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


#: Model name -> service and client call (see the module docstring); first match wins.
ROUTES: tuple[Route, ...] = (
    Route(("codeworld",), "codeworld", _codeworld, "summary", _codeworld_text, _no_usage),
    Route(("agent",), "agent", _agent, "final", _agent_text, _agent_usage, bare=False,
          finish=_agent_finish),
    Route(("certainly", "lean4"), "prove", _prove, "summary", prove_seed.summary_text,
          _prove_usage),
)


#: Every `name/` of `ROUTES`, and the names that route bare: a model matching neither is an
#: ordinary completion model (`route` checks this before asking each row).
_PREFIXES = tuple(f"{name}/" for row in ROUTES for name in row.names)
_BARE = frozenset(name for row in ROUTES if row.bare for name in row.names)


def route(client: ScillmClient, body: Mapping[str, Any], request_id: str,
          metadata: Metadata = ()) -> RoutedRun | None:
    """The run a model name routes to, or None for an ordinary completion model."""
    model = body.get("model")
    if not isinstance(model, str) or not (model.startswith(_PREFIXES) or model in _BARE):
        return None  # the door's hot path: an ordinary model, in one test
    if body.get("n") not in (None, 1):  # checked before the run: none would be answered
        raise InvalidRequestError(f"{model} answers one choice: 'n' must be 1 (or left out)",
                                  param="n")
    for row in ROUTES:
        if row.matches(model):
            events = row.call(client, body, model, request_id, metadata)
            return RoutedRun(row.service, model, events, row.terminal, row.text, row.usage,
                             row.finish)
    return None


def new_completion_id() -> str:
    """An id for a routed run's reply."""
    return f"chatcmpl-{secrets.token_hex(12)}"
