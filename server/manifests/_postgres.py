"""The run store in PostgreSQL, named by a postgresql:// URL: one store for many processes.

The same table as SQLite's: BYTEA for the serialized protos, TEXT for the events' JSON
(JSONB would refuse the \\u0000 that tool output may hold, and reorder keys); `start_time`
and `run_id` compare byte by byte (collation "C") so ordering and prefixes match SQLite.
psycopg 3 (the `postgres` extra) is imported when a store is opened, not before.

Retention's deletes leave dead rows that autovacuum reclaims for the rows stored next, as
for any table; nothing here vacuums.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ._store import ACTIVE_INDEX, COLUMNS, RunStore, RunStoreError, RunStoreUnavailable

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresRunStore", "redact_url"]

_TABLE = """
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT COLLATE "C" PRIMARY KEY,
    service      TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    track        TEXT NOT NULL,
    model        TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    start_time   TEXT COLLATE "C" NOT NULL,
    manifest     BYTEA NOT NULL,
    request_type TEXT NOT NULL,
    request      BYTEA NOT NULL,
    result_type  TEXT NOT NULL,
    result       BYTEA NOT NULL,
    events       TEXT NOT NULL DEFAULT '[]',
    active_time  TEXT COLLATE "C" NOT NULL DEFAULT ''
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS runs_session ON runs (session_id, track, start_time)"
#: `active_time` for a table made before it (instant: a constant default). Checked first:
#: ALTER TABLE takes the table's exclusive lock even when it has nothing to do.
_ACTIVE_COLUMN = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema =
                   current_schema() AND table_name = 'runs' AND column_name = 'active_time')
    THEN ALTER TABLE runs ADD COLUMN active_time TEXT COLLATE "C" NOT NULL DEFAULT '';
    END IF;
END $$"""
#: Advisory lock key serializing schema creation when several processes start at once.
_SCHEMA_LOCK = 0x5C1_11A
#: Advisory lock key that claims of run ids take turns behind (`PostgresRunStore._claim`).
_CLAIM_LOCK = 0x5C1_11B
#: Seconds to wait for the server when the URL sets no connect_timeout.
_CONNECT_TIMEOUT = 10


def redact_url(url: str) -> str:
    """The URL with its password masked, fit for messages and logs."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class PostgresRunStore(RunStore):
    """PostgreSQL-backed run store; one connection, statements serialized, reconnected
    once when the server has dropped it."""

    _PARAM = "%s"
    _ILIKE = "ILIKE"
    # A row another sweeper (or a run's write) holds is left to it.
    _LOCK_ROWS = " FOR UPDATE SKIP LOCKED"
    _UPSERT = (f"INSERT INTO runs ({', '.join(COLUMNS)}) "
               f"VALUES ({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (run_id) DO UPDATE SET "
               + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:]))

    def __init__(self, url: str, *, create: bool = True) -> None:
        super().__init__()
        self._url = url
        self.location = redact_url(url)
        self._conn = self._connect()
        try:
            if create:
                with self._conn.transaction():
                    self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    self._conn.execute(_TABLE)
                    self._conn.execute(_INDEX)
                    self._conn.execute(_ACTIVE_COLUMN)
                    self._conn.execute(ACTIVE_INDEX)
                self._upgraded = True
            elif self._conn.execute("SELECT to_regclass('runs')").fetchone() in (None, (None,)):
                raise RunStoreError(f"no run store at {self.location} (no table `runs`)")
        except BaseException:
            self._conn.close()
            raise

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            import psycopg
        except ImportError as err:
            raise RunStoreError("a postgresql:// run store needs psycopg: "
                                "pip install 'scillm[postgres]'") from err
        timeout: dict[str, Any] = (
            {} if "connect_timeout" in self._url else {"connect_timeout": _CONNECT_TIMEOUT})
        try:
            return psycopg.connect(self._url, autocommit=True, **timeout)
        except psycopg.Error as err:
            raise RunStoreError(f"cannot open the run store at {self.location}: "
                                f"{str(err).strip()}") from err

    def _run(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._statements(((sql, args),))

    def _claim(self, sql: str, row: Sequence[object]) -> list[tuple[Any, ...]]:
        """The claim's statement in a transaction that first takes `_CLAIM_LOCK`, held
        until it commits: claims take turns. A statement reads what was committed when it
        started, so two claims at once each missed the other's row (`Exp-1` and `exp-1`
        were both listed); taken in turn, each sees every claim before it. Only claims take
        the lock: other writes (a run's start and end, retention) never wait on it."""
        self._ensure_upgraded()
        return self._statements((("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,)),
                                 (sql, row)))

    def _statements(self, statements: Sequence[tuple[str, Sequence[object]]],
                    ) -> list[tuple[Any, ...]]:
        """Run statements in order, in one transaction when there are several; the last
        one's rows, if it returns any."""
        import psycopg

        with self._lock:
            for attempt in (1, 2):
                if self._conn.closed:
                    try:
                        self._conn = self._connect()
                    except RunStoreError as err:  # it was open: the server went away
                        raise RunStoreUnavailable(str(err)) from err
                try:
                    with (self._conn.transaction() if len(statements) > 1
                          else contextlib.nullcontext()), self._conn.cursor() as cur:
                        for sql, args in statements:
                            cur.execute(sql, args)
                        return cur.fetchall() if cur.description else []
                except psycopg.OperationalError as err:
                    # Every statement here may run twice (an upsert, a select; a claim
                    # whose first try committed is refused, as taken), so one retry on a
                    # fresh connection is safe when the old one broke (server restart,
                    # idle timeout); any other failure is raised.
                    if not self._conn.broken:
                        raise
                    self._conn.close()
                    if attempt == 2:
                        raise RunStoreUnavailable(
                            f"the run store at {self.location} is unreachable: "
                            f"{str(err).strip()}") from err
        raise AssertionError("unreachable")

    def _has_active_time(self) -> bool:
        return bool(self._run(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'runs' AND column_name = 'active_time'", ()))

    def _upgrade(self) -> None:
        """As the opening of a store to create does, for one opened without (`scillm runs
        prune` on a table an older server made): serialized by the same advisory lock."""
        self._run("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            self._run(_ACTIVE_COLUMN, ())
            self._run(ACTIVE_INDEX, ())
        finally:
            self._run("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
