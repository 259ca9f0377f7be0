"""Virtual keys, stored by the sha256 of their secret (never the secret).

`SQLiteKeyStore` keeps them in a file beside the process's run store; `PostgresKeyStore`
keeps them in the PostgreSQL database of the run store (`SCILLM_STORE_URL`), so every
process of a deployment knows every key. Its lookups are cached for a moment
(`PostgresKeyStore.CACHE_S`): a key deleted in one process stops working in the others
within that time, and spend made elsewhere shows up as late.

A key alias names one key (LiteLLM's proxy refuses a second key with an alias): an insert
taking an alias another key has is refused (`DuplicateKeyAlias`), by a unique index on the
aliases that are set (an empty alias is none, which any number of keys share), so that two
processes making keys at once cannot both take one. A database from before may hold an
alias on several keys: it still opens and its keys keep working, a warning names each
such alias and its keys at every start, and the index is made at the first start after
each is on one key (delete the others). Until then new keys are refused an alias held all
the same, by the insert itself: one statement, which SQLite runs alone (processes sharing
the file included); on PostgreSQL two processes taking one new alias at that very moment
could both have it, which the index, once made, rules out. An update giving a key an
alias is checked the same way.

An update writes only the fields it changes (never the spend, which calls ending in other
processes add to meanwhile). On PostgreSQL it holds at once in the process that made it
and in the others once their cached lookup of the key expires (`CACHE_S`), as a deletion
does; SQLite's lookups are not cached, so it holds at once in every process sharing the
file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..manifests import RunStore, cannot_write
from .errors import DuplicateKeyAlias, KeyStoreError, KeyStoreUnavailable

__all__ = ["KeyRecord", "KeyStore", "PostgresKeyStore", "SQLiteKeyStore", "hash_key"]

log = logging.getLogger("scillm.server")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_hash    TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL UNIQUE,
    key_alias   TEXT NOT NULL,
    models      TEXT NOT NULL,
    expires_at  REAL,
    max_budget  REAL NOT NULL,
    spend       REAL NOT NULL,
    rpm_limit   INTEGER NOT NULL,
    tpm_limit   INTEGER NOT NULL,
    metadata    TEXT NOT NULL,
    created_at  REAL NOT NULL
);
"""
#: The aliases that are set name one key each (see the module docstring).
_ALIAS_INDEX = ("CREATE UNIQUE INDEX IF NOT EXISTS keys_alias ON keys (key_alias) "
                "WHERE key_alias != ''")
#: A key, unless its alias is set and another key has it: in one statement, so that no
#: other insert comes between the check and the row. (`AND key_alias != ''` lets the
#: check use the partial index.)
_INSERT = ("INSERT INTO keys SELECT ?,?,?,?,?,?,?,?,?,?,? WHERE ? = '' OR NOT EXISTS "
           "(SELECT 1 FROM keys WHERE key_alias = ? AND key_alias != '')")
_HOLDERS = ("SELECT key_id FROM keys WHERE key_alias = ? AND key_alias != '' "
            "ORDER BY created_at")
_DUPLICATES = ("SELECT key_alias, group_concat(key_id, ', ') FROM keys WHERE key_alias != '' "
               "GROUP BY key_alias HAVING count(*) > 1 ORDER BY key_alias")
#: The fields an update may change (`KeyStore.update`), each a column of its own.
UPDATABLE = frozenset(("key_alias", "models", "expires_at", "max_budget", "rpm_limit",
                       "tpm_limit", "metadata"))


