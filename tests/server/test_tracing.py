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
        # (service.name, span name, trace id, parent span id, span id)
        self.spans: list[tuple[str, str, bytes, bytes, bytes]] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes
                            if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    self.spans.append((service, span.name, span.trace_id, span.parent_span_id,
                                       span.span_id))
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
    names = [(service, name) for service, name, *_ in receiver.spans]
    assert ("scillm-test", "/scillm.completion.v1.CompletionService/Completion") in names, names


def _serve(port: int, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "scillm"), "serve", "--grpc-port", str(port),
         "--grace", "1", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "scillm: gRPC on" in line:
            return proc
    raise AssertionError(f"scillm serve {args} did not start")


def test_one_trace_across_the_shim_and_two_processes(tmp_path: Path) -> None:
    """HTTP shim and Agent in process A; Completion in process B: one trace, parents chained."""
    import httpx

    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    base = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "100",
            "SCILLM_STORE_PATH": str(tmp_path / "r.sqlite3")}
    b_port, a_port, http_port = _free_port(), _free_port(), _free_port()
    b = _serve(b_port, {**base, "OTEL_SERVICE_NAME": "completion-b"},
               "--service", "completion", "--no-http")
    a = _serve(a_port, {**base, "OTEL_SERVICE_NAME": "agent-a",
                        "SCILLM_COMPLETION_TARGET": f"127.0.0.1:{b_port}"},
               "--service", "agent", "--http-port", str(http_port))
    try:
        reply = httpx.post(f"http://127.0.0.1:{http_port}/agent/run", timeout=60, json={
            "model": "echo/x", "messages": [{"role": "user", "content": "just answer"}],
            "max_iterations": 2})
        assert reply.status_code == 200, reply.text
        deadline = time.monotonic() + 15
        wanted = {"agent-a", "completion-b"}
        while time.monotonic() < deadline:
            services = {s[0] for s in receiver.spans
                        if s[1].endswith("CompletionService/Completion")}
            if wanted <= services:
                break
            time.sleep(0.1)
    finally:
        for proc in (a, b):
            proc.terminate()
            proc.wait(timeout=15)
        server.stop(0)
    spans = receiver.spans
    http_root = [s for s in spans if s[0] == "agent-a" and s[1].startswith("POST")]
    assert http_root, [s[:2] for s in spans]
    trace_id = http_root[0][2]
    in_trace = [s for s in spans if s[2] == trace_id]
    by_id = {s[4]: s for s in in_trace}
    served = [s for s in in_trace if s[0] == "completion-b"
              and s[1] == "/scillm.completion.v1.CompletionService/Completion"]
    assert served, "the Completion call in process B is not in the shim's trace"
    client_span = by_id[served[0][3]]  # B's server span's parent: A's client span
    assert client_span[0] == "agent-a"
    chain = []
    span = client_span
    while span[3] in by_id:
        span = by_id[span[3]]
        chain.append((span[0], span[1]))
    assert ("agent-a", "/scillm.agent.v1.AgentService/AgentRun") in chain
