"""Traces leave the process over OTLP/gRPC when OTEL_* says so: a real OTLP TraceService
receiver (from opentelemetry-proto) collects the spans of a mesh run as `scillm serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

from scillm.clients import SyncScillmClient


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[tuple[str, str, bytes, bytes]] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes
                            if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans.append((service, span.name, span.trace_id, span.parent_span_id))
        return trace_service_pb2.ExportTraceServiceResponse()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_spans_reach_an_otlp_receiver(tmp_path: Path) -> None:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port = _free_port()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_SERVICE_NAME": "scillm-test",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "SCILLM_STORE_PATH": str(tmp_path / "r.sqlite3")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "scillm"), "serve", "--service", "completion",
         "--grpc-port", str(port), "--no-http", "--grace", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # log lines, then the ready line
            if "scillm: gRPC on" in line:
                break
        with SyncScillmClient(f"127.0.0.1:{port}") as client:
            client.complete({"model": "echo/x", "messages": [{"role": "user", "content": "t"}]})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not receiver.spans:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        server.stop(0)
    names = [(service, name) for service, name, _, _ in receiver.spans]
    assert ("scillm-test", "/scillm.completion.v1.CompletionService/Completion") in names, names
