"""What the runs table shows of a run: its outcome in a few words, its facts, and the
pieces every run page shares (the trace link, the manifest's facts)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from scillm.agent.v1 import agent_pb2
from scillm.codeworld.v1 import codeworld_pb2
from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2
from scillm.prove.v1 import prove_pb2
from scillm.server.manifests import run_state

__all__ = ["Outcome", "RunRow", "duration_ms", "enum_name", "facts", "outcome", "row",
           "trace_link"]


def duration_ms(d: Any) -> float:
    """A google.protobuf.Duration in milliseconds."""
    return float(d.seconds * 1000 + d.nanos / 1e6)


def enum_name(enum: Any, value: int) -> str:
    """An enum value's name without its type prefix, in lower case (VERDICT_PROVED ->
    proved); "unspecified" for values this build does not know."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return "unspecified"
    prefix = enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return name.removeprefix(prefix).lower()


@dataclass(frozen=True)
class Outcome:
    """A run's outcome in a few words; `tone` is "ok", "partial" or "bad"."""

    text: str
    tone: str


def _prove(s: prove_pb2.ProveSummary) -> Outcome:
    parts = [f"{s.proved}/{s.items} proved"]
    parts += [f"{n} {what}" for n, what in ((s.refuted, "refuted"), (s.failed, "failed"),
                                            (s.unknown, "unknown"), (s.vacuous, "vacuous"))
              if n]
    tone = "ok" if s.proved == s.items and not s.vacuous else (
        "partial" if s.proved else "bad")
    return Outcome(" · ".join(parts), tone)


def winners(s: codeworld_pb2.CodeWorldRunSummary) -> dict[str, str]:
    """Each task's rank-1 strategy."""
    out: dict[str, str] = {}
    for ranking in s.rankings:
        best = [e for e in ranking.entries if e.rank == 1]
        if best:
            out[ranking.task_id] = best[0].strategy
    return out


def _codeworld(s: codeworld_pb2.CodeWorldRunSummary) -> Outcome:
    won = winners(s)
    if s.HasField("mcts_stats") and s.mcts_stats.best_variant_id:
        head = f"search best {s.mcts_stats.best_variant_id}"
    elif len(set(won.values())) == 1:
        head = f"winner {next(iter(won.values()))}"
    else:
        head = f"{len(won)} tasks ranked"
    tone = "ok" if not s.failed else ("partial" if s.succeeded else "bad")
    return Outcome(f"{head} · {s.succeeded} ok, {s.failed} failed", tone)


_AGENT = {agent_pb2.STOP_REASON_SUCCESS: ("answered", "ok"),
          agent_pb2.STOP_REASON_BUDGET: ("out of budget", "partial"),
          agent_pb2.STOP_REASON_MAX_ITERATIONS: ("hit max iterations", "partial"),
          agent_pb2.STOP_REASON_ERROR: ("error", "bad")}


#: How much of a failed call's error its outcome shows (the run's JSON has all of it).
_ERROR_CHARS = 200


def _failed(status: status_pb2.Status) -> Outcome:
    """A stored call that failed: its status code and error, as its caller was sent them."""
    try:
        code = str(code_pb2.Code.Name(status.code))
    except ValueError:
        code = str(status.code)
    message = status.message
    if len(message) > _ERROR_CHARS:
        message = message[:_ERROR_CHARS - 1] + "…"
    return Outcome(f"failed · {code}: {message}" if message else f"failed · {code}", "bad")


def outcome(result: Message, manifest: common_pb2.RunManifest | None = None) -> Outcome:
    """A run's outcome from its terminal result (a run still streaming has none yet; one
    that ended without one was interrupted; a stored call that failed keeps its error)."""
    if isinstance(result, status_pb2.Status):
        return _failed(result)
    if manifest is not None and (state := run_state(manifest, result)) != "done":
        return Outcome(state, "partial" if state == "running" else "bad")
    if isinstance(result, prove_pb2.ProveSummary):
        return _prove(result)
    if isinstance(result, codeworld_pb2.CodeWorldRunSummary):
        return _codeworld(result)
    if isinstance(result, agent_pb2.AgentFinal):
        text, tone = _AGENT.get(result.stop_reason, ("stopped", "partial"))
        return Outcome(f"{text}: {result.error}" if result.error else text, tone)
    if isinstance(result, completion_pb2.CompletionResponse):
        reasons = sorted({enum_name(completion_pb2.FinishReason, c.finish_reason)
                          for c in result.choices})
        tone = "ok" if reasons == ["stop"] else "partial"
        return Outcome(f"{result.usage.total_tokens} tokens · {', '.join(reasons)}", tone)
    if isinstance(result, completion_pb2.CompletionStreamEnd):
        return Outcome(f"{result.usage.total_tokens} tokens · streamed", "ok")
    if isinstance(result, completion_pb2.TextCompletionResponse):
        return Outcome(f"{result.usage.total_tokens} tokens · text", "ok")
    if isinstance(result, completion_pb2.EmbeddingResponse):
        return Outcome(f"{len(result.data)} vectors", "ok")
    return Outcome(type(result).__name__, "partial")


@dataclass(frozen=True)
class RunRow:
    """One line of the runs table."""

    run_id: str
    service: str
    session: str
    track: str
    model: str
    items: int
    outcome: Outcome
    duration_ms: float
    started: dt.datetime


def row(manifest: common_pb2.RunManifest, result: Message) -> RunRow:
    """The table's line for a run."""
    return RunRow(manifest.run_id, manifest.service, manifest.session_id, manifest.track,
                  manifest.model, len(manifest.item_ids), outcome(result, manifest),
                  duration_ms(manifest.duration),
                  manifest.start_time.ToDatetime(tzinfo=dt.UTC))


def trace_link(manifest: common_pb2.RunManifest, template: str) -> str:
    """The URL of the run's trace, or "" (no template, or the run was not traced)."""
    if not template or not manifest.trace_id:
        return ""
    return template.format(trace_id=manifest.trace_id)


def facts(m: common_pb2.RunManifest) -> list[tuple[str, str]]:
    """The manifest as label/value pairs, empty values left out."""
    pairs = [("service", m.service), ("model", m.model), ("session", m.session_id),
             ("track", m.track), ("backend", m.backend), ("provider", m.provider),
             ("isolation", m.isolation), ("request id", m.request_id),
             ("started", m.start_time.ToDatetime(tzinfo=dt.UTC).isoformat(
                 sep=" ", timespec="milliseconds")),
             ("duration", f"{duration_ms(m.duration):.1f} ms"),
             ("items", ", ".join(m.item_ids)),
             ("labels", ", ".join(f"{k}={v}" for k, v in sorted(m.labels.items()))),
             ("versions", ", ".join(f"{k} {v}" for k, v in sorted(m.versions.items())))]
    return [(k, v) for k, v in pairs if v]
