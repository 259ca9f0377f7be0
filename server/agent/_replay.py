"""Stored runs and their replay: re-execute a run and report where it differs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._code import CodeExecutor
from ._engine import AgentEngine
from ._loop import CompleteFn
from ._records import Message, RunResult
from ._settings import AgentSettings, RunConfig
from .errors import ReplayError

__all__ = ["Difference", "ReplayReport", "StoredRun", "replay"]

_FORMAT = "scillm.agent.run/1"


@dataclass(frozen=True)
class StoredRun:
    """Everything needed to replay a run, JSON-ready through `to_dict` / `from_dict`."""

    settings: AgentSettings
    config: RunConfig
    #: The messages the run started from.
    messages: tuple[Message, ...]
    #: The whole transcript (initial messages first).
    transcript: tuple[Message, ...]
    #: Tool calls and results: `{"call": {...}, "result": {...}}` in order.
    tool_io: tuple[dict[str, Any], ...]
    answer: str
    stop_reason: str
    json_valid: bool | None = None

    @classmethod
    def from_result(cls, result: RunResult, settings: AgentSettings,
                    config: RunConfig | None = None) -> StoredRun:
        return cls(settings, config or RunConfig(),
                   tuple(result.transcript[:result.initial_count]), result.transcript,
                   tuple({"call": c.to_dict(), "result": r.to_dict()} for c, r in result.tool_io),
                   result.answer, result.stop_reason.value, result.json_valid)

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "settings": self.settings.to_dict(),
                "config": self.config.to_dict(), "messages": list(self.messages),
                "transcript": list(self.transcript), "tool_io": list(self.tool_io),
                "answer": self.answer, "stop_reason": self.stop_reason,
                "json_valid": self.json_valid}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredRun:
        if data.get("format") != _FORMAT:
            raise ReplayError(f"not a stored agent run (format {data.get('format')!r})")
        try:
            return cls(AgentSettings.from_dict(data["settings"]),
                       RunConfig.from_dict(data["config"]), tuple(data["messages"]),
                       tuple(data["transcript"]), tuple(data["tool_io"]), str(data["answer"]),
                       str(data["stop_reason"]), data.get("json_valid"))
        except (KeyError, TypeError) as exc:
            raise ReplayError(f"stored run is malformed: {exc!r}") from exc


@dataclass(frozen=True)
class Difference:
    """One place where a replay differs: `where` is a path like `transcript[3].content`."""

    where: str
    expected: Any
    actual: Any


@dataclass(frozen=True)
class ReplayReport:
    """The outcome of a replay."""

    differences: tuple[Difference, ...]
    stored: StoredRun
    replayed: StoredRun

    @property
    def identical(self) -> bool:
        return not self.differences


async def replay(stored_run: StoredRun, complete: CompleteFn, *,
                 executor: CodeExecutor | None = None,
                 engine: AgentEngine | None = None) -> ReplayReport:
    """Run `stored_run` again with `complete` and compare it with what was stored.

    With `engine` the run uses it as is (its settings are the caller's); otherwise a new
    engine is built from the stored settings with `executor`, started and closed here.
    `ScriptedModel.from_transcript(stored.transcript)` replays the stored model turns, so
    that only the tools are re-executed.
    """
    own = engine is None
    runner = engine or AgentEngine(stored_run.settings, complete, executor)
    if own:
        await runner.start()
    try:
        result = await runner.run_to_end(stored_run.messages, stored_run.config)
    finally:
        if own:
            await runner.close()
    replayed = StoredRun.from_result(result, runner.settings, stored_run.config)
    return ReplayReport(tuple(diff(stored_run, replayed)), stored_run, replayed)


def diff(expected: StoredRun, actual: StoredRun) -> list[Difference]:
    """Differences in transcript, tool I/O, answer and stop reason."""
    out: list[Difference] = []
    for field in ("answer", "stop_reason", "json_valid"):
        a, b = getattr(expected, field), getattr(actual, field)
        if a != b:
            out.append(Difference(field, a, b))
    for name in ("transcript", "tool_io"):
        left, right = getattr(expected, name), getattr(actual, name)
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else None
            b = right[i] if i < len(right) else None
            out.extend(_diff_value(f"{name}[{i}]", a, b))
    return out


def _diff_value(where: str, a: Any, b: Any) -> list[Difference]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        found: list[Difference] = []
        for key in sorted(set(a) | set(b)):
            found.extend(_diff_value(f"{where}.{key}", a.get(key), b.get(key)))
        return found
    if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
        return [Difference(where, a, b)]
    return []
