"""Traces leave the process over OTLP/gRPC when OTEL_* says so: a real OTLP TraceService
receiver (from opentelemetry-proto) collects the spans of meshes run as `scillm serve`.
Every door's trace through the five-process layout is checked in tests/test_split_layout.py.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
import pytest
from held_upstream import HeldUpstream
from meshutil import ServedProcess
from otlp_receiver import OtlpReceiver, Span, broken_links, new_traceparent

from scillm.clients import SyncScillmClient


def _env(tmp_path: Path, receiver: OtlpReceiver, name: str) -> dict[str, str]:
    return {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_SERVICE_NAME": name,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "SCILLM_STORE_PATH": str(tmp_path / name / "runs.sqlite3")}


def test_spans_reach_an_otlp_receiver(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        proc = ServedProcess("completion", [
            "--service", "completion", "--grpc-port", "0", "--no-http", "--grace", "1"],
            _env(tmp_path, receiver, "scillm-test"), tmp_path / "completion.log").wait_ready()
        try:
            with SyncScillmClient(proc.grpc_target) as client:
                client.complete({"model": "echo/x",
                                 "messages": [{"role": "user", "content": "t"}]})
            spans = receiver.wait_for(lambda spans: bool(spans))
        finally:
            proc.stop()
    names = [(s.service, s.name) for s in spans]
    assert ("scillm-test", "/scillm.completion.v1.CompletionService/Completion") in names, names


def test_one_whole_trace_across_the_shim_and_two_processes(tmp_path: Path) -> None:
    """HTTP shim and Agent in process A; Completion in process B. `/agent/run` is one
    trace, every span's parent exported, the shim's client span of the AgentRun stream
    among them (it ends only when the shim reads the stream to its end)."""
    with OtlpReceiver() as receiver:
        b = ServedProcess("completion-b", [
            "--service", "completion", "--grpc-port", "0", "--no-http", "--grace", "1"],
            _env(tmp_path, receiver, "completion-b"), tmp_path / "b.log").wait_ready()
        a = ServedProcess("agent-a", [
            "--service", "agent", "--grpc-port", "0", "--http-port", "0", "--grace", "1",
            "--completion-target", b.grpc_target],
            _env(tmp_path, receiver, "agent-a"), tmp_path / "a.log")
        traceparent, trace_id, caller = new_traceparent()
        try:
            a.wait_ready()
            reply = httpx.post(f"{a.http_url}/agent/run", timeout=60, json={
                "model": "echo/x", "messages": [{"role": "user", "content": "just answer"}],
                "max_iterations": 2}, headers={"traceparent": traceparent})
            assert reply.status_code == 200, reply.text
            wanted = {("agent-a", "SERVER", "POST /agent/run"),
                      ("agent-a", "CLIENT", "/scillm.agent.v1.AgentService/AgentRun"),
                      ("agent-a", "SERVER", "/scillm.agent.v1.AgentService/AgentRun"),
                      ("agent-a", "CLIENT", "/scillm.completion.v1.CompletionService/Completion"),
                      ("completion-b", "SERVER",
                       "/scillm.completion.v1.CompletionService/Completion")}

            def whole(spans: list[Span]) -> bool:
                seen = {(s.service, s.kind, s.name) for s in spans if s.trace_id == trace_id}
                return wanted <= seen and not broken_links(spans, trace_id, caller)

            spans = receiver.wait_for(whole)
        finally:
            a.stop()
            b.stop()
    in_trace = [s for s in spans if s.trace_id == trace_id]
    seen = {(s.service, s.kind, s.name) for s in in_trace}
    assert wanted <= seen, sorted(wanted - seen)
    assert broken_links(spans, trace_id, caller) == []
    roots = [s for s in in_trace if s.parent_span_id == caller]
    assert [(r.service, r.kind) for r in roots] == [("agent-a", "SERVER")]
    # B's server span hangs from A's client span, which hangs from A's AgentRun.
    by_id = {s.span_id: s for s in in_trace}
    served = next(s for s in in_trace if s.service == "completion-b" and s.kind == "SERVER")
    chain = []
    span = served
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append((span.service, span.kind, span.name))
    assert chain[0] == ("agent-a", "CLIENT", "/scillm.completion.v1.CompletionService/Completion")
    assert ("agent-a", "CLIENT", "/scillm.agent.v1.AgentService/AgentRun") in chain


def test_a_key_in_a_url_does_not_reach_the_traces(tmp_path: Path) -> None:
    """The door's server span carried `http.url` whole, and `GET /key/info?key=sk-...` (the
    README's form) exported a virtual key's secret to the trace collector."""
    master = "sk-master-traced"
    with OtlpReceiver() as receiver:
        proc = ServedProcess("door", [
            "--service", "completion", "--grpc-port", "0", "--http-port", "0", "--grace", "1"],
            {**_env(tmp_path, receiver, "door"), "SCILLM_MASTER_KEY": master},
            tmp_path / "door.log").wait_ready()
        try:
            auth = {"authorization": f"Bearer {master}"}
            made = httpx.post(f"{proc.http_url}/key/generate", json={}, headers=auth,
                              timeout=30)
            assert made.status_code == 200, made.text
            key = made.json()["key"]
            info = httpx.get(f"{proc.http_url}/key/info", params={"key": key}, headers=auth,
                             timeout=30)
            assert info.status_code == 200, info.text
            spans = receiver.wait_for(lambda spans: any(
                s.kind == "SERVER" and "/key/info" in s.name for s in spans))
        finally:
            proc.stop()
    served = [s for s in spans if s.kind == "SERVER" and "/key/info" in s.name]
    assert served, [s.name for s in spans]
    secret = key.removeprefix("sk-")
    for span in spans:
        leaked = {k: v for k, v in span.attributes.items() if secret in v or master in v}
        assert not leaked, (span.name, leaked)
    assert any("key=" in v and "REDACTED" in v for s in served for v in s.attributes.values())


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_caller_who_hangs_up_ends_the_doors_client_span_cancelled(
        tmp_path: Path, stream: bool) -> None:
    """A traced door dials its services over gRPC. Its caller hangs up while the upstream
    holds the completion: the door's client span of the gRPC call must still be exported,
    and say the call was cancelled (a stream's said it had succeeded, status code 0)."""
    upstream = HeldUpstream().start()
    config = upstream.config(tmp_path / "models.yaml")
    method = ("/scillm.completion.v1.CompletionService/"
              + ("CompletionStream" if stream else "Completion"))
    with OtlpReceiver() as receiver:
        proc = ServedProcess("door", [
            "--service", "completion", "--grpc-port", "0", "--http-port", "0", "--grace", "1",
            "--config", str(config)], _env(tmp_path, receiver, "door"), tmp_path / "door.log")
        try:
            proc.wait_ready()
            upstream.hold()
            body = json.dumps({"model": "held", "stream": stream, "messages": [
                {"role": "user", "content": "hang up"}]}).encode()
            host, port = proc.http_url.removeprefix("http://").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=30) as caller:
                caller.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: door\r\n"
                               b"content-type: application/json\r\ncontent-length: "
                               + str(len(body)).encode() + b"\r\n\r\n" + body)
                assert upstream.arrived(1), "the completion never reached the upstream"
                if stream:
                    assert caller.recv(1 << 16).startswith(b"HTTP/1.1 200"), "no stream"
            # Hung up (closed): the door ends its gRPC call, which ends the upstream's.
            assert upstream.abandoned(1), "the upstream request outlived the caller"
            spans = receiver.wait_for(lambda spans: any(
                s.kind == "CLIENT" and s.name == method for s in spans))
        finally:
            proc.stop()
            upstream.release()
            upstream.stop()
    (span,) = [s for s in spans if s.kind == "CLIENT" and s.name == method]
    assert span.attributes["rpc.grpc.status_code"] == "1", span
    assert span.status == "ERROR" and "cancel" in span.status_message.lower(), span
