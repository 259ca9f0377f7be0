"""The plumbing every scenario shares, so that each story reads as the story.

A scenario is `main(story)`: `story(stack)` starts what it needs through this kit (each
thing registered on `stack` and stopped when the story ends, however it ends), prints what a
person wants to see, and calls `check(...)` for every claim of the story. The exit code says
how it went:

    0   PASS  every check held
    1   FAIL  a check failed or something broke (the reason is printed)
    77  SKIP  this machine lacks a part the story needs (`need(...)` says which)

The last line starting with `FIGURE ` is the one figure that matters (`scenarios/run_all.py`
puts it in its table).

What the kit starts, all on 127.0.0.1 with ports the OS picks:
- `serve(stack, name, *args)`: a `scillm serve` process (the real CLI), ready when it prints
  its ready line; SIGTERM, then SIGKILL to its process group, when the story ends.
- `Upstream`: a small real OpenAI-wire server (JSON `chat.completion` or an SSE stream),
  whose answer to each request a function decides. With `SCENARIO_BREAK_UPSTREAM=garbage`
  in the environment every upstream answers `200` with a body that is not JSON: a way to
  break a story on purpose (`scenarios/test_scenarios.py` does).
- `OtlpReceiver`: an OTLP/gRPC trace receiver keeping every span.
- `redis(stack)`: a private `redis-server` without persistence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

SKIP_EXIT = 77
BIN = Path(sys.executable).parent  # the venv's bin: scillm, grpcurl


class Skip(Exception):
    """A part of this machine the story needs is missing."""


class Broken(Exception):
    """The story broke: a check failed."""


def need(present: object, reason: str) -> None:
    """Skip the story (exit 77) unless `present`."""
    if not present:
        raise Skip(reason)


def check(holds: object, claim: str) -> None:
    """One claim of the story: printed when it holds, the story fails when not."""
    if not holds:
        raise Broken(claim)
    print(f"  ok    {claim}", flush=True)


def step(title: str) -> None:
    print(f"\n-- {title}", flush=True)


def show(text: str) -> None:
    print(f"        {text}", flush=True)


def figure(text: str) -> None:
    print(f"FIGURE {text}", flush=True)


def main(story: Callable[[contextlib.ExitStack[Any]], None]) -> NoReturn:
    """Run `story`, stop all it started, exit 0 / 1 / 77 (see the module docstring)."""
    title = (story.__doc__ or story.__name__).strip().splitlines()[0]
    print(f"== {title}", flush=True)
    code = 0
    try:
        with contextlib.ExitStack() as stack:
            story(stack)
    except Skip as why:
        print(f"SKIP  {why}", flush=True)
        code = SKIP_EXIT
    except Broken as why:
        print(f"FAIL  {why}", flush=True)
        code = 1
    except Exception:  # anything unexpected breaks the story too, with its traceback
        traceback.print_exc()
        print("FAIL  the story raised an exception (above)", flush=True)
        code = 1
    else:
        print("PASS", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: a client library's lingering thread must not hold us


def workdir(stack: contextlib.ExitStack[Any]) -> Path:
    """A private temporary directory, removed at the end."""
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scillm-scenario-")))


def tool(name: str) -> str | None:
    """A program from the venv (scillm, grpcurl) or PATH."""
    here = BIN / name
    return str(here) if here.exists() else shutil.which(name)


# -------------------------------------------------------------------- scillm serve


@dataclass
class Served:
    """A `scillm serve` process."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    grpc: str = ""  # host:port
    http: str = ""  # http://host:port, or "" without HTTP

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):  # sandbox workers, provers
            os.killpg(self.proc.pid, signal.SIGKILL)


_READY = re.compile(r"scillm: gRPC(?: \(TLS\))? on (\S+?)(?:, HTTP on (\S+))? \(")


