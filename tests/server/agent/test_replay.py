"""Stored runs replay exactly; a different model shows where it differs."""

from __future__ import annotations

import json

import pytest

from scillm.server.agent import (
    AgentEngine,
    AgentSettings,
    RunConfig,
    ScriptedModel,
    StoredRun,
    replay,
)
from scillm.server.agent.errors import ReplayError

from .conftest import FIXTURES, SubprocessExecutor, mcp_settings

TASK = [{"role": "user", "content": "Add 2 and 3, then multiply by 7."}]


async def _stored(executor: SubprocessExecutor) -> StoredRun:
    settings, config = mcp_settings(), RunConfig(seed=3)
    model = ScriptedModel.from_file(FIXTURES / "add_then_answer.json")
    async with AgentEngine(settings, model, executor) as engine:
        result = await engine.run_to_end(TASK, config)
    stored = StoredRun.from_result(result, settings, config)
    # through JSON and back, as a run store would keep it
    return StoredRun.from_dict(json.loads(json.dumps(stored.to_dict())))


async def test_replay_with_recorded_turns_is_identical(executor: SubprocessExecutor) -> None:
    stored = await _stored(executor)
    assert stored.settings == mcp_settings() and stored.config == RunConfig(seed=3)
    report = await replay(stored, ScriptedModel.from_transcript(stored.transcript),
                          executor=SubprocessExecutor())
    assert report.identical, report.differences
    assert len(report.replayed.tool_io) == 2


async def test_replay_reports_differences(executor: SubprocessExecutor) -> None:
    stored = await _stored(executor)
    other = ScriptedModel([{"content": "", "tool_calls": [
        {"name": "demo__add", "arguments": {"a": 2, "b": 4}}]}, {"content": "6"}])
    report = await replay(stored, other, executor=SubprocessExecutor())
    assert not report.identical
    where = {d.where for d in report.differences}
    assert "answer" in where and "tool_io[0].result.output" in where
    assert "transcript[1].tool_calls" in where


def test_malformed_stored_run() -> None:
    with pytest.raises(ReplayError):
        StoredRun.from_dict({"format": "something else"})
    with pytest.raises(ReplayError):
        StoredRun.from_dict({"format": "scillm.agent.run/1"})


def test_settings_round_trip() -> None:
    settings = mcp_settings(languages=("python", "bash"))
    assert AgentSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
