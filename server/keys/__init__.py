"""Virtual keys: the master key, generated keys stored hashed, their models, expiry,
budget and rate limits; the KeyService servicer lives in `servicer`."""

from ._auth import RUNS_READ, Authenticator, Principal, Reservation, token_from_metadata
from ._prices import Prices
from ._store import KeyRecord, KeyStore, PostgresKeyStore, SQLiteKeyStore, hash_key
from ._windows import MemoryWindows, RedisWindows, Windows
from .errors import (
    BudgetExceeded,
    DuplicateKeyAlias,
    Forbidden,
    KeyError_,
    KeyRateLimited,
    KeysDisabled,
    KeyStoreError,
    KeyStoreUnavailable,
    Unauthenticated,
    UnknownKey,
)

__all__ = ["RUNS_READ", "Authenticator", "BudgetExceeded", "DuplicateKeyAlias", "Forbidden",
           "KeyError_", "KeyRateLimited", "KeyRecord", "KeyStore", "KeyStoreError",
           "KeyStoreUnavailable", "KeysDisabled", "MemoryWindows", "PostgresKeyStore", "Prices",
           "Principal", "RedisWindows", "Reservation", "SQLiteKeyStore", "Unauthenticated",
           "UnknownKey", "Windows", "hash_key", "token_from_metadata"]
