"""Building the one RunManifest shape every service returns."""

from __future__ import annotations

import platform
import time
import uuid
from collections.abc import Iterable
from functools import cache

from google.protobuf import timestamp_pb2

from scillm.common.v1 import common_pb2

__all__ = ["ManifestClock", "versions"]


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


class ManifestClock:
    """Starts a manifest when a run starts and completes it when the run ends."""

    def __init__(self, service: str, context: common_pb2.RunContext, *, request_id: str,
                 model: str = "", item_ids: Iterable[str] = ()) -> None:
        self._t0 = time.perf_counter()
        self.manifest = common_pb2.RunManifest(
            run_id=context.run_id or uuid.uuid4().hex, request_id=request_id,
            item_ids=list(item_ids), session_id=context.session_id, track=context.track,
            service=service, model=model, versions=versions(), labels=dict(context.labels))
        self.manifest.start_time.GetCurrentTime()

    def finish(self, *, provider: str = "", backend: str = "",
               isolation: str = "") -> common_pb2.RunManifest:
        """Stamp end time and duration, and return the manifest."""
        m = self.manifest
        m.end_time.CopyFrom(_now())
        m.duration.FromNanoseconds(int((time.perf_counter() - self._t0) * 1e9))
        if provider:
            m.provider = provider
        if backend:
            m.backend = backend
        if isolation:
            m.isolation = isolation
        return m


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts
