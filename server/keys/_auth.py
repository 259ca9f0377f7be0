"""Who may call what: the master key, virtual keys, their models, budgets and rate limits.

With no master key configured every call is allowed (as LiteLLM's proxy without one).
With one, every RPC but health and reflection needs `authorization: Bearer <key>`:
the master key may do anything; a virtual key may call its models while it is unexpired,
under budget and under its requests and tokens per minute. Token usage is accounted after
each completion: it moves the tokens-per-minute window and adds cost (per-model prices
from the configuration, found as the router finds the deployment: `Prices`) to the key's
spend. Budgets and tokens per minute are checked before a call and charged after it, so
calls a key has in flight at once are all checked against what was charged before any of
them; requests per minute are counted as they are checked, and hold exactly. The windows
live in memory, or in Redis when configured so that replicas share them.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ._prices import Price, Prices
from ._store import KeyRecord, KeyStore, hash_key
from ._windows import MemoryWindows, Windows
from .errors import BudgetExceeded, Forbidden, KeyRateLimited, Unauthenticated, UnknownKey

__all__ = ["RUNS_READ", "Authenticator", "Principal", "token_from_metadata"]

#: The metadata entry that lets a virtual key read stored runs (the runs UI):
#: `/key/generate {"metadata": {"runs": "read"}}`.
RUNS_READ: tuple[str, str] = ("runs", "read")


@dataclass(frozen=True)
class Principal:
    """The caller: the master key, or a virtual key's record."""

    master: bool
    record: KeyRecord | None = None

    @property
    def key_id(self) -> str:
        return "master" if self.master else (self.record.key_id if self.record else "")


def token_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The bearer token of `authorization` (or `x-api-key`), if any."""
    for key, value in metadata or ():
        text = value.decode() if isinstance(value, bytes) else value
        if key == "authorization":
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else text.strip()
        if key == "x-api-key":
            return text.strip()
    return None


class Authenticator:
    """Checks callers against the master key and the key store (see the module docstring)."""

    def __init__(self, master_key: str | None, store: KeyStore,
                 prices: Mapping[str, Price] | Prices | None = None,
                 windows: Windows | None = None) -> None:
        self.master_key = master_key or None
        self.store = store
        self._prices = Prices.of(prices)
        self.windows: Windows = windows or MemoryWindows()

    @property
    def enabled(self) -> bool:
        """Whether keys are enforced (a master key is configured)."""
        return self.master_key is not None

    async def authenticate(self, token: str | None) -> Principal:
        """The caller behind `token`; Unauthenticated when it is missing or unknown."""
        if self.master_key is None:
            return Principal(master=True)
        if not token:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        if hmac.compare_digest(token.encode(), self.master_key.encode()):
            return Principal(master=True)
        record = await self.store.find(token) if token.startswith("sk-") else None
        if record is None:
            raise Unauthenticated("invalid API key")
        return Principal(master=False, record=record)

    @staticmethod
    def reads_itself(principal: Principal, key: str) -> bool:
        """Whether `key` (a secret or a key_id; empty: the caller's own) names the virtual
        key making the call: a key may read its own description (spend, limits), as in
        LiteLLM, even once over budget and without using a request of its rpm."""
        record = principal.record
        if principal.master or record is None:
            return False
        return not key or key == record.key_id or hash_key(key) == record.key_hash

    async def authorize(self, principal: Principal, *, model: str = "",
                        fallbacks: Sequence[str] = (), management: bool = False) -> None:
        """Raise unless `principal` may make this call (to `model`, or to one of the
        `fallbacks` it names should `model` fail); counts the request when it may."""
        if principal.master:
            return
        record = principal.record
        assert record is not None
        if management:
            raise Forbidden("key management needs the master key")
        if record.expired(time.time()):
            raise Forbidden(f"key {record.key_id} has expired")
        if model and record.models and model not in record.models:
            raise Forbidden(f"key {record.key_id} may not call model {model!r}; "
                            f"allowed: {', '.join(record.models)}")
        for name in fallbacks:
            if record.models and name not in record.models:
                raise Forbidden(f"key {record.key_id} may not call model {name!r} (named as "
                                f"a fallback); allowed: {', '.join(record.models)}")
        if record.max_budget and record.spend >= record.max_budget:
            raise BudgetExceeded(f"key {record.key_id} has spent {record.spend:.6g} of its "
                                 f"budget {record.max_budget:.6g}")
        if record.tpm_limit:
            total, leaves = await self.windows.total(record.key_hash, "tokens")
            if total >= record.tpm_limit:
                raise _over(record, record.tpm_limit, "tokens", leaves)
        if record.rpm_limit:
            # Counted and checked in one step: replicas sharing the window in Redis
            # cannot both let the last request of a minute through.
            leaves = await self.windows.take(record.key_hash, "requests", record.rpm_limit)
            if leaves is not None:
                raise _over(record, record.rpm_limit, "requests", leaves)

    async def revoke(self, keys: Sequence[str]) -> list[str]:
        """Delete the keys (secrets or key_ids); their key_ids. Every key is found before
        any is deleted: [known, unknown] deleted the known one and answered "no such key",
        telling the caller the call failed while a key had gone. A key named twice is one
        key; UnknownKey, and nothing deleted, when one is not known."""
        records = []
        for key in dict.fromkeys(keys):
            record = await self.store.find(key)
            if record is None:
                raise UnknownKey(f"no such key: {key[:6]}... (no key was deleted)")
            records.append(record)
        for record in records:
            await self.store.delete(record.key_hash)
        return [record.key_id for record in records]

    async def admit_model_call(self, principal: Principal, model: str) -> None:
        """Raise unless `principal` may have a service call `model` for it now: a model its
        key allows, within its budget and tokens per minute, read afresh (a long run's
        earlier calls have been charged since the call was authorized). Not counted as a
        request: the caller's request was counted once, when it came in."""
        if principal.master or principal.record is None:
            return
        fresh = await self.store.find(principal.record.key_id)
        if fresh is None:
            raise Unauthenticated(f"key {principal.record.key_id} was deleted")
        await self.authorize(Principal(master=False, record=replace(fresh, rpm_limit=0)),
                             model=model)

    def authorize_runs(self, principal: Principal) -> None:
        """Raise Forbidden unless `principal` may read stored runs: the master key (or no
        keys at all), or an unexpired virtual key whose metadata holds `RUNS_READ`."""
        if principal.master:
            return
        record = principal.record
        assert record is not None
        key, value = RUNS_READ
        if record.metadata.get(key) != value:
            raise Forbidden(f"key {record.key_id} may not read runs; a key made with "
                            f'"metadata": {{"{key}": "{value}"}} may')
        if record.expired(time.time()):
            raise Forbidden(f"key {record.key_id} has expired")

    async def account(self, principal: Principal, model: str, prompt_tokens: int,
                      completion_tokens: int) -> float:
        """Record a completion's tokens; returns its cost (added to the key's spend)."""
        record = principal.record
        if principal.master or record is None:
            return 0.0
        if record.tpm_limit:
            await self.windows.add(record.key_hash, "tokens", prompt_tokens + completion_tokens)
        price_in, price_out = self._prices(model)  # a wildcard's model: the pattern's
        cost = prompt_tokens * price_in + completion_tokens * price_out
        if cost:
            await self.store.add_spend(record.key_hash, cost)
        return cost


def _over(record: KeyRecord, limit: int, kind: str, leaves: float | None) -> KeyRateLimited:
    return KeyRateLimited(f"key {record.key_id} is over {limit} {kind} per minute",
                          retry_after_s=max(leaves or 0.0, 0.001))
