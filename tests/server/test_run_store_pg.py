"""The run store in PostgreSQL, on a real server started here: the same semantics as
SQLite (each semantic test runs on both), a mesh writing to it, `scillm runs` reading it.

Skips when PostgreSQL's binaries (Debian's `postgresql` package: initdb, pg_ctl under
/usr/lib/postgresql/*/bin) or psycopg (the `postgres` extra) are missing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from meshutil import mesh_settings, start_mesh

from scillm.clients import ScillmClient
from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.common.v1 import common_pb2
from scillm.server.manifests import (
    BadPageToken,
    PostgresRunStore,
    RunQuery,
    RunStoreError,
    SQLiteRunStore,
    open_run_store,
)
from scillm.server.settings import Settings

SCILLM = str(Path(sys.executable).parent / "scillm")
USER, PASSWORD = "scillm", "s3cret-pw"


@dataclass(frozen=True)
class PgServer:
    """A running PostgreSQL server on a loopback port."""

    port: int

    def url(self, database: str) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"


def _bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl."""
    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin")
             if (d / "initdb").is_file() and (d / "pg_ctl").is_file()]
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
               default=None)


def _unprivileged() -> tuple[list[str], tuple[int, int] | None]:
    """The command prefix running a program as an unprivileged user (PostgreSQL refuses
    root), and that user's uid and gid; no prefix when we are not root."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root and there is no `postgres` user to run PostgreSQL as "
                    "(the postgresql package makes it: scripts/install)")
    if runuser := shutil.which("runuser"):
        return [runuser, "-u", "postgres", "--"], (user.pw_uid, user.pw_gid)
    if setpriv := shutil.which("setpriv"):
        return ([setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                 "--"], (user.pw_uid, user.pw_gid))
    pytest.fail("running as root without runuser or setpriv to drop to `postgres`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PgServer]:
    """initdb into a temp dir, pg_ctl start on a free loopback port, stop and remove."""
    bindir = _bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is missing: scripts/install installs it")
    as_user, owner = _unprivileged()
    root = Path(tempfile.mkdtemp(prefix="scillm-pg-"))
    data, sockets, log, pwfile = root / "data", root / "sockets", root / "log", root / "pw"
    sockets.mkdir()
    pwfile.write_text(PASSWORD + "\n")
    if owner is not None:
        for path in (root, sockets, pwfile):
            os.chown(path, *owner)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120,
                              check=False, cwd=root)

    port = _free_port()
    started = False
    try:
        init = run(str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                   "--locale=C.UTF-8", "--no-sync")
        if init.returncode != 0:
            pytest.fail(f"initdb failed: {init.stderr.strip()[-500:]}")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off "
                   "-c full_page_writes=off -c synchronous_commit=off")
        start = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                    "-o", options, "start")
        started = start.returncode == 0
        if not started:
            tail = log.read_text()[-500:] if log.exists() else start.stderr
            pytest.fail(f"PostgreSQL did not start: {tail.strip()}")
        yield PgServer(port)
    finally:
        if started:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the server, dropped afterwards."""
    import psycopg

    name = f"runs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield pg_server.url(name)
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store is: a SQLite file, or a PostgreSQL database (same tests, same answers)."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.sqlite3")
    return str(request.getfixturevalue("pg_url"))


def _run(run_id: str, service: str, session: str, track: str, seconds: int,
         ) -> tuple[common_pb2.RunManifest, cw.CodeWorldRunRequest, cw.CodeWorldRunSummary,
                    list[cw.CodeWorldRunResponse]]:
    manifest = common_pb2.RunManifest(run_id=run_id, service=service, session_id=session,
                                      track=track, model="m", request_id=f"req-{run_id}",
                                      item_ids=["t0"])
    manifest.start_time.FromSeconds(1_700_000_000 + seconds)
    request = cw.CodeWorldRunRequest(strategies=[cw.Strategy(name="s", source="x = 1\n")])
    request.items.add(task_id="t0").context.update({"input": [1, 2], "expected": 3})
    result = cw.CodeWorldRunSummary(items=1, succeeded=1, manifest=manifest)
    events = [cw.CodeWorldRunResponse(run=cw.RunResult(
        task_id="t0", strategy="s", status=cw.RUN_STATUS_OK, stdout="out\x00put\n"))]
    return manifest, request, result, events


RUNS = [("aaaa1111", "codeworld", "s1", "t1", 10), ("aaaa2222", "prove", "s1", "t2", 20),
        ("bbbb3333", "codeworld", "s2", "t1", 30)]


def _ids(manifests: list[common_pb2.RunManifest]) -> list[str]:
    return [m.run_id for m in manifests]


def test_put_list_get_round_trip(location: str) -> None:
    store = open_run_store(location)
    assert isinstance(store, PostgresRunStore if "://" in location else SQLiteRunStore)
    try:
        for run in RUNS:
            store.put_sync(*_run(*run))
        assert _ids(store.list()) == ["bbbb3333", "aaaa2222", "aaaa1111"]  # newest first
        assert _ids(store.list(session_id="s1")) == ["aaaa2222", "aaaa1111"]
        assert _ids(store.list(track="t1")) == ["bbbb3333", "aaaa1111"]
        assert _ids(store.list(service="codeworld")) == ["bbbb3333", "aaaa1111"]
        assert _ids(store.list(session_id="s1", service="codeworld")) == ["aaaa1111"]
        assert _ids(store.list(session_id="nope")) == []
        assert _ids(store.list(limit=1)) == ["bbbb3333"]
        assert len(store.list(limit=-1)) == 3

        manifest, request, result, events = _run(*RUNS[0])
        got = store.get("aaaa1111")
        assert got is not None
        assert (got.manifest, got.request, got.result) == (manifest, request, result)
        assert got.events == tuple(json_format.MessageToDict(e, preserving_proto_field_name=True)
                                   for e in events)
        assert got.events[0]["run"]["stdout"] == "out\x00put\n"
        # A unique prefix, in any ASCII case; an ambiguous or absent one is None, and LIKE's
        # wildcards are plain characters.
        for prefix in ("bbbb", "BBBB3", "bbbb3333"):
            found = store.get(prefix)
            assert found is not None and found.manifest.run_id == "bbbb3333", prefix
        for absent in ("aaaa", "zz", "%", "aaaa11_1", "aaaa1%"):
            assert store.get(absent) is None, absent

        # The same id again replaces the run.
        manifest, request, result, events = _run(*RUNS[0])
        manifest.model = "m2"
        store.put_sync(manifest, request, result, [])
        replaced = store.get("aaaa1111")
        assert replaced is not None and replaced.manifest.model == "m2" and replaced.events == ()
        assert len(store.list()) == 3
        # An exact id wins over the runs it is a prefix of: a caller's run id "a" beside
        # a run "af6c..." was unreachable ("no single run matches").
        store.put_sync(*_run("aaaa", "prove", "s1", "t3", 40))
        exact = store.get("aaaa")
        assert exact is not None and exact.manifest.run_id == "aaaa"
    finally:
        store.close()
    # Reopened (as `scillm runs` does, without creating), everything is still there.
    reopened = open_run_store(location, create=False)
    try:
        assert _ids(reopened.list()) == ["aaaa", "bbbb3333", "aaaa2222", "aaaa1111"]
    finally:
        reopened.close()


def test_pages_newest_first_with_filters(location: str) -> None:
    store = open_run_store(location)
    try:
        # Seven runs, two of them started in the same second: ties break by run_id.
        runs = [(f"r{i}", "codeworld" if i % 2 else "prove", "s1" if i < 4 else "s2", "t",
                 min(i, 5)) for i in range(7)]
        for run in runs:
            manifest, request, result, events = _run(*run)
            manifest.model = "big" if run[0] in ("r1", "r6") else "small"
            store.put_sync(manifest, request, result, events)
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = store.page(RunQuery(limit=3, page_token=token))
            seen += [r.manifest.run_id for r in page.runs]
            assert all(isinstance(r.result, cw.CodeWorldRunSummary) for r in page.runs)
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert seen == ["r6", "r5", "r4", "r3", "r2", "r1", "r0"] and pages == 3
        # An exact fit leaves no empty last page.
        assert store.page(RunQuery(limit=7)).next_page_token == ""

        def ids(**query: object) -> list[str]:
            return [r.manifest.run_id for r in store.page(RunQuery(**query)).runs]  # type: ignore[arg-type]

        assert ids(service="prove") == ["r6", "r4", "r2", "r0"]
        assert ids(session_id="s1", service="codeworld") == ["r3", "r1"]
        assert ids(model="big") == ["r6", "r1"]
        assert ids(track="nope") == []
        second = store.page(RunQuery(service="prove", limit=2))
        assert ids(service="prove", limit=2, page_token=second.next_page_token) == ["r2", "r0"]
        assert store.distinct("session_id") == ["s1", "s2"]
        assert store.distinct("model") == ["big", "small"]
        with pytest.raises(ValueError, match="not a filter column"):
            store.distinct("manifest")
        deep = base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=")  # RecursionError
        for garbled in ("x", "e30", "WyJhIl0", "%%%", deep):
            with pytest.raises(BadPageToken):
                store.page(RunQuery(page_token=garbled))
    finally:
        store.close()


