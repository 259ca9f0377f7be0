"""Who may call what: the master key, virtual keys, their models, budgets and rate limits.

With no master key configured every call is allowed (as LiteLLM's proxy without one).
With one, every RPC but health and reflection needs `authorization: Bearer <key>`:
the master key may do anything; a virtual key may call its models while it is unexpired,
under budget and under its requests and tokens per minute. Token usage is accounted after
each completion: it moves the tokens-per-minute window and adds cost (per-model prices
from the configuration, found as the router finds the deployment: `Prices`) to the key's
spend. Budgets and tokens per minute are checked before a call and charged after it; so
that the calls a key has in flight at once do not all pass on what was charged before any
of them ended, a completion reserves an estimate of its cost and tokens while it runs
(`Reservation`, released however it ends) and is admitted only if its reservation fits,
beside those of the key's other calls in flight, in what is left of the budget and of the
minute's tokens; a call with none in flight beside it is admitted while the key is under
its limits, so a call larger than what is left is not refused for ever. Reservations are
kept in this process: with N processes, a key may have up to N times what is left in
flight. Requests per minute are counted as they are checked, and hold exactly. The windows
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

__all__ = ["RUNS_READ", "Authenticator", "Principal", "Reservation", "token_from_metadata"]

#: The metadata entry that lets a virtual key read stored runs (the runs UI):
#: `/key/generate {"metadata": {"runs": "read"}}`.
RUNS_READ: tuple[str, str] = ("runs", "read")
#: Seconds a call refused for what the key's calls in flight reserve is told to wait.
_IN_FLIGHT_RETRY_S = 1.0
#: The names a key's models may give a service by, as the door routes them (`lean4/...`
#: reaches Prove as `certainly/...` does); a service not listed goes by its own name.
_SERVICE_NAMES = {"certainly": ("certainly", "lean4")}


@dataclass(frozen=True)
class Principal:
    """The caller: the master key, or a virtual key's record."""

    master: bool
    record: KeyRecord | None = None

    @property
    def key_id(self) -> str:
        return "master" if self.master else (self.record.key_id if self.record else "")


