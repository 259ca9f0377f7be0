"""Prometheus metrics of a SciLLM process, in one registry owned by the Mesh.

    scillm_rpc_requests_total{method, model, code}  RPCs finished, by model and status code
    scillm_rpc_latency_seconds{method, model}       RPC latency (streams: until the last event)
    scillm_rpc_in_flight{method}                    RPCs running now (streams included)
    scillm_tokens_total{model, kind}                prompt / completion tokens served
    scillm_cache_events_total{result}               completion cache hits and misses
    scillm_retries_total{model}                     upstream attempts beyond the first
    scillm_prove_verdicts_total{backend, verdict}   prover verdicts
    scillm_sandbox_runs_total{status}               sandboxed executions by outcome

Exposed on the HTTP shim's `/metrics` and, when `metrics_port` is set, on a port of its own.

The `model` label is the name the caller asked for, and a caller may ask for any name:
20,000 made-up names grew a process by 125 MiB and /metrics to 61 MB (prometheus_client
keeps every label set for good), before any key was checked. The configured model names are
always labelled; besides them, a process labels at most `MAX_MODEL_LABELS` names (a
wildcard deployment's models, another process's), and counts any later one as "other".
In a worker of `scillm serve --workers N` (PROMETHEUS_MULTIPROC_DIR set by the master),
prometheus_client keeps the values in that directory, and `exposition` adds up every
worker's (in-flight gauges only those of live workers).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.metrics import MetricWrapperBase

from .names import MAX_NAME_CHARS

__all__ = ["MAX_MODEL_LABELS", "OTHER_MODEL", "Metrics", "RpcMetrics"]

M = TypeVar("M", bound=MetricWrapperBase)

#: Label sets whose child metrics are kept at hand; past it the cache starts over.
_MAX_CHILDREN = 4096
#: Model names labelled besides the configured ones (see the module docstring).
MAX_MODEL_LABELS = 256
#: The label of a model name past that.
OTHER_MODEL = "other"

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
            30, 60, 300)


class Metrics:
    """The process's metrics (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        #: What /metrics renders: `registry`, or every worker's values in a worker.
        self.exposition = self.registry
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if shared:
            self.exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposition, shared)  # type: ignore[no-untyped-call]
        r = self.registry
        self.requests = Counter("scillm_rpc_requests", "RPCs finished",
                                ["method", "model", "code"], registry=r)
        self.latency = Histogram("scillm_rpc_latency_seconds", "RPC latency",
                                 ["method", "model"], buckets=_BUCKETS, registry=r)
        self.in_flight = Gauge("scillm_rpc_in_flight", "RPCs running", ["method"], registry=r,
                               multiprocess_mode="livesum")
        self.tokens = Counter("scillm_tokens", "Tokens served", ["model", "kind"], registry=r)
        self.cache = Counter("scillm_cache_events", "Completion cache lookups", ["result"],
                             registry=r)
        self.retries = Counter("scillm_retries", "Upstream retries", ["model"], registry=r)
        self.verdicts = Counter("scillm_prove_verdicts", "Prover verdicts",
                                ["backend", "verdict"], registry=r)
        self.sandbox_runs = Counter("scillm_sandbox_runs", "Sandboxed executions", ["status"],
                                    registry=r)
        self._children: dict[tuple[object, ...], MetricWrapperBase] = {}
        self._rpcs: dict[tuple[str, str], RpcMetrics] = {}
        self._configured: frozenset[str] = frozenset()
        self._labelled: set[str] = set()

    def configure_models(self, names: Iterable[str]) -> None:
        """The configured model names: always labelled, whatever came before."""
        self._configured = frozenset(names)

    def model_label(self, model: str) -> str:
        """The `model` label for a model name (see the module docstring)."""
        if model in self._labelled or model in self._configured:
            return model
        if len(self._labelled) >= MAX_MODEL_LABELS or len(model) > MAX_NAME_CHARS:
            return OTHER_MODEL
        self._labelled.add(model)
        return model

    def rpc(self, method: str, model: str) -> RpcMetrics:
        """The metrics every RPC of `method` for `model` records, resolved once."""
        if len(model) > MAX_NAME_CHARS:  # refused later; not a name to keep (megabytes)
            model = OTHER_MODEL
        found = self._rpcs.get((method, model))
        if found is None:
            if len(self._rpcs) >= _MAX_CHILDREN:
                self._rpcs.clear()
            found = self._rpcs[(method, model)] = RpcMetrics(self, method,
                                                             self.model_label(model))
        return found

    def child(self, metric: M, *labels: str) -> M:
        """`metric.labels(*labels)`, looked up once: `labels()` costs microseconds a call.

        The RPC path records 5-7 metrics per request; the children are cached by metric
        and label values (prometheus_client keeps every child anyway).
        """
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= _MAX_CHILDREN:
                self._children.clear()
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]


class RpcMetrics:
    """One method's and model's RPC metrics: `started` when an RPC starts, `finished` with
    its status code and duration when it ends (the four children looked up once, not on
    every RPC)."""

    __slots__ = ("_codes", "_in_flight", "_latency", "_method", "_model", "_requests")

    def __init__(self, metrics: Metrics, method: str, model: str) -> None:
        self._requests = metrics.requests
        self._method = method
        self._model = model
        self._in_flight = metrics.in_flight.labels(method)
        self._latency = metrics.latency.labels(method, model)
        self._codes: dict[str, Counter] = {}

    def started(self) -> None:
        self._in_flight.inc()

    def finished(self, code: str, seconds: float) -> None:
        counter = self._codes.get(code)
        if counter is None:
            counter = self._codes[code] = self._requests.labels(self._method, self._model, code)
        counter.inc()
        self._latency.observe(seconds)
        self._in_flight.dec()