async def test_a_run_id_is_claimed_by_one_run_only(location: str) -> None:
    """A caller's own run id was checked (`exists`), then stored: two runs started at once
    with the same id both passed the check, and the second replaced the first. Claiming
    an id is one statement: of ten claims at once, one wins; a stored id is not claimed."""
    store = open_run_store(location)
    try:
        manifest, request, _, _ = _run("mine", "agent", "s", "t", 1)
        claims = await asyncio.gather(*(store.claim(manifest, request) for _ in range(10)))
        assert sorted(claims) == [False] * 9 + [True]
        assert not await store.claim(manifest, request)
        assert store.exists("mine") and len(store.list()) == 1
    finally:
        store.close()


async def test_put_from_the_event_loop(location: str) -> None:
    store = open_run_store(location)  # picks the implementation from the location
    try:
        await asyncio.gather(*(store.put(*_run(f"run{i}", "agent", "s", "", i))
                               for i in range(8)))
        assert _ids(store.list()) == [f"run{i}" for i in reversed(range(8))]
    finally:
        store.close()


def test_opening_errors_are_run_store_errors(pg_url: str,
                                             tmp_path: Path) -> None:
    with pytest.raises(RunStoreError, match="unsupported run store URL"):
        open_run_store("mysql://u:p@h/db")
    with pytest.raises(RunStoreError, match="no run store"):
        open_run_store(tmp_path / "absent.sqlite3", create=False)
    with pytest.raises(RunStoreError, match="no table") as empty:
        open_run_store(pg_url, create=False)
    assert PASSWORD not in str(empty.value) and ":***@" in str(empty.value)
    closed = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{_free_port()}/x?connect_timeout=2"
    with pytest.raises(RunStoreError, match="cannot open") as unreachable:
        open_run_store(closed)
    assert PASSWORD not in str(unreachable.value)
    wrong = pg_url.replace(PASSWORD, "wrong")
    with pytest.raises(RunStoreError, match="password authentication failed"):
        open_run_store(wrong)


def test_settings_store_url_wins_over_store_path(pg_url: str, tmp_path: Path) -> None:
    settings = Settings.from_env({"SCILLM_STORE_URL": pg_url,
                                  "SCILLM_STORE_PATH": str(tmp_path / "runs.sqlite3")})
    assert PASSWORD not in repr(settings)
    store = open_run_store(settings)
    try:
        assert isinstance(store, PostgresRunStore) and PASSWORD not in store.location
    finally:
        store.close()
    assert not (tmp_path / "runs.sqlite3").exists()


def test_reconnects_when_the_server_drops_the_connection(pg_url: str) -> None:
    import psycopg

    store = open_run_store(pg_url)
    try:
        store.put_sync(*_run(*RUNS[0]))
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'").fetchone()
        assert killed == (1,)
        assert _ids(store.list()) == ["aaaa1111"]
    finally:
        store.close()


def _ids_of(listing: str) -> set[str]:
    return {line.split()[0] for line in listing.splitlines()}


def _scillm(*args: str, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCILLM, *args], capture_output=True, text=True, timeout=120,
                          check=False, env=env)


async def _codeworld_run(target: str) -> cw.CodeWorldRunSummary:
    request = cw.CodeWorldRunRequest(strategies=[cw.Strategy(
        name="s", source="def solve(t, c):\n    return sum(c['input'])\n")])
    request.items.add(task_id="a").context.update({"input": [2, 3], "expected": 5})
    request.context.session_id, request.context.track = "pg-session", "pg-track"
    async with ScillmClient(target) as client:
        events = [e async for e in client.codeworld.run(request)]
    assert events[-1].HasField("summary")
    return events[-1].summary


