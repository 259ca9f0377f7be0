"""An optional Redis that may go away: what the mesh keeps there, it can serve without.

Two things live in Redis only to be shared: cached responses (a miss costs an upstream
call) and the keys' rate windows (each process can count its own). When Redis stops
answering, a request should neither fail nor wait for a connection that will not come.
`Outage` remembers the failure: for `cool_s` seconds callers skip Redis (the cache misses
and stores nothing; the windows count in this process), then one caller tries it again
while the others go on skipping. The first failure of an outage is logged as a warning and
the recovery as an info, once each; the failures in between are not.

Only an unreachable Redis is an outage (`unreachable()`: refused, reset, timed out, still
loading its data); an error Redis answers with (a wrong type at a key, a script error)
is a bug and still raises. `Outage.call` runs one use of Redis under these rules.

`client_options()` are the redis-py options both use: a connection refused or silent for
a second fails then, rather than after redis-py's default three retries with backoff. A
connection Redis closed (a pooled one, from before it restarted) is retried once, at
once; a command Redis did not answer in time is not: Redis may be stalled rather than
gone (a pause, a long script, a swapping host), and then the retry held the caller for a
second timeout, ~4 s in all, while the command it had sent still ran when Redis resumed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["Outage", "client_options", "unreachable"]

log = logging.getLogger("scillm.server")

_T = TypeVar("_T")

#: How long callers skip Redis after it failed, seconds.
COOL_S = 5.0
#: redis-py's connect and per-command socket timeouts, seconds.
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 1.0


def unreachable() -> tuple[type[BaseException], ...]:
    """The exceptions that mean Redis could not be reached (redis-py is an optional extra,
    imported only when Redis is configured)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError)


def client_options() -> dict[str, Any]:
    """Keyword arguments for `redis.asyncio.Redis(...)` and `Redis.from_url(...)`."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    # Retried on a closed connection only: not on a timeout (see the module).
    return {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": COMMAND_TIMEOUT_S,
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))}


class Outage:
    """Whether to try Redis now, for one use of it (`what`, named in the log)."""

    __slots__ = ("_clock", "_cool_s", "_down", "_until", "what")

    def __init__(self, what: str, *, cool_s: float = COOL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self._cool_s = cool_s
        self._clock = clock
        self._down = False
        #: Callers skip Redis until then (only while `_down`).
        self._until = 0.0

    @property
    def down(self) -> bool:
        """Redis failed and has not answered since."""
        return self._down

    def should_try(self) -> bool:
        """True when Redis is up, or when its cool-down is over: that caller tries it, and
        the others skip it for another cool-down unless it answers."""
        if not self._down:
            return True
        now = self._clock()
        if now < self._until:
            return False
        self._until = now + self._cool_s
        return True

    def failed(self, exc: BaseException) -> None:
        """Redis could not be reached: skip it for the next `cool_s` seconds."""
        self._until = self._clock() + self._cool_s
        if not self._down:
            self._down = True
            log.warning("%s: Redis is unreachable (%s: %s); going on without it, and trying "
                        "it again every %g s", self.what, type(exc).__name__, exc, self._cool_s)

    def answered(self) -> None:
        """Redis answered: use it again."""
        if self._down:
            self._down = False
            log.info("%s: Redis answers again", self.what)

    async def call(self, remote: Callable[[], Awaitable[_T]],
                   unreachable: tuple[type[BaseException], ...],
                   instead: Callable[[], Awaitable[_T]]) -> _T:
        """`remote()` (a use of Redis), or `instead()` while Redis is skipped or when
        `remote()` finds it unreachable (one of `unreachable`)."""
        if self.should_try():
            try:
                result = await remote()
            except unreachable as exc:
                self.failed(exc)
            else:
                self.answered()
                return result
        return await instead()
