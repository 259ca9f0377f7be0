"""`scillm runs list | show ID | replay ID | prune`: the run store (a SQLite file or a
postgresql:// URL), read directly; replay via a mesh. Prune deletes from the store directly
too: the store is what it acts on (the serving processes sweep it by the same rule), and
the mesh has no call for it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf import json_format

from scillm.clients import RPCError, TlsConfig
from scillm.server.manifests import (
    RunStore,
    RunStoreError,
    StoredRun,
    open_run_store,
    prune,
    replay,
    run_state,
)

from ._mesh import LocalMesh, mesh_client

__all__ = ["list_runs", "prune_runs", "replay_run", "show_run"]


@contextmanager
def _store(location: str | Path) -> Iterator[RunStore | None]:
    """The store at a path or postgresql:// URL, closed after use; None (said on stderr)
    when there is none there."""
    try:
        store = open_run_store(location, create=False)
    except RunStoreError as err:
        print(f"scillm runs: {err} (set SCILLM_STORE_URL or SCILLM_STORE_PATH, or pass "
              "--store)", file=sys.stderr)
        yield None
        return
    try:
        yield store
    finally:
        store.close()


def list_runs(location: str | Path, *, session: str | None, track: str | None,
              service: str | None, limit: int) -> int:
    """One line per run, newest first: its id, start time, service, state ("done",
    "running", "interrupted" or "failed": `run_state`), session, track, items and model."""
    with _store(location) as store:
        if store is None:
            return 1
        listed = store.states(session_id=session, track=track, service=service, limit=limit)
    for m, state in listed:
        print(f"{m.run_id}  {m.start_time.ToJsonString()}  {m.service:<9}  {state:<11}  "
              f"session={m.session_id or '-'}  track={m.track or '-'}  "
              f"items={len(m.item_ids)}  model={m.model or '-'}")
    return 0


def _find(location: str | Path, run_id: str) -> StoredRun | None:
    """The stored run, or None after saying why on stderr."""
    with _store(location) as store:
        run = store.get(run_id) if store is not None else None
        if store is not None and run is None:
            print(f"scillm runs: no single run matches {run_id!r}", file=sys.stderr)
    return run


def show_run(location: str | Path, run_id: str) -> int:
    """The run's state ("done", "running", "interrupted", "failed": `run_state`), manifest,
    request and result (a failed call's: its `google.rpc.Status`) as one JSON document."""
    run = _find(location, run_id)
    if run is None:
        return 1
    shown: dict[str, object] = {"state": run_state(run.manifest, run.result)}
    shown.update({
        name: json_format.MessageToDict(m, preserving_proto_field_name=True)
        for name, m in (("manifest", run.manifest), ("request", run.request),
                        ("result", run.result))})
    shown["events"] = list(run.events)
    print(json.dumps(shown, indent=2))
    return 0


async def replay_run(location: str | Path, run_id: str, target: str | None,
                     local: LocalMesh, api_key: str | None = None, *,
                     tls: TlsConfig | None = None) -> int:
    """Re-execute a stored run; exit 0 when nothing differs, 3 when something does."""
    run = _find(location, run_id)
    if run is None:
        return 1
    try:
        async with mesh_client(target, (run.manifest.service,), local, api_key,
                               tls) as client:
            result, diffs, volatile = await replay(run, client)
    except ValueError as exc:
        print(f"scillm runs replay: {exc}", file=sys.stderr)
        return 1
    except RPCError as exc:  # was a traceback
        print(f"scillm runs replay: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    new_id = getattr(getattr(result, "manifest", None), "run_id", "")
    print(json.dumps({"run_id": run.manifest.run_id, "replay_run_id": new_id,
                      "identical": not diffs, "differences": diffs,
                      "volatile": volatile}, indent=2))
    return 0 if not diffs else 3


def prune_runs(location: str | Path, older_than_days: int, *, dry_run: bool,
               trace_dir: Path | None, session_db: Path | None = None) -> int:
    """Delete (with `dry_run`, count) the runs inactive for more than `older_than_days`
    days, and the agent traces in `trace_dir` last written before then; one line saying how
    many. Then the CodeWorld session runs recorded before then in `session_db`, when that
    file is there: a second line."""
    with _store(location) as store:
        if store is None:
            return 1
        try:
            pruned = prune(store, older_than_days, dry_run=dry_run, trace_dir=trace_dir)
        except RunStoreError as exc:
            print(f"scillm runs prune: {exc}", file=sys.stderr)
            return 1
        where = store.location
    verb = "would remove" if dry_run else "removed"
    runs = f"{pruned.runs} run{'' if pruned.runs == 1 else 's'}"
    traces = f"{pruned.traces} agent trace{'' if pruned.traces == 1 else 's'}"
    days = f"{older_than_days} day{'' if older_than_days == 1 else 's'}"
    print(f"{verb} {runs} and {traces} inactive for more than {days} ({where})")
    if session_db is None or not session_db.is_file():
        return 0
    from scillm.server.codeworld import prune_sessions
    from scillm.server.codeworld.errors import SessionStoreError

    try:
        sessions = prune_sessions(session_db, older_than_days, dry_run=dry_run)
    except SessionStoreError as exc:
        print(f"scillm runs prune: CodeWorld session history: {exc}", file=sys.stderr)
        return 1
    print(f"{verb} {sessions} CodeWorld session run{'' if sessions == 1 else 's'} recorded "
          f"more than {days} ago ({session_db})")
    return 0
