"""Building the one RunManifest shape every service returns."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import re
import time
from collections.abc import AsyncIterator, Iterable
from functools import cache
from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from opentelemetry import trace

from scillm.clients.ids import new_id
from scillm.common.v1 import common_pb2

from ..errors import StatusError
from ._store import RunStoreError

if TYPE_CHECKING:
    from ._store import RunStore

__all__ = ["ManifestClock", "RunRecord", "check_context", "claim_run", "current_trace_id",
           "recording", "versions"]

#: A caller-chosen run id: a plain token, since it names store rows and files (an agent
#: run's trace is `<trace dir>/<run id>.jsonl`). Before, "../../x" wrote outside the dir.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: Session and track: caller-chosen names of any printable text, this long at most.
MAX_NAME_CHARS = 256
#: Labels as OpenAI bounds a request's `metadata`: this many, keys and values this long.
MAX_LABELS, MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS = 16, 64, 512


@cache
def versions() -> dict[str, str]:
    """Versions of the process's parts, computed once: Python, SciLLM, both gRPC servers
    (pygrpc-native's, the default, and grpcio's, which TLS runs on and clients use) and
    protobuf."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("scillm", "grpcio", "pygrpc-native", "protobuf"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


@cache
def _blank() -> common_pb2.RunManifest:
    """A manifest holding only `versions()`: copying it costs less than filling the map."""
    return common_pb2.RunManifest(versions=versions())


def current_trace_id() -> str:
    """The trace id of the span current here, as 32 hex digits; empty when tracing is off
    (no span is recording then, so the current span is the invalid one)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def _now_us() -> int:
    """Wall-clock time in whole microseconds, the precision of `GetCurrentTime`."""
    return time.time_ns() // 1000


def _invalid(message: str, param: str) -> StatusError:
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, message, param=param)


def check_context(context: common_pb2.RunContext) -> None:
    """Refuse a run context the store and the files it names cannot take as it is."""
    if context.run_id and not _RUN_ID.fullmatch(context.run_id):
        raise _invalid("context.run_id must be 1 to 128 letters, digits, '.', '_', ':' or '-', "
                       "starting with a letter or digit (or empty for a new id)",
                       "context.run_id")
    for name in ("session_id", "track"):
        value = getattr(context, name)
        if len(value) > MAX_NAME_CHARS or not value.isprintable():
            raise _invalid(f"context.{name} must be printable text of at most "
                           f"{MAX_NAME_CHARS} characters", f"context.{name}")
    if len(context.labels) > MAX_LABELS:
        raise _invalid(f"context.labels holds {len(context.labels)} labels; at most "
                       f"{MAX_LABELS}", "context.labels")
    for key, value in context.labels.items():
        if not 0 < len(key) <= MAX_LABEL_KEY_CHARS or len(value) > MAX_LABEL_VALUE_CHARS:
            raise _invalid(f"context.labels: keys are 1 to {MAX_LABEL_KEY_CHARS} characters, "
                           f"values at most {MAX_LABEL_VALUE_CHARS}", "context.labels")


class ManifestClock:
    """Starts a manifest when a run starts and completes it when the run ends. A run
    context that `check_context` refuses raises StatusError (INVALID_ARGUMENT)."""

    def __init__(self, service: str, context: common_pb2.RunContext, *, request_id: str,
                 model: str = "", item_ids: Iterable[str] = ()) -> None:
        if context.run_id or context.session_id or context.track or context.labels:
            check_context(context)
        self._t0 = time.perf_counter()
        m = self.manifest = common_pb2.RunManifest()
        m.CopyFrom(_blank())
        #: The caller chose the run id (RunContext.run_id) rather than leaving it to us.
        self.chosen_run_id = bool(context.run_id)
        m.run_id = context.run_id or new_id()
        m.request_id = request_id
        m.item_ids.extend(item_ids)
        m.session_id = context.session_id
        m.track = context.track
        m.service = service
        m.model = model
        if context.labels:
            m.labels.update(context.labels)
        m.trace_id = current_trace_id()
        m.start_time.FromMicroseconds(_now_us())

    def finish(self, *, provider: str = "", backend: str = "",
               isolation: str = "") -> common_pb2.RunManifest:
        """Stamp end time and duration, and return the manifest."""
        m = self.manifest
        m.end_time.FromMicroseconds(_now_us())
        m.duration.FromNanoseconds(int((time.perf_counter() - self._t0) * 1e9))
        if provider:
            m.provider = provider
        if backend:
            m.backend = backend
        if isolation:
            m.isolation = isolation
        return m



class RunRecord:
    """A run's row in the store while it runs; `put` stores its terminal result."""

    def __init__(self, store: RunStore | None, request: Message) -> None:
        self._store = store
        self._request = request
        #: The stream's events so far (what `put` stores beside the result): a run that
        #: ends without its result (its caller hung up, the server stopped) keeps them.
        self.events: list[Message] = []
        #: The terminal result was stored.
        self.stored = False
        #: Why the store could not take the terminal result (full, unreachable): raised
        #: when the `recording` block ends, after the servicer has sent the result.
        self.unstored: RunStoreError | None = None

    async def put(self, manifest: common_pb2.RunManifest, result: Message) -> None:
        """Store the run's terminal result and `events` (replacing its running row). A store that
        cannot take it does not cost the caller the result: a run whose final write failed
        lost its summary (rankings, verdict counts). The failure is kept (`unstored`) and
        raised when the block ends, so the call still ends with it."""
        if self._store is not None:
            try:
                await self._store.put(manifest, self._request, result, self.events)
            except RunStoreError as exc:
                self.unstored = exc
                return
        self.stored = True


async def claim_run(store: RunStore, clock: ManifestClock, request: Message) -> None:
    """List a run started under its caller's own run id (`RunStore.claim`), or raise
    StatusError (ALREADY_EXISTS): a caller's run id names a new run; it never replaces a
    stored one (nor one started at the same moment: claimed in one statement), nor begins
    a stored run's id (it would take over the lookups by that prefix)."""
    if await store.claim(clock.manifest, request):
        return
    run_id = clock.manifest.run_id
    if await asyncio.to_thread(store.exists, run_id):
        said = f"a run with id {run_id!r} is already stored"
    else:
        said = (f"{run_id!r} begins the id of a stored run (a lookup by it would be "
                "ambiguous)")
    raise StatusError(grpc.StatusCode.ALREADY_EXISTS,
                      f"{said}: choose another context.run_id, or leave it empty for a new "
                      "one", param="context.run_id")


@contextlib.asynccontextmanager
async def recording(store: RunStore | None, clock: ManifestClock,
                    request: Message) -> AsyncIterator[RunRecord]:
    """While the block runs, the store lists the run as running; the block stores the
    terminal result with `RunRecord.put`. A block that ends by an exception before that (an
    error, a caller who hung up) leaves the run stored as interrupted, with the events the
    block put in `RunRecord.events`; one whose terminal result the store could not take
    ends by that failure."""
    record = RunRecord(store, request)
    if store is not None:
        if clock.chosen_run_id:
            await claim_run(store, clock, request)
        else:
            await store.started(clock.manifest, request)
    try:
        yield record
    except BaseException:
        if store is not None and not record.stored:
            # Synchronous: a cancelled task must not wait on a worker thread here.
            store.put_sync(clock.finish(), request, empty_pb2.Empty(), record.events)
        raise
    if record.unstored is not None:  # the result was sent; the run was not kept
        raise record.unstored
