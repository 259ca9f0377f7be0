"""Virtual keys, stored by the sha256 of their secret (never the secret).

`SQLiteKeyStore` keeps them in a file beside the process's run store; `PostgresKeyStore`
keeps them in the PostgreSQL database of the run store (`SCILLM_STORE_URL`), so every
process of a deployment knows every key. Its lookups are cached for a moment
(`PostgresKeyStore.CACHE_S`): a key deleted in one process stops working in the others
within that time, and spend made elsewhere shows up as late.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..manifests import RunStore, cannot_write
from .errors import KeyStoreError, KeyStoreUnavailable

__all__ = ["KeyRecord", "KeyStore", "PostgresKeyStore", "SQLiteKeyStore", "hash_key"]

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

    def _execute(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """One statement, committed; a file that cannot be written now (a full disk)
        is KeyStoreUnavailable (UNAVAILABLE naming it), not an INTERNAL error."""
        try:
            with self._lock, self._db:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if not cannot_write(exc):
                raise
            raise KeyStoreUnavailable(f"the key store at {self._path} cannot write: "
                                      f"{exc}") from None

    async def create(self, **fields: Any) -> tuple[str, KeyRecord]:
        secret, rec = _new_record(**fields)
        self._execute("INSERT INTO keys VALUES (?,?,?,?,?,?,?,?,?,?,?)", _row(rec))
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
END $$"""


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

    async def _sql(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self._runs.execute, sql, args)

    async def create(self, **fields: Any) -> tuple[str, KeyRecord]:
        secret, rec = _new_record(**fields)
        await self._sql("INSERT INTO scillm_keys VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                        *_row(rec))
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

    async def delete(self, key_hash: str) -> None:
        await self._sql("DELETE FROM scillm_keys WHERE key_hash = %s", key_hash)
        for lookup, (_, rec) in list(self._cache.items()):
            if rec is not None and rec.key_hash == key_hash:
                del self._cache[lookup]
