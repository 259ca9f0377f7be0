"""Key hashing and every key check, rule by rule, on a real SQLite key store.

The doors (HTTP 401/403/429, gRPC metadata, PostgreSQL) are tested in test_keys.py and
test_run_store_pg.py; these tests pin each rule on its own, fast enough for the mutation
pass (docs/mutation.md)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from pathlib import Path

import pytest
from fakeclock import Clock

from scillm.server.keys import (
    Authenticator,
    MemoryWindows,
    Prices,
    Principal,
    SQLiteKeyStore,
    token_from_metadata,
)
from scillm.server.keys._store import KeyRecord, hash_key
from scillm.server.keys._windows import WINDOW_S
from scillm.server.keys.errors import (
    BudgetExceeded,
    DuplicateKeyAlias,
    Forbidden,
    KeyRateLimited,
    Unauthenticated,
)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteKeyStore:
    return SQLiteKeyStore(tmp_path / "keys" / "keys.sqlite3")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(store: SQLiteKeyStore, clock: Clock) -> Authenticator:
    return Authenticator("sk-master", store, {"priced": (0.5, 2.0)}, MemoryWindows(clock))


# --------------------------------------------------------------------------- the store


def test_a_key_is_stored_as_the_sha256_of_its_secret() -> None:
    assert hash_key("sk-abc") == hashlib.sha256(b"sk-abc").hexdigest()
    assert hash_key("sk-abc") != hash_key("sk-abd") and len(hash_key("")) == 64


async def test_create_makes_a_random_secret_and_stores_only_its_hash(
        store: SQLiteKeyStore, tmp_path: Path) -> None:
    before = time.time()
    secret, record = await store.create(key_alias="a", models=("m1", "m2"), max_budget=2.5,
                                        rpm_limit=3, tpm_limit=4, expires_at=before + 60,
                                        metadata={"runs": "read"})
    other, _ = await store.create()
    assert secret.startswith("sk-") and len(secret) == 46 and other != secret
    assert record.key_hash == hash_key(secret) and record.key_id == record.key_hash[:16]
    assert before <= record.created_at <= time.time()
    assert (record.key_alias, record.models, record.max_budget, record.rpm_limit,
            record.tpm_limit, record.expires_at, record.metadata, record.spend) == (
        "a", ("m1", "m2"), 2.5, 3, 4, before + 60, {"runs": "read"}, 0.0)
    rows = sqlite3.connect(tmp_path / "keys" / "keys.sqlite3").execute(
        "SELECT * FROM keys WHERE key_id = ?", (record.key_id,)).fetchall()
    assert rows == [(record.key_hash, record.key_id, "a", '["m1", "m2"]', before + 60, 2.5,
                     0.0, 3, 4, '{"runs": "read"}', record.created_at)]
    assert secret not in repr(rows)


async def test_find_by_secret_or_key_id_never_by_hash(store: SQLiteKeyStore,
                                                      tmp_path: Path) -> None:
    secret, record = await store.create(models=("m",), metadata={"k": "v"}, key_alias="x",
                                        expires_at=time.time() + 60, max_budget=1.5,
                                        rpm_limit=7, tpm_limit=8)
    assert await store.find(secret) == record
    assert await store.find(record.key_id) == record
    assert await store.find(record.key_hash) is None  # the stored hash is no credential
    assert await store.find("sk-unknown") is None
    again = SQLiteKeyStore(tmp_path / "keys" / "keys.sqlite3")  # kept on disk
    assert await again.find(secret) == record


async def test_spend_adds_up_per_key_and_delete_removes_one_key(
        store: SQLiteKeyStore) -> None:
    first, one = await store.create()
    second, two = await store.create()
    await store.add_spend(one.key_hash, 1.5)
    await store.add_spend(one.key_hash, 2.0)
    found = await store.find(first)
    assert found is not None and found.spend == 3.5
    found = await store.find(second)
    assert found is not None and found.spend == 0.0
    await store.delete(one.key_hash)
    assert await store.find(first) is None and await store.find(second) == two


def test_an_in_memory_store_makes_no_directory(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    SQLiteKeyStore(":memory:")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("expires_at", "now", "expired"), [
    (None, 1e12, False), (100.0, 99.9, False), (100.0, 100.0, True), (100.0, 100.1, True)])
def test_expiry(expires_at: float | None, now: float, expired: bool) -> None:
    assert KeyRecord("h", "i", expires_at=expires_at).expired(now) is expired


async def test_an_alias_names_one_key(store: SQLiteKeyStore) -> None:
    """The store refuses an alias another key has, naming it and that key; no alias is
    no alias (many keys have none); a deleted key's alias is free again."""
    _, first = await store.create(key_alias="team")
    with pytest.raises(DuplicateKeyAlias) as taken:
        await store.create(key_alias="team", models=("m",))
    assert taken.value.param == "key_alias"
    assert "'team'" in str(taken.value) and first.key_id in str(taken.value)
    for _ in range(3):
        assert (await store.create(key_alias=""))[1].key_alias == ""
    assert (await store.create(key_alias="Team"))[1].key_alias == "Team"  # case counts
    await store.delete(first.key_hash)
    assert (await store.create(key_alias="team"))[1].key_alias == "team"


