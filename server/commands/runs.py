"""`scillm runs list | show ID | replay ID`: the run store, read directly; replay via a mesh."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from google.protobuf import json_format

from ..manifests import RunStore, replay
from ._mesh import mesh_client

__all__ = ["list_runs", "replay_run", "show_run"]


def _store(path: Path) -> RunStore | None:
    if not path.exists():
        print(f"scillm runs: no run store at {path} (set SCILLM_STORE_PATH)", file=sys.stderr)
        return None
    return RunStore(path)


def list_runs(path: Path, *, session: str | None, track: str | None, service: str | None,
              limit: int) -> int:
    """One line per run, newest first."""
    store = _store(path)
    if store is None:
        return 1
    for m in store.list(session_id=session, track=track, service=service, limit=limit):
        print(f"{m.run_id}  {m.start_time.ToJsonString()}  {m.service:<9}  "
              f"session={m.session_id or '-'}  track={m.track or '-'}  "
              f"items={len(m.item_ids)}  model={m.model or '-'}")
    return 0


def show_run(path: Path, run_id: str) -> int:
    """The manifest, request and result as one JSON document."""
    store = _store(path)
    if store is None:
        return 1
    run = store.get(run_id)
    if run is None:
        print(f"scillm runs: no single run matches {run_id!r}", file=sys.stderr)
        return 1
    shown: dict[str, object] = {
        name: json_format.MessageToDict(m, preserving_proto_field_name=True)
        for name, m in (("manifest", run.manifest), ("request", run.request),
                        ("result", run.result))}
    shown["events"] = list(run.events)
    print(json.dumps(shown, indent=2))
    return 0


async def replay_run(path: Path, run_id: str, target: str | None) -> int:
    """Re-execute a stored run; exit 0 when nothing differs, 3 when something does."""
    store = _store(path)
    if store is None:
        return 1
    run = store.get(run_id)
    if run is None:
        print(f"scillm runs: no single run matches {run_id!r}", file=sys.stderr)
        return 1
    async with mesh_client(target, (run.manifest.service,)) as client:
        result, diffs = await replay(run, client)
    new_id = getattr(getattr(result, "manifest", None), "run_id", "")
    print(json.dumps({"run_id": run.manifest.run_id, "replay_run_id": new_id,
                      "identical": not diffs, "differences": diffs}, indent=2))
    return 0 if not diffs else 3