def test_a_mesh_keeps_its_runs_in_postgresql(tmp_path: Path, pg_url: str) -> None:
    running = start_mesh(mesh_settings(tmp_path, store_url=pg_url, http_enabled=False,
                                       services=("completion", "codeworld")))
    try:
        summary = asyncio.run(_codeworld_run(running.grpc_target))
        run_id = summary.manifest.run_id

        store = open_run_store(pg_url, create=False)
        try:
            assert _ids(store.list(session_id="pg-session")) == [run_id]
            stored = store.get(run_id)
            assert stored is not None and stored.result == summary
            assert [e["run"]["result"] for e in stored.events] == [5]  # the stream's envelopes
        finally:
            store.close()
        assert not (tmp_path / "runs.sqlite3").exists()  # store_url won over store_path

        listed = _scillm("runs", "list", "--store", pg_url, "--session", "pg-session")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split()[0] == run_id and "codeworld" in listed.stdout
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCILLM_STORE")}
        from_env = _scillm("runs", "show", run_id[:10], env={**env, "SCILLM_STORE_URL": pg_url})
        assert from_env.returncode == 0, from_env.stderr
        assert json.loads(from_env.stdout)["manifest"]["run_id"] == run_id
        replayed = _scillm("runs", "replay", run_id, "--store", pg_url,
                           "--target", running.grpc_target)
        report = json.loads(replayed.stdout)
        assert (replayed.returncode, report["identical"], report["differences"]) == (
            0, True, []), replayed.stdout + replayed.stderr
        assert report["run_id"] == run_id and report["replay_run_id"] != run_id
        # The replay is a run of its own (outside the session), kept in the same store.
        relisted = _scillm("runs", "list", "--store", pg_url, "--service", "codeworld")
        assert _ids_of(relisted.stdout) == {run_id, report["replay_run_id"]}

        missing = _scillm("runs", "list", "--store", pg_url.rsplit("/", 1)[0] + "/nosuchdb")
        assert missing.returncode == 1 and "does not exist" in missing.stderr
        assert PASSWORD not in missing.stderr
    finally:
        with contextlib.suppress(Exception):
            running.stop()


def test_virtual_keys_are_shared_by_every_process_on_one_database(
        pg_url: str, tmp_path: Path) -> None:
    """A key made through one process works on another using the same database, and its
    deletion reaches the other within the lookup cache's time."""
    import time

    import httpx

    master = "sk-master-shared"
    meshes = [start_mesh(mesh_settings(tmp_path / name, store_url=pg_url, master_key=master,
                                       services=("completion",)))
              for name in ("a", "b")]
    chat = {"model": "echo/x", "messages": [{"role": "user", "content": "hi"}],
            "scillm": {"cache": {"bypass": True}}}
    try:
        a, b = (f"{m.http_url}" for m in meshes)
        made = httpx.post(f"{a}/key/generate", json={"models": ["echo/x"]}, timeout=30,
                          headers={"authorization": f"Bearer {master}"})
        assert made.status_code == 200, made.text
        key = made.json()["key"]
        used = httpx.post(f"{b}/v1/chat/completions", json=chat, timeout=30,
                          headers={"authorization": f"Bearer {key}"})
        assert used.status_code == 200, used.text
        import psycopg

        with psycopg.connect(pg_url) as conn:  # stored hashed: the secret is nowhere
            rows = conn.execute("SELECT * FROM scillm_keys").fetchall()
        digest = hashlib.sha256(key.encode()).hexdigest()
        assert [row[0] for row in rows] == [digest]
        assert key.removeprefix("sk-") not in repr(rows)
        gone = httpx.post(f"{a}/key/delete", json={"keys": [key]}, timeout=30,
                          headers={"authorization": f"Bearer {master}"})
        assert gone.status_code == 200, gone.text
        # README: "a deleted key stops working everywhere within 2 s". b looked the key up
        # before the deletion returned, so any call b starts 2 s after it must be refused
        # (b runs in this process: the same monotonic clock). A wait, not a race: a slow
        # machine only makes the call later.
        deleted_at = time.monotonic()
        time.sleep(max(0.0, deleted_at + 2.0 - time.monotonic()))
        late = httpx.post(f"{b}/v1/chat/completions", json=chat, timeout=30,
                          headers={"authorization": f"Bearer {key}"})
        assert late.status_code == 401, late.text
        assert not (tmp_path / "b" / "keys.sqlite3").exists()  # nothing kept locally
    finally:
        for m in meshes:
            m.stop()


