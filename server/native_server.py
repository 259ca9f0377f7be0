"""pygrpc-native's gRPC server, stopped without cutting off the end of a call.

pygrpc-native 0.5.0's `Server.stop(grace)` waits for the handlers' tasks, then closes its
front at once. What a handler handed the front last (a stream's final messages and its
status, a unary reply) can still be queued for the HTTP/2 side at that moment; the
connection goes with the front, and the caller of a call that finished inside the grace
sees UNAVAILABLE ("GOAWAY received") instead of its end. Under load, 43 of 150 stops in a
probe lost a stream's tail so.

`DrainingServer.stop` puts one step between the two: once the handlers are done, it waits,
within the same grace, until the front has finished every call it started (its own
per-method counters, `NativeGrpcFront.metrics()`, switched on for that), and only then
stops as the library does. New calls are refused with UNAVAILABLE from the start of the
stop, as the library refuses them; a caller's channel may retry those elsewhere (no handler
ran for them).

A call whose handler still runs when the grace ends is another matter: the library would
cancel it and close its connection, and the caller's channel would retry the UNAVAILABLE
it saw on another replica, running it twice. The stop ends such a call itself, through
the front, as server/grace_end.py says (ABORTED, "the server is shutting down"), and gives
the front up to `grace_end.ENDING_S` past the grace to send those ends.

It also runs a method's interceptors once instead of on every call, when they allow it
(`DrainingServer._resolve_methods`).

And it answers a call that fails with trailing metadata the front refuses: a key that
starts with `grpc-` (gRPC's own; `grpc-status-details-bin` passes) or an invalid key
(upper case, a space). The front raised, the library sent nothing, and the caller waited
for its deadline. grpcio's server sends such a call the handler's status (its `grpc-` keys
passed or dropped), and answers invalid keys INTERNAL "Invalid metadata"; this one sends
the status without the reserved keys (logged), and INTERNAL for the rest
(`DrainingServer._fail`). Only a failure pays for it: the check runs once the front has
refused. (A reply or a stream's end with such trailers still goes unanswered: catching
that would cost every call; the mesh's handlers set none.)

The server has no public hook for any of these, so the class leans on 0.5.0's attributes
(`_front`, `_front_args`, `_calls`, `_stopping`, `_table`, `_interceptors`, `_fail`);
pyproject.toml pins that release, and tests/server/test_native_drain.py and
test_native_reserved_trailers.py fail if a new one moves them or fixes the stop itself
differently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pygrpc_native.aio

from . import grace_end

__all__ = ["DrainingServer"]

log = logging.getLogger("scillm.server")

#: How often the drain looks at the front's counters.
_POLL_S = 0.002
#: The one `grpc-` trailer the front sends (`DrainingServer._fail`).
_SENT_GRPC_KEY = "grpc-status-details-bin"


class DrainingServer(pygrpc_native.aio.Server):
    """`pygrpc_native.aio.Server` whose `stop` lets the front send what it was given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The front's counters (started, finished by status) are what says it is drained.
        self._front_args["metrics"] = True

    async def start(self) -> None:
        await super().start()
        await self._resolve_methods()

    async def _resolve_methods(self) -> None:
        """Resolve each natively served method through the interceptors once, when every
        interceptor answers every call of a method with the same handler (the mesh's
        `CallContext`, unless tracing adds OpenTelemetry's, which starts a span per call).
        The library otherwise runs the chain for every call: a `HandlerCallDetails` with
        the metadata copied, and a coroutine per interceptor: 2.5 µs per call against
        0.2 µs, in-process with the mesh's chain (about 1 % of a Completion at the gRPC
        door). The fallback server (reflection, unknown methods) keeps the
        interceptors: it was given them at `start`."""
        chain = self._interceptors
        if not chain or not all(getattr(i, "handler_per_method", False) for i in chain):
            return
        table = []
        for path, handler in self._table:
            resolved = await _through(chain, path, handler)
            if resolved is None or resolved.response_streaming != handler.response_streaming \
                    or resolved.request_streaming:
                return  # an interceptor that refuses or swaps a method: per call, as before
            table.append((path, resolved))
        self._table = table
        self._interceptors = ()

    async def stop(self, grace: float | None) -> None:
        if self._stopping or self._front is None:
            await super().stop(grace)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (grace or 0.0)
        self._stopping = True  # the front's new calls are refused from here on
        tasks = [call.task for call in self._calls.values() if call.task is not None]
        if grace and tasks:
            await asyncio.wait(tasks, timeout=grace)
        if self._end_running_calls():
            deadline = max(deadline, loop.time()) + grace_end.ENDING_S
        # The front signals nothing when it is drained: its counters are read until it is.
        while self._unfinished() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_S)
        # The library's stop starts by checking this flag; it runs up to its first await
        # before the loop can deliver another call, so none slips in.
        self._stopping = False
        await super().stop(max(0.0, deadline - loop.time()) if grace else grace)

    def _end_running_calls(self) -> int:
        """End the calls whose handlers still run (the grace is over) as
        server/grace_end.py says, and cancel their handlers, as a caller leaving cancels
        them (the upstream calls they wait on end too); how many."""
        front = self._front
        assert front is not None
        ended = 0
        for call in list(self._calls.values()):
            if call.task is None or call.task.done():
                continue
            front.fail(call.call_id, grace_end.CODE.value[0], grace_end.MESSAGE,
                       trailing_metadata=grace_end.trailers(call.metadata))
            # The library sends nothing for a handler cancelled while the server stops.
            call.task.cancel(grace_end.CUT)
            ended += 1
        return ended

    def _fail(self, call: Any, context: Any, details: str | None) -> None:
        """The library's, which sends the call's failure, unless the front refuses its
        trailing metadata: then it goes without the keys reserved to gRPC, or, if the
        front refuses the rest too, as INTERNAL "Invalid metadata" (see the module)."""
        try:
            super()._fail(call, context, details)
            return
        except ValueError as exc:
            refused = exc
        trailers = list(context.trailing_metadata())
        reserved = {key for key, _ in trailers
                    if key.startswith("grpc-") and key != _SENT_GRPC_KEY}
        if reserved:
            log.warning("a call of %s failed with trailing metadata keys reserved to gRPC, "
                        "sent without them: %s", call.method, ", ".join(sorted(reserved)))
            context.set_trailing_metadata([pair for pair in trailers
                                           if pair[0] not in reserved])
            try:
                super()._fail(call, context, details)
                return
            except ValueError as exc:
                refused = exc
        log.warning("a call of %s failed with trailing metadata the gRPC front refuses "
                    "(%s): answered INTERNAL without it", call.method, refused)
        context.set_trailing_metadata(())
        context.set_code(grpc.StatusCode.INTERNAL)
        super()._fail(call, context, "Invalid metadata")

    def _unfinished(self) -> int:
        """Calls the front has started and not yet finished (sent their status)."""
        metrics = self._front.metrics() if self._front is not None else None
        if not metrics:
            return 0
        return sum(method["started"] - sum(s["count"] for s in method["status"].values())
                   for method in metrics["methods"].values())


@dataclass(frozen=True)
class _Details:
    """`grpc.HandlerCallDetails` of a method, as resolved before any call."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


async def _through(chain: Sequence[Any], path: str,
                   handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
    """`handler` as `chain` (outermost first) returns it for calls of `path`."""
    async def step(index: int, details: Any) -> grpc.RpcMethodHandler | None:
        if index == len(chain):
            return handler
        resolved: grpc.RpcMethodHandler | None = await chain[index].intercept_service(
            lambda d: step(index + 1, d), details)
        return resolved
    return await step(0, _Details(path))
