"""Virtual keys in SQLite, stored by the sha256 of their secret (never the secret)."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["KeyRecord", "KeyStore", "hash_key"]

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


class KeyStore:
    """SQLite store of virtual keys; safe to call from worker threads."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def create(self, record: KeyRecord | None = None, **fields: object) -> tuple[str, KeyRecord]:
        """A new secret and its record (fields as in KeyRecord)."""
        secret = "sk-" + secrets.token_urlsafe(32)
        digest = hash_key(secret)
        rec = KeyRecord(key_hash=digest, key_id=digest[:16], created_at=time.time(),
                        **fields)  # type: ignore[arg-type]
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO keys VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (rec.key_hash, rec.key_id, rec.key_alias, json.dumps(list(rec.models)),
                 rec.expires_at, rec.max_budget, rec.spend, rec.rpm_limit, rec.tpm_limit,
                 json.dumps(rec.metadata), rec.created_at))
        return secret, rec

    def find(self, secret_or_id: str) -> KeyRecord | None:
        """The record for a secret or a key_id."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM keys WHERE key_hash = ? OR key_id = ?",
                (hash_key(secret_or_id), secret_or_id)).fetchone()
        if row is None:
            return None
        return KeyRecord(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4], row[5],
                         row[6], row[7], row[8], json.loads(row[9]), row[10])

    def add_spend(self, key_hash: str, amount: float) -> None:
        """Add to a key's spend."""
        with self._lock, self._db:
            self._db.execute("UPDATE keys SET spend = spend + ? WHERE key_hash = ?",
                             (amount, key_hash))

    def delete(self, key_hash: str) -> None:
        """Revoke a key."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM keys WHERE key_hash = ?", (key_hash,))