async def test_a_rate_limit_past_2_31_is_kept_on_postgresql_too(pg_url: str) -> None:
    """The keys table's limits were INTEGER (32 bits): a key whose tpm_limit the door
    accepts (any whole number below 2**63) failed to be stored on PostgreSQL. A table made
    before is widened when a process opens it."""
    import psycopg

    from scillm.server.keys import PostgresKeyStore
    from scillm.server.manifests import open_run_store
    from scillm.server.settings import Settings

    with psycopg.connect(pg_url, autocommit=True) as conn:  # as an older process made it
        conn.execute("CREATE TABLE scillm_keys (key_hash TEXT PRIMARY KEY, key_id TEXT NOT "
                     "NULL UNIQUE, key_alias TEXT NOT NULL, models TEXT NOT NULL, expires_at "
                     "DOUBLE PRECISION, max_budget DOUBLE PRECISION NOT NULL, spend DOUBLE "
                     "PRECISION NOT NULL, rpm_limit INTEGER NOT NULL, tpm_limit INTEGER NOT "
                     "NULL, metadata TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)")
    runs = open_run_store(Settings(store_url=pg_url))
    try:
        store = PostgresKeyStore(runs)
        _, made = await store.create(tpm_limit=2**40, rpm_limit=2**63 - 1)
        found = await store.find(made.key_id)
        assert found is not None and (found.tpm_limit, found.rpm_limit) == (2**40, 2**63 - 1)
    finally:
        runs.close()


async def test_a_key_alias_names_one_key_on_postgresql_too(pg_url: str) -> None:
    """Processes sharing one database, each making a key of one new alias at once: one
    gets it, the others are refused (DuplicateKeyAlias naming the key that has it); the
    database itself refuses a second key with an alias, and no alias is no alias."""
    import psycopg

    from scillm.server.keys import DuplicateKeyAlias, PostgresKeyStore

    runs = [open_run_store(pg_url) for _ in range(4)]
    try:
        stores = [PostgresKeyStore(r) for r in runs]
        made = await asyncio.gather(*(s.create(key_alias="race") for s in stores
                                      for _ in range(4)), return_exceptions=True)
        won = [m for m in made if isinstance(m, tuple)]
        assert len(won) == 1, made
        for refused in made:
            if not isinstance(refused, tuple):
                assert isinstance(refused, DuplicateKeyAlias), refused
                assert refused.param == "key_alias" and won[0][1].key_id in str(refused)
        for store in stores:
            await store.create(key_alias="")
        with psycopg.connect(pg_url) as conn, pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO scillm_keys SELECT 'h', 'i', key_alias, models, "
                         "expires_at, max_budget, spend, rpm_limit, tpm_limit, metadata, "
                         "created_at FROM scillm_keys WHERE key_alias = 'race'")
    finally:
        for r in runs:
            r.close()


async def test_a_key_alias_taken_while_a_create_checks_it_is_refused(pg_url: str) -> None:
    """The race itself, made certain: another process has inserted a key of the alias and
    not yet committed when a create checks the alias (free, as far as it can see). The
    create waits on the database's unique index, and once the other commits it is refused
    (DuplicateKeyAlias naming that key), not stored beside it."""
    import time

    import psycopg

    from scillm.server.keys import DuplicateKeyAlias, PostgresKeyStore

    runs = open_run_store(pg_url)
    try:
        store = PostgresKeyStore(runs)
        with psycopg.connect(pg_url) as other, psycopg.connect(pg_url, autocommit=True) as spy:
            other.execute("INSERT INTO scillm_keys VALUES ('h', 'other-id', 'held', '[]', NULL, "
                          "0, 0, 0, 0, '{}', 0)")  # a transaction, not committed
            create = asyncio.ensure_future(store.create(key_alias="held"))
            deadline = time.monotonic() + 30
            while not spy.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = "
                                  "'Lock' AND query LIKE 'INSERT INTO scillm_keys%'").fetchall():
                assert time.monotonic() < deadline and not create.done(), create
                await asyncio.sleep(0.02)
            other.commit()
            with pytest.raises(DuplicateKeyAlias) as refused:
                await create
        assert "other-id" in str(refused.value)
        assert runs.execute("SELECT key_id FROM scillm_keys") == [("other-id",)]
    finally:
        runs.close()


