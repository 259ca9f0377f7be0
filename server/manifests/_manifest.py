"""Building the one RunManifest shape every service returns."""

from __future__ import annotations

import platform
import secrets
import time
from collections.abc import Iterable
from functools import cache

from opentelemetry import trace

from scillm.common.v1 import common_pb2

__all__ = ["ManifestClock", "current_trace_id", "versions"]


@cache
def versions() -> dict[str, str]:
    """Versions of the process's parts, computed once."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("scillm", "grpcio", "protobuf"):
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


class ManifestClock:
    """Starts a manifest when a run starts and completes it when the run ends."""

    def __init__(self, service: str, context: common_pb2.RunContext, *, request_id: str,
                 model: str = "", item_ids: Iterable[str] = ()) -> None:
        self._t0 = time.perf_counter()
        m = self.manifest = common_pb2.RunManifest()
        m.CopyFrom(_blank())
        m.run_id = context.run_id or secrets.token_hex(16)
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