def hash_key(secret: str) -> str:
    """The stored form of a key: keys are 256-bit random, so one sha256 is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class KeyRecord:
    """One virtual key (no secret)."""

    key_hash: str
    key_id: str
    key_alias: str = ""
    models: tuple[str, ...] = ()
    expires_at: float | None = None
    max_budget: float = 0.0
    spend: float = 0.0
    rpm_limit: int = 0
    tpm_limit: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def _new_record(**fields: Any) -> tuple[str, KeyRecord]:
    secret = "sk-" + secrets.token_urlsafe(32)
    digest = hash_key(secret)
    return secret, KeyRecord(key_hash=digest, key_id=digest[:16], created_at=time.time(),
                             **fields)


def _row(rec: KeyRecord) -> tuple[Any, ...]:
    return (rec.key_hash, rec.key_id, rec.key_alias, json.dumps(list(rec.models)),
            rec.expires_at, rec.max_budget, rec.spend, rec.rpm_limit, rec.tpm_limit,
            json.dumps(rec.metadata), rec.created_at)


def _record(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4], row[5],
                     row[6], row[7], row[8], json.loads(row[9]), row[10])


def _changes(changes: dict[str, Any], mark: str) -> tuple[str, list[Any]]:
    """`SET` assignments of the changed columns (`mark` is the driver's parameter) and
    their values, as stored."""
    unknown = set(changes) - UPDATABLE
    if unknown or not changes:
        raise ValueError(f"a key update changes some of {sorted(UPDATABLE)}; "
                         f"got {sorted(changes)}")
    names = sorted(changes)
    values = [json.dumps(list(changes[n])) if n == "models" else
              json.dumps(dict(changes[n])) if n == "metadata" else changes[n] for n in names]
    return ", ".join(f"{n} = {mark}" for n in names), values


def _update_sql(table: str, changes: dict[str, Any], mark: str,
                ne: str) -> tuple[str, list[Any]]:
    """One UPDATE of a key (by hash) returning its row; when it sets an alias, only if
    no other key has it, checked in the same statement (as `_INSERT`)."""
    assignments, values = _changes(changes, mark)
    sql = f"UPDATE {table} SET {assignments} WHERE key_hash = {mark}"
    alias = changes.get("key_alias")
    if alias:
        sql += (f" AND NOT EXISTS (SELECT 1 FROM {table} WHERE key_alias = {mark} AND "
                f"key_alias {ne} '' AND key_hash {ne} {mark})")
    return sql + " RETURNING *", values


def _taken(alias: str, holders: list[tuple[Any, ...]]) -> DuplicateKeyAlias:
    """The refusal of `alias`, naming the key(s) that have it (the caller has the master
    key, which may read every key)."""
    named = ", ".join(str(row[0]) for row in holders) or "another key"
    return DuplicateKeyAlias(f"key_alias {alias!r} is taken by key {named}: an alias names "
                             "one key (as in LiteLLM); choose another, or delete that key "
                             "first")


def _warn_duplicates(where: str, rows: list[tuple[Any, ...]], made: str) -> None:
    """Name the aliases a store from before holds on several keys, and what to do."""
    if rows:
        log.warning("key store %s: key aliases on more than one key, from before aliases "
                    "were unique: %s. Those keys keep working and no new key takes an alias "
                    "held, but the database enforces unique aliases only once each is on one "
                    "key: delete the extra keys (POST /key/delete); %s",
                    where, "; ".join(f"{alias!r} (keys {ids})" for alias, ids in rows), made)


class KeyStore:
    """Where virtual keys live; every method is a coroutine."""

    async def create(self, **fields: Any) -> tuple[str, KeyRecord]:
        """A new secret and its record (fields as in KeyRecord)."""
        raise NotImplementedError

    async def find(self, secret_or_id: str) -> KeyRecord | None:
        """The record for a secret or a key_id."""
        raise NotImplementedError

    async def add_spend(self, key_hash: str, amount: float) -> None:
        """Add to a key's spend."""
        raise NotImplementedError

    async def delete(self, key_hash: str) -> None:
        """Revoke a key."""
        raise NotImplementedError

    async def update(self, key_hash: str, **changes: Any) -> KeyRecord | None:
        """Change some fields of a key (those of `UPDATABLE`, as in KeyRecord) and
        leave the others; the key as changed, None when there is no such key.
        DuplicateKeyAlias when it would take an alias another key has."""
        raise NotImplementedError

    async def page(self, *, offset: int, limit: int,
                   key_alias: str = "") -> tuple[list[KeyRecord], int]:
        """Up to `limit` keys from the `offset`-th, oldest first, and how many there are
        in all (only the key of `key_alias` when it is set)."""
        raise NotImplementedError


class SQLiteKeyStore(KeyStore):
    """Keys in a local SQLite file: statements take microseconds, so they run inline."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._path = str(path)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:  # said "file is not a database", naming no file
            raise KeyStoreError(f"cannot open the key store at {path}: {exc}") from None
        self._lock = threading.Lock()
        self._unique_aliases()

    def _unique_aliases(self) -> None:
        """Make the unique alias index, unless the keys already break it (a store from
        before): then warn, naming them, and open all the same (see the module docstring)."""
        try:
            self._execute(_ALIAS_INDEX, ())
        except sqlite3.IntegrityError:
            _warn_duplicates(self._path, self._execute(_DUPLICATES, ()),
                             "the next start makes the index")
        except KeyStoreUnavailable as exc:  # read-only, or locked past the timeout
            log.warning("%s: the unique index on key aliases is not made now; new keys are "
                        "refused an alias held all the same", exc)

    def _execute(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """One statement, committed; its rows."""
        return self._changing(sql, args)[0]

    def _changing(self, sql: str, args: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], int]:
        """One statement, committed; its rows and how many it changed. A file that cannot
        be written now (a full disk) is KeyStoreUnavailable (UNAVAILABLE naming it), not an
        INTERNAL error."""
        try:
            with self._lock, self._db:
                cursor = self._db.execute(sql, args)
                return cursor.fetchall(), cursor.rowcount
        except sqlite3.OperationalError as exc:
            if not cannot_write(exc):
                raise
            raise KeyStoreUnavailable(f"the key store at {self._path} cannot write: "
                                      f"{exc}") from None

    async def create(self, **fields: Any) -> tuple[str, KeyRecord]:
        secret, rec = _new_record(**fields)
        alias = rec.key_alias
        try:
            _, inserted = self._changing(_INSERT, (*_row(rec), alias, alias))
        except sqlite3.IntegrityError as exc:  # the index: a key of this alias came between
            if not alias or "key_alias" not in str(exc):
                raise
            inserted = 0
        if not inserted:
            raise _taken(alias, self._execute(_HOLDERS, (alias,)))
        return secret, rec

    async def find(self, secret_or_id: str) -> KeyRecord | None:
        rows = self._execute("SELECT * FROM keys WHERE key_hash = ? OR key_id = ?",
                             (hash_key(secret_or_id), secret_or_id))
        return _record(rows[0]) if rows else None

    async def add_spend(self, key_hash: str, amount: float) -> None:
        self._execute("UPDATE keys SET spend = spend + ? WHERE key_hash = ?",
                      (amount, key_hash))

    async def delete(self, key_hash: str) -> None:
        self._execute("DELETE FROM keys WHERE key_hash = ?", (key_hash,))

    async def update(self, key_hash: str, **changes: Any) -> KeyRecord | None:
        sql, values = _update_sql("keys", changes, "?", "!=")
        alias = str(changes.get("key_alias") or "")
        args = (*values, key_hash, *((alias, key_hash) if alias else ()))
        try:
            rows = self._execute(sql, args)
        except sqlite3.IntegrityError as exc:  # the index: a key of this alias came between
            if not alias or "key_alias" not in str(exc):
                raise
            rows = []
        if rows:
            return _record(rows[0])
        holders = [row for row in self._execute(_HOLDERS, (alias,))
                   if row[0] != key_hash[:16]] if alias else []
        if holders:
            raise _taken(alias, holders)
        return None

    async def page(self, *, offset: int, limit: int,
                   key_alias: str = "") -> tuple[list[KeyRecord], int]:
        where, args = ("WHERE key_alias = ?", (key_alias,)) if key_alias else ("", ())
        rows = self._execute(f"SELECT * FROM keys {where} ORDER BY created_at, key_id "
                             "LIMIT ? OFFSET ?", (*args, limit, offset))
        total = self._execute(f"SELECT count(*) FROM keys {where}", args)[0][0]
        return [_record(row) for row in rows], int(total)


# One statement (a DO block is one transaction): processes starting together take turns.
_PG_SCHEMA_LOCK = 0x5C1_11B
_PG_SCHEMA = f"""
DO $$ BEGIN
    PERFORM pg_advisory_xact_lock({_PG_SCHEMA_LOCK});
    CREATE TABLE IF NOT EXISTS scillm_keys (
        key_hash    TEXT PRIMARY KEY,
        key_id      TEXT NOT NULL UNIQUE,
        key_alias   TEXT NOT NULL,
        models      TEXT NOT NULL,
        expires_at  DOUBLE PRECISION,
        max_budget  DOUBLE PRECISION NOT NULL,
        spend       DOUBLE PRECISION NOT NULL,
        rpm_limit   BIGINT NOT NULL,
        tpm_limit   BIGINT NOT NULL,
        metadata    TEXT NOT NULL,
        created_at  DOUBLE PRECISION NOT NULL
    );
    -- A table made before held the limits in 32 bits: a key the door accepts (any whole
    -- number below 2**63) could not be stored.
    IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
               AND table_name = 'scillm_keys' AND column_name = 'rpm_limit'
               AND data_type = 'integer') THEN
        ALTER TABLE scillm_keys ALTER COLUMN rpm_limit TYPE BIGINT,
                                ALTER COLUMN tpm_limit TYPE BIGINT;
    END IF;
    -- The aliases that are set name one key each. A table from before may hold an alias
    -- on several keys: then the index is not made (the store warns, naming them).
    BEGIN
        CREATE UNIQUE INDEX IF NOT EXISTS scillm_keys_alias ON scillm_keys (key_alias)
            WHERE key_alias <> '';
    EXCEPTION WHEN unique_violation THEN
        NULL;
    END;
