"""Verdict cache: sha256 of (checker rules, backend, version, imports, preamble, statement,
proof, SMT solver choice).

The engine stores only verdicts the prover decided on its own (`CACHEABLE`: PROVED,
REFUTED, FAILED); UNKNOWN, TIMEOUT and ERROR depend on limits and load, so they are
checked again.
`VerdictCache` is the small interface a shared (e.g. Redis) cache would implement.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Protocol

from ._types import CheckOutcome, Obligation, Verdict

__all__ = ["CACHEABLE", "MemoryCache", "VerdictCache", "cache_key"]

#: The checking rules' version: bumped whenever what a verdict means changes, so that no
#: verdict reached under older rules (in a shared Redis cache, say) is served again.
RULES = "2026-12-07.4"

#: Verdicts worth remembering.
CACHEABLE = frozenset({Verdict.PROVED, Verdict.REFUTED, Verdict.FAILED})


def cache_key(obligation: Obligation, backend_version: str) -> str:
    """Hex sha256 identifying what the prover would check, and with which prover (for an
    smt item, which solver choice: z3's verdict is never served to a cross-check)."""
    ob = obligation
    payload = json.dumps([RULES, ob.backend, backend_version, list(ob.imports), ob.preamble,
                          ob.statement, ob.proof, ob.smt_solver], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class VerdictCache(Protocol):
    """Where checked outcomes are remembered."""

    async def get(self, key: str) -> CheckOutcome | None: ...

    async def put(self, key: str, outcome: CheckOutcome) -> None: ...


class MemoryCache:
    """An in-process LRU of at most `capacity` outcomes (0 keeps nothing)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, CheckOutcome] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> CheckOutcome | None:
        outcome = self._items.get(key)
        if outcome is not None:
            self._items.move_to_end(key)
        return outcome

    async def put(self, key: str, outcome: CheckOutcome) -> None:
        if self._capacity <= 0:
            return
        self._items[key] = outcome
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)