async def test_of_many_processes_making_one_alias_at_once_one_wins(tmp_path: Path) -> None:
    """Stores on one file, as processes sharing it: each create runs in its own thread,
    and exactly one of those asking for a new alias at once gets it."""
    path = tmp_path / "keys.sqlite3"
    stores = [SQLiteKeyStore(path) for _ in range(4)]
    made = await asyncio.gather(*(asyncio.to_thread(asyncio.run, s.create(key_alias="race"))
                                  for s in stores for _ in range(4)), return_exceptions=True)
    assert sum(isinstance(m, tuple) for m in made) == 1, made
    assert all(isinstance(m, tuple | DuplicateKeyAlias) for m in made), made
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM keys").fetchone() == (1,)


#: The keys table as every earlier version made it: no unique alias.
_OLD_TABLE = ("CREATE TABLE keys (key_hash TEXT PRIMARY KEY, key_id TEXT NOT NULL UNIQUE, "
              "key_alias TEXT NOT NULL, models TEXT NOT NULL, expires_at REAL, max_budget "
              "REAL NOT NULL, spend REAL NOT NULL, rpm_limit INTEGER NOT NULL, tpm_limit "
              "INTEGER NOT NULL, metadata TEXT NOT NULL, created_at REAL NOT NULL)")


def _old_store(path: Path, aliases: list[str]) -> list[str]:
    """A key store made before aliases were unique, with a key per alias; their key_ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute(_OLD_TABLE)
        for i, alias in enumerate(aliases):
            db.execute("INSERT INTO keys VALUES (?,?,?,'[]',NULL,0,0,0,0,'{}',?)",
                       (f"hash{i}", f"id{i}", alias, float(i)))
    return [f"id{i}" for i in range(len(aliases))]


async def test_a_store_made_before_with_one_alias_on_two_keys_still_opens(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A database from before may hold an alias on several keys: it opens (its keys keep
    working), a warning names each such alias and its keys, and no new key takes those
    or any other alias held. Once each alias is on one key, the next open makes aliases
    unique in the database."""
    path = tmp_path / "keys.sqlite3"
    ids = _old_store(path, ["dup", "dup", "solo", "", "", "dup2", "dup2"])
    with caplog.at_level(logging.WARNING):
        store = SQLiteKeyStore(path)
    said = caplog.text
    assert str(path) in said and "'dup'" in said and "'dup2'" in said and "'solo'" not in said
    assert all(key_id in said for key_id in (ids[0], ids[1], ids[5], ids[6]))
    for key_id in ids:
        assert await store.find(key_id) is not None
    for alias in ("dup", "solo", "dup2"):
        with pytest.raises(DuplicateKeyAlias):
            await store.create(key_alias=alias)
    await store.create(key_alias="fresh")
    with pytest.raises(DuplicateKeyAlias):
        await store.create(key_alias="fresh")
    for key_id in (ids[1], ids[6]):  # the operator deletes the extra keys
        found = await store.find(key_id)
        assert found is not None
        await store.delete(found.key_hash)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        SQLiteKeyStore(path)
    assert caplog.text == ""
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO keys SELECT 'h', 'i', key_alias, models, expires_at, "
                   "max_budget, spend, rpm_limit, tpm_limit, metadata, created_at FROM keys "
                   "WHERE key_id = ?", (ids[0],))


