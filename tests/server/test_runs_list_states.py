"""`scillm runs list` says each run's state: done, running, interrupted or failed.

It listed a run's id, start, service, session, track, items and model, but not whether it
had finished, was still running, had been cut short or had failed: one had to `show` each
run to learn it. On a real store (SQLite, and PostgreSQL where its fixture runs) holding a
run in each state, read the way `scillm runs list` reads it, and the command itself.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import empty_pb2
from google.rpc import status_pb2
from test_run_store_pg import pg_server, pg_url  # noqa: F401  (fixtures)

from scillm.bridges.cli.runs import list_runs
from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2 as cpb
from scillm.prove.v1 import prove_pb2 as pb
from scillm.server.manifests import open_run_store

SCILLM = str(Path(sys.executable).parent / "scillm")


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, or a PostgreSQL database (the listing's SQL is shared)."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.sqlite3")
    return str(request.getfixturevalue("pg_url"))


def _manifest(run_id: str, seconds: int, *, ended: bool) -> common_pb2.RunManifest:
    manifest = common_pb2.RunManifest(run_id=run_id, service="prove", session_id="states")
    manifest.start_time.FromSeconds(1_700_000_000 + seconds)
    if ended:
        manifest.end_time.FromSeconds(1_700_000_000 + seconds + 1)
    return manifest


async def _fill(location: str) -> None:
    store = open_run_store(location)
    request = pb.ProveRequest(items=[pb.Obligation(item_id="i", statement="x")])
    try:
        store.put_sync(_manifest("run-done", 1, ended=True), request, pb.ProveSummary(items=1))
        await store.started(_manifest("run-running", 2, ended=False), request)
        await store.started(_manifest("run-interrupted", 3, ended=False), request)
        store.put_sync(_manifest("run-interrupted", 3, ended=True), request, empty_pb2.Empty())
        store.put_sync(_manifest("run-failed", 4, ended=True), cpb.CompletionRequest(model="m"),
                       status_pb2.Status(code=14, message="upstream said 502"))
    finally:
        store.close()


async def test_each_listed_run_says_its_state(location: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    await _fill(location)
    assert list_runs(location, session=None, track=None, service=None, limit=50) == 0
    lines = capsys.readouterr().out.splitlines()
    states = {line.split()[0]: line.split()[3] for line in lines}
    assert states == {"run-done": "done", "run-running": "running",
                      "run-interrupted": "interrupted", "run-failed": "failed"}, lines
    assert [line.split()[0] for line in lines] == [  # newest first, as before
        "run-failed", "run-interrupted", "run-running", "run-done"]
    assert list_runs(location, session="states", track=None, service=None, limit=1) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[:4] == ["run-failed", "2023-11-14T22:13:24Z", "prove", "failed"]


def test_the_command_lists_states_and_says_so(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.sqlite3")
    asyncio.run(_fill(store))
    listed = subprocess.run([SCILLM, "runs", "list", "--store", store], capture_output=True,
                            text=True, timeout=120, check=False)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[3] for line in listed.stdout.splitlines()] == [
        "failed", "interrupted", "running", "done"]
    helped = subprocess.run([SCILLM, "runs", "list", "--help"], capture_output=True, text=True,
                            timeout=120, check=False)
    said = " ".join(helped.stdout.split())
    assert "state" in said and "done, running, interrupted or failed" in said, helped.stdout
