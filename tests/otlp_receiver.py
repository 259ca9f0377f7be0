"""A real OTLP/gRPC trace receiver on 127.0.0.1:0, for tests: the collector's
TraceService from opentelemetry-proto, keeping every span it is sent.

    with OtlpReceiver() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ...
        spans = receiver.wait_for(lambda spans: ..., timeout=30)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class Span:
    """What the tests look at of an exported span."""

    service: str  # resource attribute service.name
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes  # b"" for a root
    #: The span's attributes, every value as text.
    attributes: dict[str, str] = field(default_factory=dict)
    #: Its status: UNSET, OK or ERROR, and the status's message.
    status: str = "UNSET"
    status_message: str = ""


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects spans; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT should say."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        got = []
        for rs in request.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes
                            if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    kind = trace_pb2.Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_")
                    attributes = {a.key: str(getattr(a.value, a.value.WhichOneof("value")))
                                  for a in s.attributes if a.value.WhichOneof("value")}
                    status = trace_pb2.Status.StatusCode.Name(s.status.code)
                    got.append(Span(service, s.name, kind, s.trace_id, s.span_id,
                                    s.parent_span_id, attributes,
                                    status.removeprefix("STATUS_CODE_"), s.status.message))
        with self._lock:
            self._spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, ready: Callable[[list[Span]], bool], timeout: float = 30.0) -> list[Span]:
        """The spans once `ready(spans)` holds, or when `timeout` passes (the caller's
        assertions then say what is missing)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans
            if ready(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(0)


def new_traceparent() -> tuple[str, bytes, bytes]:
    """A W3C `traceparent` header for a request the test makes: (header, trace id, the
    caller's span id, which the service's first span has as its parent)."""
    import os

    trace_id, span_id = os.urandom(16), os.urandom(8)
    return f"00-{trace_id.hex()}-{span_id.hex()}-01", trace_id, span_id


def broken_links(spans: list[Span], trace_id: bytes, caller: bytes) -> list[Span]:
    """Spans of trace `trace_id` whose parent was never exported: every span's parent must
    be another span of the trace, or `caller` (the test's own span, not exported)."""
    ids = {s.span_id for s in spans if s.trace_id == trace_id} | {caller}
    return [s for s in spans if s.trace_id == trace_id and s.parent_span_id not in ids]