def token_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The bearer token of `authorization` (or `x-api-key`), if any. Only those entries
    are read: another may be binary (a `-bin` key's bytes need not be UTF-8)."""
    for key, value in metadata or ():
        if key != "authorization" and key != "x-api-key":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if key == "authorization":
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else text.strip()
        if key == "x-api-key":
            return text.strip()
    return None


class _InFlight:
    """What the calls of one key in flight in this process reserve together."""

    __slots__ = ("calls", "cost", "tokens")

    def __init__(self) -> None:
        self.calls = 0
        self.cost = 0.0
        self.tokens = 0


class Reservation:
    """What one call reserves of its key's budget (`cost`) and tokens per minute
    (`tokens`) while it runs. `release` it when the call ends, however it ends; releasing
    it again does nothing."""

    __slots__ = ("_held", "_table", "alone", "cost", "key_hash", "tokens")

    def __init__(self, table: dict[str, _InFlight], key_hash: str, cost: float,
                 tokens: int) -> None:
        held = table.get(key_hash)
        if held is None:
            held = table[key_hash] = _InFlight()
        #: Whether the key had no other call in flight (in this process) when it was made.
        self.alone = held.calls == 0
        held.calls += 1
        held.cost += cost
        held.tokens += tokens
        self._table, self.key_hash, self.cost, self.tokens = table, key_hash, cost, tokens
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        held = self._table.get(self.key_hash)
        if held is None:
            return
        held.calls -= 1
        if held.calls <= 0:  # the key's last call: no sum's rounding is left behind
            del self._table[self.key_hash]
        else:
            held.cost -= self.cost
            held.tokens -= self.tokens


class Authenticator:
    """Checks callers against the master key and the key store (see the module docstring)."""

    def __init__(self, master_key: str | None, store: KeyStore,
                 prices: Mapping[str, Price] | Prices | None = None,
                 windows: Windows | None = None) -> None:
        self.master_key = master_key or None
        self.store = store
        self._prices = Prices.of(prices)
        self.windows: Windows = windows or MemoryWindows()
        #: By key hash: what the keys' calls in flight in this process reserve.
        self._in_flight: dict[str, _InFlight] = {}

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

    def in_flight(self, key_hash: str) -> tuple[int, float, int]:
        """What the calls of a key (by hash) in flight in this process reserve: how many
        there are, their cost and their tokens."""
        held = self._in_flight.get(key_hash)
        return (0, 0.0, 0) if held is None else (held.calls, held.cost, held.tokens)

    async def authorize(self, principal: Principal, *, model: str = "", service: str = "",
                        fallbacks: Sequence[str] = (), management: bool = False,
                        estimate: tuple[int, int] | None = None) -> Reservation | None:
        """Raise unless `principal` may make this call (to `model`, or to one of the
        `fallbacks` it names should `model` fail); counts the request when it may.

        `service` ("certainly", "codeworld") is a service whose runs call no model a key
        is checked for: a key limited to some models may use it only when they name it
        (the name, or one under it: `codeworld/mcts`; Prove's `lean4` names too).

        `estimate` is what a model call is expected to use, (prompt, completion) tokens.
        Given one, a key with a budget or tokens per minute reserves it (at `model`'s
        prices) and the call is admitted only if it fits beside the reservations of the
        key's other calls in flight (or while the key is under its limits when it has
        none in flight); the caller releases the reservation returned when the call
        ends. (0, 0) reserves nothing, and is admitted only while the key's calls in
        flight leave room."""
        if principal.master:
            return None
        record = principal.record
        assert record is not None
        if management:
            raise Forbidden("key management needs the master key")
        if record.expired(time.time()):
            raise Forbidden(f"key {record.key_id} has expired")
        if service and record.models and not any(
                name == alias or name.startswith(alias + "/") for name in record.models
                for alias in _SERVICE_NAMES.get(service, (service,))):
            named = " or ".join(f"{a!r}, {a + '/...'!r}"
                                for a in _SERVICE_NAMES.get(service, (service,)))
            raise Forbidden(f"key {record.key_id} may not use {service} (its models name no "
                            f"{named}); allowed: {', '.join(record.models)}")
        if model and record.models and model not in record.models:
            raise Forbidden(f"key {record.key_id} may not call model {model!r}; "
                            f"allowed: {', '.join(record.models)}")
        for name in fallbacks:
            if record.models and name not in record.models:
                raise Forbidden(f"key {record.key_id} may not call model {name!r} (named as "
                                f"a fallback); allowed: {', '.join(record.models)}")
        reservation = None
        if estimate is not None and (record.max_budget or record.tpm_limit) and any(estimate):
            price_in, price_out = self._prices(model)
            # Never below nothing: a negative reservation held while its call waits (on
            # Redis's windows) made room for the key's other calls in flight.
            prompt, completion = max(0, estimate[0]), max(0, estimate[1])
            reservation = Reservation(self._in_flight, record.key_hash,
                                      prompt * price_in + completion * price_out,
                                      prompt + completion)
        try:
            await self._check_limits(record, reservation, estimate is not None)
        except BaseException:  # refused, or the caller left meanwhile
            if reservation is not None:
                reservation.release()
            raise
        return reservation

    async def _check_limits(self, record: KeyRecord, reservation: Reservation | None,
                            in_flight: bool) -> None:
        """`authorize`'s budget and rate checks; with `in_flight`, the reservations of the
        key's calls in flight (`reservation`'s among them) count too."""
        # Alone, a call is admitted while the key is under its limits, however large it is.
        counted = in_flight and not (reservation is not None and reservation.alone)
        if record.max_budget:
            spend = record.spend
            if counted and reservation is not None:
                # Read afresh: a call that ended since `record` was read released its
                # reservation, and its cost is only in the store.
                fresh = await self.store.find(record.key_id)
                if fresh is None:
                    raise Unauthenticated(f"key {record.key_id} was deleted")
                spend = fresh.spend
            if spend >= record.max_budget:
                raise BudgetExceeded(f"key {record.key_id} has spent {spend:.6g} of its "
                                     f"budget {record.max_budget:.6g}")
            held = self._in_flight.get(record.key_hash) if counted else None
            if held is not None and spend + held.cost > record.max_budget:
                raise _in_flight(record, f"has spent {spend:.6g} of its budget "
                                 f"{record.max_budget:.6g}", held.calls, f"{held.cost:.6g}")
        if record.tpm_limit:
            total, leaves = await self.windows.total(record.key_hash, "tokens")
            if total >= record.tpm_limit:
                raise _over(record, record.tpm_limit, "tokens", leaves)
            held = self._in_flight.get(record.key_hash) if counted else None
            if held is not None and total + held.tokens > record.tpm_limit:
                raise _in_flight(record, f"has used {total} of its {record.tpm_limit} tokens "
                                 "per minute", held.calls, str(held.tokens))
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

    async def admit_model_call(self, principal: Principal, model: str,
                               estimate: tuple[int, int] = (0, 0)) -> Reservation | None:
        """Raise unless `principal` may have a service call `model` for it now: a model its
        key allows, within its budget and tokens per minute, read afresh (a long run's
        earlier calls have been charged since the call was authorized), beside what the
        key's calls in flight reserve; it reserves `estimate` as a completion does (see
        `authorize`), which the service releases when the call ends. Not counted as a
        request: the caller's request was counted once, when it came in."""
        if principal.master or principal.record is None:
            return None
        fresh = await self.store.find(principal.record.key_id)
        if fresh is None:
            raise Unauthenticated(f"key {principal.record.key_id} was deleted")
        return await self.authorize(
            Principal(master=False, record=replace(fresh, rpm_limit=0)), model=model,
            estimate=estimate)

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


def _in_flight(record: KeyRecord, used: str, calls: int, reserved: str) -> KeyRateLimited:
    """429 for a call that fits what a key has used but not what its calls in flight
    reserve as well (the budget is not spent yet: retry when they end)."""
    return KeyRateLimited(f"key {record.key_id} {used}, and its {calls} calls in flight "
                          f"reserve {reserved} (this one's included): retry when they end",
                          retry_after_s=_IN_FLIGHT_RETRY_S)


def _over(record: KeyRecord, limit: int, kind: str, leaves: float | None) -> KeyRateLimited:
    return KeyRateLimited(f"key {record.key_id} is over {limit} {kind} per minute",
                          retry_after_s=max(leaves or 0.0, 0.001))