async def test_a_postgresql_key_table_with_one_alias_on_two_keys_still_opens(
        pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A table from before may hold an alias on several keys: the store opens, a warning
    names the alias and its keys, and no new key takes an alias held; once each alias is
    on one key, the next open makes aliases unique in the database."""
    import psycopg

    from scillm.server.keys import DuplicateKeyAlias, PostgresKeyStore

    with psycopg.connect(pg_url, autocommit=True) as conn:  # as an older process made it
        conn.execute("CREATE TABLE scillm_keys (key_hash TEXT PRIMARY KEY, key_id TEXT NOT "
                     "NULL UNIQUE, key_alias TEXT NOT NULL, models TEXT NOT NULL, expires_at "
                     "DOUBLE PRECISION, max_budget DOUBLE PRECISION NOT NULL, spend DOUBLE "
                     "PRECISION NOT NULL, rpm_limit BIGINT NOT NULL, tpm_limit BIGINT NOT "
                     "NULL, metadata TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)")
        for i, alias in enumerate(["dup", "dup", "solo", "", ""]):
            conn.execute("INSERT INTO scillm_keys VALUES (%s, %s, %s, '[]', NULL, 0, 0, 0, 0, "
                         "'{}', 0)", (f"hash{i}", f"id{i}", alias))
    runs = open_run_store(pg_url)
    try:
        with caplog.at_level(logging.WARNING):
            store = PostgresKeyStore(runs)
        assert "'dup'" in caplog.text and "id0" in caplog.text and "id1" in caplog.text
        assert "'solo'" not in caplog.text and PASSWORD not in caplog.text
        assert await store.find("id1") is not None
        for alias in ("dup", "solo"):
            with pytest.raises(DuplicateKeyAlias):
                await store.create(key_alias=alias)
        await store.create(key_alias="fresh")
        with pytest.raises(DuplicateKeyAlias):
            await store.create(key_alias="fresh")
        extra = await store.find("id1")
        assert extra is not None
        await store.delete(extra.key_hash)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            PostgresKeyStore(runs)
        assert caplog.text == ""
        with psycopg.connect(pg_url) as conn, pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO scillm_keys VALUES ('h', 'i', 'dup', '[]', NULL, 0, 0, "
                         "0, 0, '{}', 0)")
    finally:
        runs.close()


def test_a_run_store_gone_away_is_unavailable_with_its_reason_then_used_again(
        tmp_path: Path, pg_server: PgServer, pg_url: str) -> None:
    """The store's database stops taking connections while the mesh serves (as a restart
    or a failover does): a run is refused with UNAVAILABLE naming the store (its password
    hidden), which a caller may retry, not INTERNAL; once the database is back, runs are
    stored again on a fresh connection."""
    import psycopg

    from scillm.clients import RPCError

    database = pg_url.rsplit("/", 1)[1]
    running = start_mesh(mesh_settings(tmp_path, store_url=pg_url, http_enabled=False,
                                       services=("codeworld",)))
    try:
        with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
            first = asyncio.run(_codeworld_run(running.grpc_target))
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (database,))
            with pytest.raises(RPCError) as refused:
                asyncio.run(_codeworld_run(running.grpc_target))
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            again = asyncio.run(_codeworld_run(running.grpc_target))
    finally:
        running.stop()
    assert refused.value.code.name == "UNAVAILABLE", refused.value
    said = str(refused.value)
    assert "run store at postgresql://scillm:***@" in said and PASSWORD not in said
    assert "not currently accepting connections" in said
    store = open_run_store(pg_url, create=False)
    try:
        assert set(_ids(store.list(session_id="pg-session"))) == {
            first.manifest.run_id, again.manifest.run_id}
    finally:
        store.close()


def test_a_full_sqlite_store_is_unavailable_said_once(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A SQLite store on a full disk answered every stored call with INTERNAL and a
    traceback ("database or disk is full"): it is the store being unavailable, as a
    PostgreSQL store that went away is (UNAVAILABLE, retryable, naming the store), and
    the log says so once, then once more when the store writes again."""
    from scillm.server.manifests import RunStoreUnavailable

    caplog.set_level(logging.INFO, logger="scillm.server")
    store = SQLiteRunStore(tmp_path / "runs.sqlite3")
    try:
        store._db.execute("PRAGMA max_page_count = 16")  # full after a few runs
        stored = 0
        with pytest.raises(RunStoreUnavailable) as full:
            for i in range(1000):
                store.put_sync(*_run(f"r{i:04d}", "codeworld", "s", "t", i))
                stored += 1
        assert 0 < stored < 1000
        assert "runs.sqlite3" in str(full.value) and "full" in str(full.value)
        for i in range(3):  # still full: the same answer, not said again
            with pytest.raises(RunStoreUnavailable):
                store.put_sync(*_run(f"again{i}", "codeworld", "s", "t", i))
        assert len(store.list(limit=-1)) == stored  # what was stored is still readable
        store._db.execute("PRAGMA max_page_count = 100000")  # room again
        store.put_sync(*_run("after", "codeworld", "s", "t", 5000))
    finally:
        store.close()
    said = [r.getMessage() for r in caplog.records if "runs.sqlite3" in r.getMessage()]
    assert len(said) == 2, said
    assert "cannot write" in said[0] and "writes again" in said[1]
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_run_its_store_cannot_keep_still_sends_its_summary(tmp_path: Path) -> None:
    """A CodeWorld run whose final store write failed lost its summary (the rankings):
    the stream ended UNAVAILABLE after the last result and before the summary. The
    summary is sent first; the stream then ends UNAVAILABLE naming the store, so the
    caller knows the run was not kept. (Prove and the agent end their runs the same way.)"""
    from scillm.clients import RPCError
    from scillm.codeworld.v1 import codeworld_pb2 as cwpb

    running = start_mesh(mesh_settings(tmp_path, services=("codeworld",)))
    try:
        store = running.mesh._store
        assert isinstance(store, SQLiteRunStore)
        # Room for the run's "running" row, not for its 200 KB of output at the end.
        store._db.execute("PRAGMA max_page_count = 12")
        request = cwpb.CodeWorldRunRequest(strategies=[cwpb.Strategy(
            name="s", source="def solve(t, c):\n    print('x' * 200_000)\n    return 3\n")])
        request.items.add(task_id="t0").context.update({"input": [1, 2], "expected": 3})
        events = []
        async with ScillmClient(running.grpc_target) as client:
            with pytest.raises(RPCError) as failed:
                async for event in client.codeworld.run(request):
                    events.append(event)
        assert failed.value.code.name == "UNAVAILABLE", failed.value
        assert "runs.sqlite3" in failed.value.message
        assert [e.WhichOneof("event") for e in events] == ["run", "summary"]
        assert events[-1].summary.rankings[0].entries[0].strategy == "s"
    finally:
        running.stop()


@pytest.mark.parametrize("alias", ["", "mine"])
async def test_a_key_insert_run_again_after_its_commit_returns_the_key(
        pg_url: str, alias: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run store runs a statement again when its connection broke, which may be after
    the statement committed. A key's insert run again found its own row: a key without an
    alias failed INTERNAL, stored but its secret never returned."""
    from scillm.server.keys import PostgresKeyStore

    runs = open_run_store(pg_url)
    try:
        store = PostgresKeyStore(runs)
        once = runs._run  # type: ignore[attr-defined]

        def again(sql: str, args: Any) -> Any:
            if sql.startswith("INSERT INTO scillm_keys"):
                once(sql, args)  # committed; then the connection broke, as far as we knew
            return once(sql, args)

        monkeypatch.setattr(runs, "_run", again)
        secret, record = await store.create(
            key_alias=f"{alias}-{uuid.uuid4().hex}" if alias else "")
        monkeypatch.undo()
        found = await store.find(secret)
        assert found is not None and found.key_id == record.key_id
    finally:
        runs.close()
