"""Errors of key checks and key management.

    KeyError_ (base, named to leave the builtin alone)
     ├── Unauthenticated      no key, or a key that is not known      -> UNAUTHENTICATED (401)
     ├── Forbidden            known key, but not for this             -> PERMISSION_DENIED (403)
     │   └── BudgetExceeded   its spend reached max_budget
     ├── KeyRateLimited       over its rpm/tpm; retry_after_s says when -> RESOURCE_EXHAUSTED (429)
     ├── KeyStoreError        the key store cannot be opened (start-up)
     │   └── KeyStoreUnavailable  it cannot be written now (full disk) -> UNAVAILABLE
     ├── KeysDisabled         no master key configured                -> FAILED_PRECONDITION
     ├── UnknownKey           management call naming no key           -> NOT_FOUND
     └── DuplicateKeyAlias    another key has the key_alias asked for -> ALREADY_EXISTS (409)
"""

from __future__ import annotations

from ..errors import Unavailable

__all__ = ["BudgetExceeded", "DuplicateKeyAlias", "Forbidden", "KeyError_", "KeyRateLimited",
           "KeyStoreError", "KeyStoreUnavailable", "KeysDisabled", "Unauthenticated",
           "UnknownKey"]


class KeyError_(Exception):
    """Base of key errors."""


class Unauthenticated(KeyError_):
    """Missing or unknown key."""


class Forbidden(KeyError_):
    """The key may not do this (model not allowed, expired, management without master key)."""


class BudgetExceeded(Forbidden):
    """The key's spend reached its budget."""


class KeyRateLimited(KeyError_):
    """The key is over its requests or tokens per minute."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KeyStoreError(KeyError_):
    """The key store cannot be opened (a file that is no database, unreadable, ...)."""


class KeyStoreUnavailable(KeyStoreError, Unavailable):
    """The key store cannot be written now (a full disk, I/O errors): UNAVAILABLE naming
    it, as a run store in that state."""


class KeysDisabled(KeyError_):
    """Key management needs a master key (SCILLM_MASTER_KEY or general_settings.master_key)."""


class UnknownKey(KeyError_):
    """No key matches."""


class DuplicateKeyAlias(KeyError_):
    """Another key already has the alias asked for: an alias names one key (as LiteLLM's
    proxy requires), so an operator managing keys by alias can tell them apart."""

    #: The field at fault: the error's BadRequest detail, and the door's `param`.
    param = "key_alias"