async def test_a_store_made_before_without_duplicates_gets_unique_aliases(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.sqlite3"
    _old_store(path, ["a", "b", "", ""])
    with caplog.at_level(logging.WARNING):
        store = SQLiteKeyStore(path)
    assert caplog.text == ""
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO keys VALUES ('h', 'i', 'a', '[]', NULL, 0, 0, 0, 0, '{}', 0)")
    with pytest.raises(DuplicateKeyAlias):
        await store.create(key_alias="b")


# --------------------------------------------------------------------------- the caller


@pytest.mark.parametrize(("metadata", "token"), [
    ([("authorization", "Bearer sk-x")], "sk-x"),
    ([("authorization", "bearer  sk-x  ")], "sk-x"),
    ([("authorization", b"BEARER sk-x")], "sk-x"),
    ([("authorization", " sk-raw ")], "sk-raw"),
    ([("authorization", "Basic abc")], "Basic abc"),
    ([("x-api-key", " sk-y ")], "sk-y"),
    ([("x-api-key", b"sk-y")], "sk-y"),
    ([("x-request-id", "r"), ("authorization", "Bearer a"), ("x-api-key", "b")], "a"),
    ([("x-api-key", "b"), ("authorization", "Bearer a")], "b"),
    ([("x-request-id", "Bearer a")], None),
    ([], None),
    (None, None),
])
def test_the_token_comes_from_authorization_or_x_api_key(
        metadata: list[tuple[str, str | bytes]] | None, token: str | None) -> None:
    assert token_from_metadata(metadata) == token


def test_who_a_principal_is() -> None:
    assert Principal(master=True).key_id == "master"
    assert Principal(False, KeyRecord("h", "id1")).key_id == "id1"
    assert Principal(False).key_id == ""


async def test_without_a_master_key_everyone_is_the_master(store: SQLiteKeyStore) -> None:
    for master in (None, ""):
        open_door = Authenticator(master, store)
        assert not open_door.enabled and open_door.master_key is None
        assert await open_door.authenticate(None) == Principal(master=True)
    assert Authenticator("m", store).enabled


async def test_authenticate(auth: Authenticator) -> None:
    secret, record = await auth.store.create()
    for missing in (None, ""):
        with pytest.raises(Unauthenticated, match=r"^missing API key: send 'Authorization: "
                                                  r"Bearer <key>'$"):
            await auth.authenticate(missing)
    assert await auth.authenticate("sk-master") == Principal(master=True)
    assert await auth.authenticate(secret) == Principal(master=False, record=record)
    # Neither a key's id nor its stored hash is a credential, nor a prefix of the master.
    for wrong in (record.key_id, record.key_hash, "sk-unknown", "sk-maste", "sk-master "):
        with pytest.raises(Unauthenticated, match=r"^invalid API key$"):
            await auth.authenticate(wrong)


# --------------------------------------------------------------------------- the rules


async def _principal(auth: Authenticator, **fields: object) -> Principal:
    _, record = await auth.store.create(**fields)
    return Principal(False, record)


async def test_the_master_may_do_anything(auth: Authenticator) -> None:
    await auth.authorize(Principal(True), model="any", management=True)
    auth.authorize_runs(Principal(True))
    assert await auth.account(Principal(True), "priced", 10, 10) == 0.0
    assert await auth.account(Principal(False), "priced", 10, 10) == 0.0  # no key, no spend


async def test_management_needs_the_master_key(auth: Authenticator) -> None:
    with pytest.raises(Forbidden, match=r"^key management needs the master key$"):
        await auth.authorize(await _principal(auth), management=True)


async def test_an_expired_key(auth: Authenticator) -> None:
    principal = await _principal(auth, expires_at=time.time() - 1)
    with pytest.raises(Forbidden, match=r"^key \w{16} has expired$"):
        await auth.authorize(principal)
    await auth.authorize(await _principal(auth, expires_at=time.time() + 60))


async def test_a_key_calls_only_its_models(auth: Authenticator) -> None:
    principal = await _principal(auth, models=("a", "b"))
    await auth.authorize(principal, model="a")
    await auth.authorize(principal, model="b")
    await auth.authorize(principal)  # no model: a call that names none
    with pytest.raises(Forbidden) as info:
        await auth.authorize(principal, model="c")
    assert not isinstance(info.value, BudgetExceeded)
    assert str(info.value).endswith("may not call model 'c'; allowed: a, b")
    await auth.authorize(await _principal(auth), model="c")  # no list: every model


async def test_a_key_stops_at_its_budget(auth: Authenticator) -> None:
    principal = await _principal(auth, max_budget=3.0)
    assert await auth.account(principal, "priced", 2, 1) == 3.0  # 2 * 0.5 + 1 * 2.0
    spent = await auth.store.find(principal.record.key_id)  # type: ignore[union-attr]
    assert spent is not None and spent.spend == 3.0
    with pytest.raises(BudgetExceeded, match=r"has spent 3 of its budget 3$"):
        await auth.authorize(Principal(False, spent))
    assert await auth.account(principal, "unpriced", 100, 100) == 0.0
    below = await _principal(auth, max_budget=3.0)
    await auth.account(below, "priced", 0, 1)
    await auth.authorize(Principal(False, await auth.store.find(  # type: ignore[arg-type]
        below.record.key_id)))  # type: ignore[union-attr]
    unlimited = await _principal(auth)
    await auth.account(unlimited, "priced", 1000, 1000)
    await auth.authorize(Principal(False, await auth.store.find(  # type: ignore[arg-type]
        unlimited.record.key_id)))  # type: ignore[union-attr]


def test_a_model_is_priced_as_the_router_serves_it() -> None:
    """A wildcard's models (`wild/foo`) were looked up by their own names and cost
    nothing: a name is priced by its plain entry, else by the first pattern matching it,
    in config order, as the router picks its deployments; an unpriced plain name is not
    priced by a pattern that matches it too."""
    prices = Prices([("wild/plain", (0.0, 0.0)), ("wild/*", (1.0, 2.0)),
                     ("wild/dear*", (9.0, 9.0)), ("exact", (0.5, 0.0)),
                     ("exact", (0.0, 0.0)), ("*-mini", (0.25, 0.25))])
    assert prices("wild/foo") == prices("wild/dear-one") == (1.0, 2.0)  # the first pattern
    assert prices("wild/plain") == (0.0, 0.0)  # served by its own entry: unpriced
    assert prices("exact") == (0.5, 0.0)  # listed twice: its priced entry
    assert prices("gpt-mini") == (0.25, 0.25)
    assert prices("WILD/foo") == prices("other") == (0.0, 0.0)  # as the router: case counts
    assert Prices.of({"a": (1.0, 1.0)})("a") == (1.0, 1.0) and Prices.of(None)("a") == (0, 0)


async def test_a_wildcards_model_is_charged_at_the_patterns_prices(store: SQLiteKeyStore,
                                                                   clock: Clock) -> None:
    auth = Authenticator("sk-master", store, Prices([("wild/*", (0.5, 2.0))]),
                         MemoryWindows(clock))
    principal = await _principal(auth, max_budget=3.0)
    assert await auth.account(principal, "wild/foo", 2, 1) == 3.0
    with pytest.raises(BudgetExceeded):
        await auth.authorize(Principal(False, await auth.store.find(  # type: ignore[arg-type]
            principal.record.key_id)), model="wild/foo")  # type: ignore[union-attr]


async def test_requests_per_minute(auth: Authenticator, clock: Clock) -> None:
    principal = await _principal(auth, rpm_limit=2)
    await auth.authorize(principal)
    clock.now += 10
    await auth.authorize(principal)
    with pytest.raises(KeyRateLimited, match=r"is over 2 requests per minute$") as info:
        await auth.authorize(principal)
    assert info.value.retry_after_s == pytest.approx(50.0)  # the first leaves at 1060
    clock.now += 50  # the first request left the window
    await auth.authorize(principal)
    assert (await auth.windows.total(principal.record.key_hash,  # type: ignore[union-attr]
                                     "requests"))[0] == 2


async def test_a_refused_request_is_not_counted_and_no_limit_counts_nothing(
        auth: Authenticator) -> None:
    principal = await _principal(auth, rpm_limit=1)
    await auth.authorize(principal)
    for _ in range(3):
        with pytest.raises(KeyRateLimited):
            await auth.authorize(principal)
    key = principal.record.key_hash  # type: ignore[union-attr]
    assert await auth.windows.total(key, "requests") == (1, pytest.approx(60.0))
    free = await _principal(auth)
    for _ in range(5):
        await auth.authorize(free)
    assert await auth.windows.total(free.record.key_hash,  # type: ignore[union-attr]
                                    "requests") == (0, None)


async def test_tokens_per_minute(auth: Authenticator, clock: Clock) -> None:
    principal = await _principal(auth, tpm_limit=10)
    await auth.account(principal, "free", 4, 5)
    await auth.authorize(principal)  # 9 < 10
    await auth.account(principal, "free", 1, 0)
    with pytest.raises(KeyRateLimited, match=r"is over 10 tokens per minute$") as info:
        await auth.authorize(principal)
    assert info.value.retry_after_s == pytest.approx(60.0)
    clock.now += 60
    await auth.authorize(principal)
    untracked = await _principal(auth)
    await auth.account(untracked, "free", 50, 50)
    assert await auth.windows.total(untracked.record.key_hash,  # type: ignore[union-attr]
                                    "tokens") == (0, None)


async def test_retry_after_is_never_zero(auth: Authenticator, clock: Clock) -> None:
    principal = await _principal(auth, rpm_limit=1)
    await auth.authorize(principal)
    clock.now += WINDOW_S - 1e-9
    with pytest.raises(KeyRateLimited) as info:
        await auth.authorize(principal)
    assert info.value.retry_after_s == 0.001


async def test_who_may_read_runs(auth: Authenticator) -> None:
    auth.authorize_runs(await _principal(auth, metadata={"runs": "read"}))
    for metadata in ({}, {"runs": "write"}, {"run": "read"}, {"read": "runs"}):
        with pytest.raises(Forbidden, match='may not read runs; a key made with "metadata": '
                                            r'\{"runs": "read"\} may$'):
            auth.authorize_runs(await _principal(auth, metadata=metadata))
    expired = await _principal(auth, metadata={"runs": "read"}, expires_at=time.time() - 1)
    with pytest.raises(Forbidden, match=r"has expired$"):
        auth.authorize_runs(expired)


# --------------------------------------------------------------------------- the windows


async def test_memory_windows_keep_one_minute_per_key_and_kind(clock: Clock) -> None:
    windows = MemoryWindows(clock)
    assert await windows.total("k", "requests") == (0, None)
    await windows.add("k", "tokens", 5)
    clock.now += 20
    await windows.add("k", "tokens", 7)
    await windows.add("other", "tokens", 100)
    await windows.add("k", "requests", 1)
    assert await windows.total("k", "tokens") == (12, 40.0)
    clock.now += 40  # the first entry is exactly a minute old: it has left
    assert await windows.total("k", "tokens") == (7, 20.0)
    clock.now += 19.5
    assert await windows.total("k", "tokens") == (7, 0.5)
    clock.now += 0.5
    assert await windows.total("k", "tokens") == (0, None)
    assert await windows.total("other", "tokens") == (0, None)


async def test_memory_windows_keep_a_bucket_a_second_however_busy(clock: Clock) -> None:
    """What a window holds is bounded by the minute's seconds, not by its requests: it
    kept an entry per request and summed them all on every request."""
    windows = MemoryWindows(clock)
    for _ in range(600):  # 150 s at 4 requests a second
        clock.now += 0.25
        await windows.take("k", "requests", 10_000)
        await windows.add("k", "tokens", 3)
    assert all(len(buckets) <= WINDOW_S + 1 for buckets in windows._entries.values())
    # At 1150.0: the buckets of seconds 1091..1149 (4 each) and 1150's first request.
    assert await windows.total("k", "requests") == (59 * 4 + 1, pytest.approx(1.0))
    assert await windows.total("k", "tokens") == (3 * (59 * 4 + 1), pytest.approx(1.0))


async def test_a_window_counts_by_the_second(clock: Clock) -> None:
    """A request counts in its second's bucket, which leaves a minute after the second
    began: a limit of 2 with requests at 1000.2 and 1000.9 is free again at 1060."""
    windows = MemoryWindows(clock)
    clock.now = 1000.2
    assert await windows.take("k", "requests", 2) is None
    clock.now = 1000.9
    assert await windows.take("k", "requests", 2) is None
    assert await windows.take("k", "requests", 2) == pytest.approx(59.1)
    clock.now = 1059.999
    assert await windows.take("k", "requests", 2) == pytest.approx(0.001)
    clock.now = 1060.0
    assert await windows.take("k", "requests", 2) is None
    assert await windows.total("k", "requests") == (1, 60.0)
