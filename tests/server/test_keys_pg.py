"""Updating and listing keys in PostgreSQL, on a real server (test_run_store_pg's): the
same answers as SQLite, an alias one of racing processes wins, and an update reaching the
other processes within their lookup cache's time, as a deletion does."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from meshutil import mesh_settings, start_mesh
from test_run_store_pg import pg_server, pg_url  # noqa: F401  (fixtures)

from scillm.server.keys import DuplicateKeyAlias, PostgresKeyStore, SQLiteKeyStore
from scillm.server.keys._store import KeyStore
from scillm.server.manifests import open_run_store


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> list[KeyStore]:
    """Four stores on one database, as four processes of a deployment."""
    if request.param == "sqlite":
        return [SQLiteKeyStore(tmp_path / "keys.sqlite3") for _ in range(4)]
    runs = [open_run_store(request.getfixturevalue("pg_url")) for _ in range(4)]
    request.addfinalizer(lambda: [r.close() for r in runs])
    return [PostgresKeyStore(r) for r in runs]


async def test_an_update_changes_only_what_it_names(stores: list[KeyStore]) -> None:
    store = stores[0]
    _, made = await store.create(key_alias="a", models=("m",), max_budget=5.0, rpm_limit=3,
                                 tpm_limit=30, metadata={"k": "v"}, expires_at=None)
    await store.add_spend(made.key_hash, 1.5)
    updated = await store.update(made.key_hash, models=("n", "o"), rpm_limit=0,
                                 expires_at=time.time() + 60)
    assert updated is not None
    assert (updated.models, updated.rpm_limit, updated.key_alias, updated.max_budget,
            updated.tpm_limit, updated.metadata, updated.spend) == \
        (("n", "o"), 0, "a", 5.0, 30, {"k": "v"}, 1.5)
    assert updated.expires_at is not None and updated.expires_at > time.time()
    found = await stores[1].find(made.key_id)
    assert found == updated
    assert await store.update("no-such-hash", rpm_limit=1) is None


async def test_listing_pages_oldest_first_with_an_alias_filter(stores: list[KeyStore]) -> None:
    store = stores[0]
    made = [(await store.create(key_alias=f"l{i}" if i % 2 else ""))[1] for i in range(7)]
    records, total = await store.page(offset=0, limit=3)
    assert total == 7 and [r.key_id for r in records] == [m.key_id for m in made[:3]]
    records, total = await store.page(offset=6, limit=3)
    assert total == 7 and [r.key_id for r in records] == [made[6].key_id]
    records, total = await store.page(offset=7, limit=3)
    assert (records, total) == ([], 7)
    records, total = await store.page(offset=0, limit=10, key_alias="l3")
    assert total == 1 and [r.key_id for r in records] == [made[3].key_id]


async def test_of_processes_racing_to_one_alias_one_wins(stores: list[KeyStore]) -> None:
    """Each of four processes moves a key of its own to one new alias, several times at
    once: exactly one update has it, the others are DuplicateKeyAlias naming the winner,
    and the database holds the alias on one key."""
    records = [(await s.create(key_alias=f"own-{i}-{j}"))[1]
               for i, s in enumerate(stores) for j in range(2)]
    pairs = [(stores[i // 2], r) for i, r in enumerate(records)]
    results = await asyncio.gather(*(s.update(r.key_hash, key_alias="raced")
                                     for s, r in pairs), return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1 and won[0] is not None and won[0].key_alias == "raced", results
    for lost in results:
        if lost is not won[0]:
            assert isinstance(lost, DuplicateKeyAlias), lost
            assert won[0].key_id in str(lost)
    listed, total = await stores[0].page(offset=0, limit=100, key_alias="raced")
    assert total == 1 and listed[0].key_id == won[0].key_id


async def test_an_alias_taken_while_an_update_checks_it_is_refused(pg_url: str) -> None:  # noqa: F811
    """The race made certain: another process has given a key the alias and not yet
    committed when an update checks it. The update waits on the unique index and, once
    the other commits, is refused (DuplicateKeyAlias naming that key)."""
    import psycopg

    runs = open_run_store(pg_url)
    try:
        store = PostgresKeyStore(runs)
        _, mine = await store.create(key_alias="mine")
        with psycopg.connect(pg_url) as other, psycopg.connect(pg_url, autocommit=True) as spy:
            other.execute("INSERT INTO scillm_keys VALUES ('h', 'other-id', 'held', '[]', NULL, "
                          "0, 0, 0, 0, '{}', 0)")  # a transaction, not committed
            update = asyncio.ensure_future(store.update(mine.key_hash, key_alias="held"))
            deadline = time.monotonic() + 30
            while not spy.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = "
                                  "'Lock' AND query LIKE 'UPDATE scillm_keys%'").fetchall():
                assert time.monotonic() < deadline and not update.done(), update
                await asyncio.sleep(0.02)
            other.commit()
            with pytest.raises(DuplicateKeyAlias) as refused:
                await update
        assert "other-id" in str(refused.value)
        assert (await store.find(mine.key_id)).key_alias == "mine"  # type: ignore[union-attr]
    finally:
        runs.close()


def test_an_update_reaches_every_process_within_the_cache_time(
        pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    """README: an update holds at once in the process that made it, and in the others
    within 2 s (each caches lookups that long), as a deletion does. b looked the key up
    before the update; calls b starts 2 s after the update returned see the new models."""
    master = "sk-master-pg-update"
    meshes = [start_mesh(mesh_settings(tmp_path / name, store_url=pg_url, master_key=master,
                                       services=("completion",)))
              for name in ("a", "b")]
    admin = {"authorization": f"Bearer {master}"}

    def chat(url: str, key: str, model: str) -> int:
        return httpx.post(f"{url}/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {key}"},
                          json={"model": model, "messages": [{"role": "user", "content": "x"}],
                                "scillm": {"cache": {"bypass": True}}}).status_code

    try:
        a, b = (m.http_url for m in meshes)
        made = httpx.post(f"{a}/key/generate", json={"models": ["echo/a"]}, timeout=30,
                          headers=admin)
        assert made.status_code == 200, made.text
        key = made.json()["key"]
        assert chat(a, key, "echo/a") == 200 and chat(b, key, "echo/a") == 200
        updated = httpx.post(f"{a}/key/update", json={"key": key, "models": ["echo/b"]},
                             timeout=30, headers=admin)
        assert updated.status_code == 200, updated.text
        done = time.monotonic()
        assert chat(a, key, "echo/a") == 403 and chat(a, key, "echo/b") == 200  # at once
        time.sleep(max(0.0, done + PostgresKeyStore.CACHE_S - time.monotonic()))
        assert chat(b, key, "echo/a") == 403
        assert chat(b, key, "echo/b") == 200
        listed = httpx.get(f"{b}/key/list", params={"return_full_object": "true"},
                           timeout=30, headers=admin)
        assert listed.status_code == 200, listed.text
        assert [k["models"] for k in listed.json()["keys"]] == [["echo/b"]]
        assert key.removeprefix("sk-") not in listed.text
    finally:
        for m in meshes:
            m.stop()