END $$"""
#: As `_INSERT` (the casts: a parameter's type is not inferred from the column here).
_PG_INSERT = ("INSERT INTO scillm_keys SELECT %s, %s, %s, %s, %s::DOUBLE PRECISION, "
              "%s::DOUBLE PRECISION, %s::DOUBLE PRECISION, %s::BIGINT, %s::BIGINT, %s, "
              "%s::DOUBLE PRECISION WHERE %s = '' OR NOT EXISTS (SELECT 1 FROM scillm_keys "
              "WHERE key_alias = %s AND key_alias <> '') RETURNING key_id")
_PG_HOLDERS = ("SELECT key_id FROM scillm_keys WHERE key_alias = %s AND key_alias <> '' "
               "ORDER BY created_at")
_PG_DUPLICATES = ("SELECT key_alias, string_agg(key_id, ', ' ORDER BY created_at) FROM "
                  "scillm_keys WHERE key_alias <> '' GROUP BY key_alias HAVING count(*) > 1 "
                  "ORDER BY key_alias")


class PostgresKeyStore(KeyStore):
    """Keys in the run store's PostgreSQL database, shared by every process using it.

    Statements go through the run store's connection (one at a time, reconnecting once
    when the server dropped it) in a worker thread. `find` answers from a per-process cache
    for `CACHE_S` seconds, so a request does not wait on the database each time.
    """

    CACHE_S = 2.0

    def __init__(self, runs: RunStore) -> None:
        self._runs = runs
        #: sha256 of the secret or key_id looked up -> (valid until, record or None)
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        runs.execute(_PG_SCHEMA)
        _warn_duplicates(runs.location, runs.execute(_PG_DUPLICATES),
                         "the next process to start makes the index")

    async def _sql(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self._runs.execute, sql, args)

    async def create(self, **fields: Any) -> tuple[str, KeyRecord]:
        import psycopg  # the run store in PostgreSQL imported it already

        secret, rec = _new_record(**fields)
        alias = rec.key_alias
        try:
            inserted = await self._sql(_PG_INSERT, *_row(rec), alias, alias)
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "scillm_keys_pkey":
                # The row's hash is of a new 256-bit secret: it can only be this call's own,
                # stored before the connection broke and found by the run store's retry.
                return secret, rec
            # The index: another process took the alias between the check and the row.
            if not alias or exc.diag.constraint_name != "scillm_keys_alias":
                raise
            inserted = []
        if not inserted:
            holders = await self._sql(_PG_HOLDERS, alias)
            if [row[0] for row in holders] != [rec.key_id]:
                raise _taken(alias, holders)
            # Else the row is this call's own: the connection broke after it was stored
            # and the run store ran the insert again, which found it.
        return secret, rec

    async def find(self, secret_or_id: str) -> KeyRecord | None:
        now = time.monotonic()
        digest = hash_key(secret_or_id)  # the cache holds no secret either
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        rows = await self._sql("SELECT * FROM scillm_keys WHERE key_hash = %s OR key_id = %s",
                               digest, secret_or_id)
        record = _record(rows[0]) if rows else None
        if len(self._cache) >= 10_000:  # bounded: many distinct bad keys must not grow it
            self._cache.clear()
        self._cache[digest] = (now + self.CACHE_S, record)
        return record

    async def add_spend(self, key_hash: str, amount: float) -> None:
        await self._sql("UPDATE scillm_keys SET spend = spend + %s WHERE key_hash = %s",
                        amount, key_hash)
        for lookup, (until, rec) in list(self._cache.items()):  # this process sees it now
            if rec is not None and rec.key_hash == key_hash:
                self._cache[lookup] = (until, replace(rec, spend=rec.spend + amount))

    def _forget(self, key_hash: str) -> None:
        """Drop this process's cached lookups of a key: its next lookup reads it."""
        for lookup, (_, rec) in list(self._cache.items()):
            if rec is not None and rec.key_hash == key_hash:
                del self._cache[lookup]

    async def delete(self, key_hash: str) -> None:
        await self._sql("DELETE FROM scillm_keys WHERE key_hash = %s", key_hash)
        self._forget(key_hash)

    async def update(self, key_hash: str, **changes: Any) -> KeyRecord | None:
        import psycopg  # the run store in PostgreSQL imported it already

        sql, values = _update_sql("scillm_keys", changes, "%s", "<>")
        alias = str(changes.get("key_alias") or "")
        args = (*values, key_hash, *((alias, key_hash) if alias else ()))
        try:
            rows = await self._sql(sql, *args)
        except psycopg.errors.UniqueViolation as exc:
            # The index: another process gave a key the alias between the check and the row.
            if not alias or exc.diag.constraint_name != "scillm_keys_alias":
                raise
            rows = []
        finally:
            self._forget(key_hash)
        if rows:
            return _record(rows[0])
        holders = [row for row in await self._sql(_PG_HOLDERS, alias)
                   if row[0] != key_hash[:16]] if alias else []
        if holders:
            raise _taken(alias, holders)
        return None

    async def page(self, *, offset: int, limit: int,
                   key_alias: str = "") -> tuple[list[KeyRecord], int]:
        where, args = ("WHERE key_alias = %s", (key_alias,)) if key_alias else ("", ())
        rows = await self._sql(f"SELECT * FROM scillm_keys {where} ORDER BY created_at, "
                               "key_id LIMIT %s OFFSET %s", *args, limit, offset)
        total = (await self._sql(f"SELECT count(*) FROM scillm_keys {where}", *args))[0][0]
        return [_record(row) for row in rows], int(total)
