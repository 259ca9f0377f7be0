"""Building the one RunManifest shape every service returns, and keeping a run in the
store while it runs (`recording`, `start_record`: the one way every service does)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import cache
from typing import TYPE_CHECKING

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from opentelemetry import trace

from scillm.clients.ids import new_id
from scillm.common.v1 import common_pb2

from ..deadline import Deadline
from ..errors import ErrorTable, StatusError, status_for
from ._store import RunStoreError

if TYPE_CHECKING:
    from ._store import RunStore

__all__ = ["ManifestClock", "RunRecord", "check_context", "claim_run", "current_trace_id",
           "failure", "recording", "start_record", "versions"]

log = logging.getLogger("scillm.server")

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



def _deadline_passed(exc: BaseException) -> bool:
    """Whether `exc` ends a run because a `Deadline` around it passed (the server's own
    deadline for a call that carries none of the caller's): the cancellation it makes
    carries it (`Task.cancel`'s message). A caller who leaves cancels with no message."""
    return (isinstance(exc, asyncio.CancelledError) and bool(exc.args)
            and isinstance(exc.args[0], Deadline))


def failure(exc: BaseException, errors: ErrorTable | None) -> Message:
    """What a run that `exc` ended before its result keeps as its result.

    With the service's error table (`errors`), as its caller was sent it: for an error,
    its code and message as a `google.rpc.Status` (an unexpected error's text is not kept,
    as it is not sent: the log has it); for the server's own deadline (a `TimeoutError`,
    or the cancellation its `Deadline` makes), DEADLINE_EXCEEDED. The run reads
    `failed`. For a caller who left (cancelled), and for any end without a table,
    nothing (`Empty`): the run reads `interrupted`."""
    if errors is None:
        return empty_pb2.Empty()
    if isinstance(exc, TimeoutError) or _deadline_passed(exc):
        code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "the call ran past its deadline"
    elif not isinstance(exc, Exception):  # CancelledError, GeneratorExit
        return empty_pb2.Empty()
    elif (known := status_for(exc, errors)) is not None:
        code, message = known, str(exc) or type(exc).__name__
    else:
        code, message = grpc.StatusCode.INTERNAL, "internal error (logged with its request id)"
    status: Message = status_pb2.Status(code=code.value[0], message=message)
    return status


def _retrieved(write: asyncio.Future[None]) -> None:
    """Done callback of a store write its handler may not have waited for (it was
    cancelled meanwhile): its failure is read, never left unread."""
    if not write.cancelled():
        write.exception()


async def _shielded(write: Awaitable[None]) -> None:
    """Await a store write that a cancellation of the awaiting task does not stop: the
    task ends at once (CancelledError), the write goes on."""
    future = asyncio.ensure_future(write)
    future.add_done_callback(_retrieved)
    await asyncio.shield(future)


class RunRecord:
    """A run's record in the store while it runs (`start_record`; `recording` around a
    block): `put` (or `keep`) stores its terminal result, `unfinished` a run that ended
    without one. Without a store, each does nothing."""

    def __init__(self, store: RunStore | None, request: Message, *,
                 clock: ManifestClock | None = None, errors: ErrorTable | None = None) -> None:
        self._store = store
        self._request = request
        self._clock = clock
        self._errors = errors
        #: The stream's events so far (what `put` stores beside the result): a run that
        #: ends without its result (its caller hung up, the server stopped) keeps them.
        self.events: list[Message] = []
        #: What the run has made so far (a stream's completion, None before it made
        #: any), kept after its `events` when it ends without its result.
        self.made: Callable[[], Message | None] | None = None
        #: The run's end is being stored, or was: its terminal result (or how it ended
        #: without one) is its record, and nothing replaces it.
        self.stored = False
        #: Why the store could not take the terminal result (full, unreachable): raised
        #: by `ensure_kept` (when the `recording` block ends, after the servicer has sent
        #: the result).
        self.unstored: RunStoreError | None = None

    async def put(self, manifest: common_pb2.RunManifest, result: Message) -> None:
        """Store the run's terminal result and `events` (replacing its running row). The
        write is shielded: a caller who leaves meanwhile costs the run neither its record
        nor a second write saying it was interrupted. A store that cannot take it does
        not cost the caller the result: a run whose final write failed lost its summary
        (rankings, verdict counts). The failure is kept (`unstored`) and raised by
        `ensure_kept`, so the call still ends with it."""
        self.stored = True
        if self._store is None:
            return
        try:
            await _shielded(self._store.put(manifest, self._request, result, self.events))
        except RunStoreError as exc:
            self.unstored = exc

    def ensure_kept(self) -> None:
        """Raise why the store could not take the terminal result, if it could not."""
        if self.unstored is not None:
            raise self.unstored

    async def keep(self, manifest: common_pb2.RunManifest, result: Message) -> None:
        """`put`, then `ensure_kept`: for a reply its caller is sent once it is kept
        (Completion's)."""
        await self.put(manifest, result)
        self.ensure_kept()

    async def unfinished(self, exc: BaseException) -> None:
        """Store the run that `exc` ended before its terminal result was stored (see
        `failure`: `failed` with the error its caller was sent, given the service's error
        table, else `interrupted`), with its `events` and what it had `made`.

        The write is shielded and awaited here, inside the handler (a stopping server
        waits for its handlers, so the store is still open), and takes one worker-thread
        write, off the event loop; cancelled again meanwhile, the handler ends at once and
        the write goes on. A store that cannot take it is logged: the caller is sent the
        run's own error, not the store's."""
        if self._store is None or self.stored:
            return
        self.stored = True
        assert self._clock is not None, "a RunRecord that keeps unfinished runs needs a clock"
        events = list(self.events)
        made = self.made() if self.made is not None else None
        if made is not None:
            events.append(made)
        result = failure(exc, self._errors)
        try:
            await _shielded(self._store.put(self._clock.finish(), self._request, result,
                                            events))
        except asyncio.CancelledError:
            pass  # the run's own exception is raised by the caller of this
        except RunStoreError as error:
            log.warning("run %s (%s) could not be stored: %s", self._clock.manifest.run_id,
                        "failed" if isinstance(result, status_pb2.Status) else "interrupted",
                        error)


async def claim_run(store: RunStore, clock: ManifestClock, request: Message) -> None:
    """List a run started under its caller's own run id (`RunStore.claim`), or raise
    StatusError (ALREADY_EXISTS): a caller's run id names a new run; it never replaces a
    stored one (nor one started at the same moment: claims take turns), nor begins a
    stored run's id (it would take over the lookups by that prefix)."""
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


async def start_record(store: RunStore | None, clock: ManifestClock, request: Message, *,
                       listed: bool = True, errors: ErrorTable | None = None) -> RunRecord:
    """The record of a run that starts: its caller's own run id claimed (`claim_run`:
    StatusError ALREADY_EXISTS when taken); else, when `listed`, the run stored as running
    (`RunStore.started`), so that it is listed while it runs. Not `listed` (Completion's
    calls, short and many), nothing is written before the run ends. With the service's
    error table (`errors`), a run an error ends is kept `failed` (`failure`)."""
    record = RunRecord(store, request, clock=clock, errors=errors)
    if store is not None:
        if clock.chosen_run_id:
            await claim_run(store, clock, request)
        elif listed:
            await store.started(clock.manifest, request)
    return record


@contextlib.asynccontextmanager
async def recording(store: RunStore | None, clock: ManifestClock, request: Message, *,
                    listed: bool = True, errors: ErrorTable | None = None,
                    ) -> AsyncIterator[RunRecord]:
    """A run's record around the block that runs it (`start_record`): the block stores
    the terminal result with `RunRecord.put`. A block that ends by an exception before
    that (an error, a caller who hung up, the server's deadline) leaves the run stored
    as it ended (`RunRecord.unfinished`: `interrupted`, or `failed` given `errors`), with
    the events the block put in `RunRecord.events`; one whose terminal result the store
    could not take ends by that failure."""
    record = await start_record(store, clock, request, listed=listed, errors=errors)
    try:
        yield record
    except BaseException as exc:
        await record.unfinished(exc)
        raise
    record.ensure_kept()  # the result was sent; raised if the run was not kept