def serve(stack: contextlib.ExitStack[Any], name: str, *args: str, env: dict[str, str],
          directory: Path, timeout: float = 120.0) -> Served:
    """`scillm serve --grpc-port 0 ARGS` with `env` added; returns once it is ready."""
    scillm = tool("scillm")
    need(scillm, "the scillm CLI is not installed (scripts/install)")
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(scillm), "serve", "--grpc-port", "0", "--grace", "2",
                                 *args], env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(name, proc, log)
    stack.callback(served.stop)
    deadline = time.monotonic() + timeout
    while not (match := _READY.search(log.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise Broken(f"scillm serve ({name}) did not start:\n"
                         + log.read_text(errors="replace")[-2000:])
        time.sleep(0.05)
    served.grpc, served.http = match.group(1), match.group(2) or ""
    return served


def mesh_env(directory: Path, **more: str) -> dict[str, str]:
    """The environment of a private mesh: its own run store, and nothing of the caller's
    own mesh settings (keys, config, shared stores, targets, tracing)."""
    blank = ("MASTER_KEY", "CONFIG_PATH", "STORE_URL", "REDIS_URL", "PROVE_MODEL",
             "COMPLETION_TARGET", "PROVE_TARGET", "CODEWORLD_TARGET", "AGENT_TARGET",
             "KEYS_TARGET", "SERVICES", "STORE_COMPLETIONS", "METRICS_PORT")
    return {**{f"SCILLM_{name}": "" for name in blank}, "OTEL_EXPORTER_OTLP_ENDPOINT": "",
            "SCILLM_STORE_PATH": str(directory / "runs.sqlite3"), **more}


# -------------------------------------------------------------------- an OpenAI-wire upstream


@dataclass
class Reply:
    """What an upstream answers: a status, headers, and an assistant message (status
    200) or an error body."""

    status: int = 200
    message: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class Upstream:
    """A real OpenAI-compatible HTTP server; `answer(request body) -> Reply` decides."""

    def __init__(self, stack: contextlib.ExitStack[Any],
                 answer: Callable[[dict[str, Any]], Reply]) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self._garbage = os.environ.get("SCENARIO_BREAK_UPSTREAM") == "garbage"
        self._loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"

        def stop() -> None:
            self._loop.call_soon_threadsafe(server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join(timeout=5)

        stack.callback(stop)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = json.loads(await reader.readexactly(length) or b"{}")
                self.requests.append(request)
                writer.write(self._response(request))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _response(self, request: dict[str, Any]) -> bytes:
        reply = self.answer(request)
        headers = {"content-type": "application/json", **reply.headers}
        if self._garbage:
            return _http(200, headers, b"<html>this is not JSON</html>")
        if reply.status != 200:
            body = json.dumps({"error": {"message": reply.message.get("content", "failed"),
                                         "type": "upstream_error"}}).encode()
            return _http(reply.status, headers, body)
        finish = "tool_calls" if reply.message.get("tool_calls") else "stop"
        base = {"id": f"chatcmpl-{len(self.requests)}", "created": int(time.time()),
                "model": request.get("model", "")}
        if request.get("stream") is True:  # one content chunk, the finish, [DONE]
            chunks = [{**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"role": "assistant", **reply.message},
                 "finish_reason": None}]},
                {**base, "object": "chat.completion.chunk", "choices": [
                    {"index": 0, "delta": {}, "finish_reason": finish}]}]
            body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
            return _http(200, {**headers, "content-type": "text/event-stream"},
                         body + b"data: [DONE]\n\n")
        body = json.dumps({**base, "object": "chat.completion", "choices": [
            {"index": 0, "finish_reason": finish,
             "message": {"role": "assistant", "content": None, **reply.message}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
        return _http(200, headers, body.encode())


def _http(status: int, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
             *(f"{k}: {v}" for k, v in headers.items()), f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -------------------------------------------------------------------- Redis


def redis(stack: contextlib.ExitStack[Any], directory: Path) -> int:
    """A private redis-server (no persistence) on a free port; returns the port."""
    server = shutil.which("redis-server")
    need(server, "redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([str(server), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=10)

    stack.callback(stop)
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return port
        if proc.poll() is not None or time.monotonic() > deadline:
            raise Broken("redis-server did not start")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -------------------------------------------------------------------- OTLP receiver


@dataclass(frozen=True)
class Span:
    """An exported span, as much of it as a trace tree shows."""

    service: str  # the process's service.name
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    start_ns: int
    end_ns: int


class OtlpReceiver:
    """A real OTLP/gRPC TraceService on 127.0.0.1 keeping every span; `endpoint` is what
    OTEL_EXPORTER_OTLP_ENDPOINT should say."""

    def __init__(self, stack: contextlib.ExitStack[Any]) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        self.spans: list[Span] = []
        self._lock = threading.Lock()
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                return receiver._export(request)

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        stack.callback(self._server.stop, 0)
        self.endpoint = f"http://127.0.0.1:{port}"

    def _export(self, request: Any) -> Any:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2

        got = []
        for rs in request.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes
                            if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    kind = trace_pb2.Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_")
                    got.append(Span(service, s.name, kind, s.trace_id, s.span_id,
                                    s.parent_span_id, s.start_time_unix_nano,
                                    s.end_time_unix_nano))
        with self._lock:
            self.spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: bytes, until: Callable[[list[Span]], bool],
              timeout: float = 30.0) -> list[Span]:
        """The spans of `trace_id` once `until(spans)` holds (or when `timeout` passes)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = [s for s in self.spans if s.trace_id == trace_id]
            if until(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)


def print_tree(spans: list[Span], root_parent: bytes) -> None:
    """The spans as an indented tree under `root_parent`, children by start time."""
    children: dict[bytes, list[Span]] = {}
    for s in spans:
        children.setdefault(s.parent_id, []).append(s)

    def walk(parent: bytes, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: s.start_ns):
            ms = (s.end_ns - s.start_ns) / 1e6
            show(f"{'   ' * depth}{s.service:<10} {s.kind:<8} {s.name}  ({ms:.1f} ms)")
            walk(s.span_id, depth + 1)

    walk(root_parent, 0)
