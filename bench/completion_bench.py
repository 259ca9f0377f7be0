"""Completion bench: the mesh's overhead over a fast local upstream, next to LiteLLM's proxy.

Run: ``.venv/bin/python bench/completion_bench.py [--quick] [--no-litellm]``.

nginx (worker_processes 1) plays the upstream and answers a fixed `chat.completion`
(model `bench`), a fixed SSE stream (`bench-stream`) and the same stream dribbled out by
`limit_rate` (`bench-slow`, for the concurrent-streams check). The mesh
(`scillm serve --service completion`) and, when it installs, LiteLLM's proxy are put in
front of it in turn. HTTP load comes from wrk (one thread); gRPC load, streaming time to
first byte and the concurrent streams come from an asyncio client in a separate process
(`_completion_load.py`). Every process started here runs in its own process group
and is killed on exit. Only loopback traffic.

Prints every figure, the targets (pass/fail) and the ratio to LiteLLM as a Markdown table.
This is a measurement, not a test: it exits 0 unless something could not be measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _completion_load import cpu_seconds, tree_pids

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SCILLM = str(Path(PYTHON).with_name("scillm"))
NGINX = "/usr/sbin/nginx"
WRK = "/usr/bin/wrk"
LITELLM_HOME = Path.home() / ".cache" / "scillm-bench" / "litellm-venv"

# -- the upstream's fixed answers ------------------------------------------------------------

CREATED = 1700000000
COMPLETION = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant",
                                         "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
}


def _sse_body(pieces: list[str]) -> str:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED,
                "model": "bench", "choices": [{"index": 0, "delta": delta,
                                               "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": p}, None) for p in pieces]
    events.append(chunk({}, "stop"))
    events.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                   "created": CREATED, "model": "bench", "choices": [],
                   "usage": {"prompt_tokens": 9, "completion_tokens": len(pieces),
                             "total_tokens": 9 + len(pieces)}})
    lines = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events]
    return "".join(lines) + "data: [DONE]\n\n"


STREAM_BODY = _sse_body(["Hello", "!", " How", " can", " I", " help", " you", " today", "?"])
SLOW_BODY = _sse_body([f" w{i}" for i in range(16)])  # 3.3 KB (nginx caps a token at 4 KB)

CHAT = {"model": "bench", "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 16}
STREAM = {**CHAT, "model": "bench-stream", "stream": True}
SLOW = {**CHAT, "model": "bench-slow", "stream": True}
ECHO = {**CHAT, "model": "bench-echo"}


def _nginx_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_conf(tmp: Path, port: int, slow_rate: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "\n".join(f"  {k}_temp_path {tmp}/{k};" for k in
                      ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
{temps}
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_buffer_size 64k;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /v1/chat/completions {{
      default_type application/json;
      return 200 {_nginx_string(json.dumps(COMPLETION, separators=(',', ':')))};
    }}
    location = /stream/v1/chat/completions {{
      default_type text/event-stream;
      return 200 {_nginx_string(STREAM_BODY)};
    }}
    location = /slow/v1/chat/completions {{
      default_type text/event-stream;
      limit_rate {slow_rate};
      return 200 {_nginx_string(SLOW_BODY)};
    }}
  }}
}}
"""


def model_config(upstream: int, echo: bool = False) -> str:
    base = f"http://127.0.0.1:{upstream}"
    entries = [("bench", f"{base}/v1"), ("bench-stream", f"{base}/stream/v1"),
               ("bench-slow", f"{base}/slow/v1")]
    lines = ["model_list:"]
    for name, api_base in entries:
        lines += [f"  - model_name: {name}", "    litellm_params:",
                  f"      model: openai/{name}", f"      api_base: {api_base}",
                  "      api_key: sk-bench"]
    if echo:  # the mesh's built-in echo provider: its cost without an upstream client
        lines += ["  - model_name: bench-echo", "    litellm_params:", "      model: echo/bench"]
    # The mesh caches responses by default (LiteLLM does not): off, so every call is upstream.
    lines += ["litellm_settings:", "  cache: false"]
    return "\n".join(lines) + "\n"


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Procs:
    """Every process group started by the bench, killed on exit."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, cmd: list[str], log: Path, env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        out = open(log, "ab")  # the child holds it
        proc = subprocess.Popen(cmd, stdout=stdout if stdout is not None else out, stderr=out,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
        out.close()
        self.started.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)
            # a group may outlive its leader (workers of a server)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout:g}s")


def http_get_ok(port: int, path: str) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
        s.settimeout(2)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        return s.recv(64).startswith(b"HTTP/1.1 200")
    return False


def peak_rss_mb(pid: int) -> float:
    """VmHWM of the process and its children, MB."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def run_json(cmd: list[str], timeout: float) -> Any:
    """Run a helper in its own group; parse the last line starting with BENCHJSON."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"{Path(cmd[0]).name} ran past {timeout:g}s") from None
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith("BENCHJSON "):
            return json.loads(line[len("BENCHJSON "):])
    raise RuntimeError(f"{Path(cmd[0]).name} exited {proc.returncode}: "
                       f"{err.decode(errors='replace')[-800:]}")


# -- wrk --------------------------------------------------------------------------------------

WRK_LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local codes = 0
response = function(status, headers, body)
  if status ~= 200 then codes = codes + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p99_us":%d}}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50),
    latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Load:
    """One closed-loop load measurement."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    #: CPU the server under test spent per request (all its threads), ms.
    cpu_ms: float = float("nan")

    def row(self) -> str:
        return (f"{self.rps:,.0f} req/s, p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"
                + (f", server CPU {self.cpu_ms:.2f} ms/req" if self.cpu_ms == self.cpu_ms
                   else "") + (f", {self.errors} errors" if self.errors else ""))


def wrk(url: str, body: dict[str, Any], conns: int, seconds: float, tmp: Path,
        server: int | None = None, key: str = "sk-bench") -> Load:
    script = tmp / "post.lua"
    script.write_text(WRK_LUA.format(body=json.dumps(json.dumps(body, separators=(",", ":"))),
                                     key=key))
    cpu = cpu_seconds(server) if server else 0.0
    data = run_json([WRK, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout",
                     "10s", "-s", str(script), url], timeout=seconds + 30)
    cpu_ms = (cpu_seconds(server) - cpu) * 1e3 / max(data["requests"], 1) if server else cpu
    seconds_run = data["duration_us"] / 1e6
    return Load(data["requests"] / seconds_run, data["p50_us"] / 1000, data["p99_us"] / 1000,
                data["socket_errors"] + data["non2xx"], cpu_ms if server else float("nan"))


def client(ops: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = run_json(
        [PYTHON, str(Path(__file__).with_name("_completion_load.py")), json.dumps(ops)], timeout)
    return result


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Report:
    """Figures, in the order they were measured, and the targets."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    checks: list[tuple[str, str, bool | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, value: str) -> None:
        self.rows.append((what, value))
        print(f"  {what}: {value}", flush=True)

    def check(self, what: str, value: str, ok: bool | None) -> None:
        self.checks.append((what, value, ok))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def markdown(self) -> str:
        lines = ["| figure | value |", "| --- | --- |"]
        lines += [f"| {w} | {v} |" for w, v in self.rows]
        lines += ["", "| target | measured | result |", "| --- | --- | --- |"]
        lines += [f"| {w} | {v} | {'n/a' if ok is None else 'PASS' if ok else 'FAIL'} |"
                  for w, v, ok in self.checks]
        return "\n".join(lines)


def _added(through: float, direct: float) -> str:
    return f"{through - direct:.3f} ms ({through:.3f} - {direct:.3f})"


@contextlib.contextmanager
def _section(title: str) -> Iterator[None]:
    print(f"\n== {title}", flush=True)
    started = time.monotonic()
    yield
    print(f"   ({time.monotonic() - started:.1f}s)", flush=True)


def start_mesh(procs: Procs, tmp: Path, config: Path,
               workers: int = 1) -> tuple[subprocess.Popen[bytes], int, int]:
    extra = ["--workers", str(workers)] if workers != 1 else []
    proc = procs.start([SCILLM, "serve", "--grpc-port", "0", "--http-port", "0", "--config",
                        str(config), "--service", "completion", *extra], tmp / "mesh.log",
                       env={"OTEL_SDK_DISABLED": "true"}, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    found: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if line.startswith("scillm: gRPC on") and not ready.is_set():
                found.append(line)
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(60) or not found:
        raise RuntimeError(f"the mesh did not start; see {tmp / 'mesh.log'}: "
                           + (tmp / "mesh.log").read_text()[-800:])
    line = found[0]
    grpc_port = int(line.split("gRPC on ")[1].split(",")[0].rsplit(":", 1)[1])
    http_port = int(line.split("HTTP on http://")[1].split()[0].rsplit(":", 1)[1])
    return proc, grpc_port, http_port


def start_litellm(procs: Procs, tmp: Path, config: Path, install: bool,
                  key: str) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    exe = LITELLM_HOME / "bin" / "litellm"
    if not exe.exists():
        if not install:
            return None, 0, f"LiteLLM proxy not installed at {LITELLM_HOME}"
        print(f"  installing litellm[proxy] into {LITELLM_HOME} (once)...", flush=True)
        try:
            subprocess.run([PYTHON, "-m", "venv", str(LITELLM_HOME)], check=True,
                           capture_output=True, timeout=120)
            subprocess.run([str(LITELLM_HOME / "bin" / "pip"), "install", "-q",
                            "litellm[proxy]"], check=True, capture_output=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as exc:
            return None, 0, f"LiteLLM proxy could not be installed: {exc}"
    port = free_port()
    env = {"LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True",
           "DISABLE_ADMIN_UI": "True"}
    proc = procs.start([str(exe), "--config", str(config), "--host", "127.0.0.1", "--port",
                        str(port), "--num_workers", "1"], tmp / "litellm.log", env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if http_get_ok(port, "/health/liveliness"):
            return proc, port, ""
        time.sleep(0.25)
    log = (tmp / "litellm.log").read_text(errors="replace")[-600:]
    Procs.stop(proc)
    return None, 0, f"LiteLLM proxy did not start: {log}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short measurements (~1 min)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument("--install-litellm", action="store_true",
                        help=f"install litellm[proxy] into {LITELLM_HOME} when missing")
    parser.add_argument("--streams", type=int, default=512, help="concurrent streams")
    args = parser.parse_args()
    for tool in (NGINX, WRK):
        if not Path(tool).exists():
            print(f"completion bench: {tool} is missing (apt-get install nginx-light wrk)")
            return 2

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    secs = 2.0 if args.quick else 5.0
    procs = Procs()
    report = Report()
    tmp = Path(tempfile.mkdtemp(prefix="scillm-bench-"))
    print(f"completion bench ({'quick' if args.quick else 'full'}), "
          f"{os.cpu_count()} CPUs, logs in {tmp}", flush=True)
    try:
        return run(args, secs, procs, report, tmp)
    finally:
        procs.stop_all()
        if not os.environ.get("SCILLM_BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, secs: float, procs: Procs, report: Report, tmp: Path) -> int:
    up = free_port()
    (tmp / "nginx.conf").write_text(nginx_conf(tmp, up, "1500"))
    nginx = procs.start([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
                        tmp / "nginx.out")
    wait_port(up, nginx, 10)
    config = tmp / "models.yaml"
    config.write_text(model_config(up))
    mesh_config = tmp / "mesh-models.yaml"
    mesh_config.write_text(model_config(up, echo=True))
    direct_url = f"http://127.0.0.1:{up}/v1/chat/completions"

    with _section("upstream: nginx direct"):
        nginx_c1 = wrk(direct_url, CHAT, 1, secs, tmp, nginx.pid)
        report.add("nginx direct, c=1 (wrk)", nginx_c1.row())
        nginx_c64 = wrk(direct_url, CHAT, 64, secs, tmp, nginx.pid)
        report.add("nginx direct, c=64 (wrk)", nginx_c64.row())
        base = client([
            {"op": "http_latency", "port": up, "path": "/v1/chat/completions", "body": CHAT,
             "duration": secs / 2},
            {"op": "http_latency", "port": up, "path": "/stream/v1/chat/completions",
             "body": STREAM, "duration": secs / 2}], timeout=secs + 30)
        py_direct, py_stream = base
        report.add("nginx direct, c=1 (asyncio client)",
                   f"p50 {py_direct['p50_ms']:.3f} ms, p99 {py_direct['p99_ms']:.3f} ms")
        report.add("nginx direct stream, first byte (asyncio client)",
                   f"p50 {py_stream['ttfb_p50_ms']:.3f} ms")

    with _section("mesh: scillm serve --service completion"):
        mesh, grpc_port, http_port = start_mesh(procs, tmp, mesh_config)
        target = f"127.0.0.1:{grpc_port}"
        mesh_url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
        wrk(mesh_url, CHAT, 16, 1, tmp)  # warm-up: connections, pools, code paths
        mesh_http = {c: wrk(mesh_url, CHAT, c, secs, tmp, mesh.pid) for c in (1, 16, 64)}
        for c, load in mesh_http.items():
            report.add(f"mesh HTTP, c={c} (wrk)", load.row())
        grpc_res = client([{"op": "grpc_load", "target": target, "body": CHAT,
                            "concurrency": c, "duration": secs, "server": mesh.pid}
                           for c in (1, 16, 64)]
                          + [{"op": "grpc_health", "target": target, "duration": secs / 2}],
                          timeout=4 * secs + 60)
        health = grpc_res.pop()
        if "error" not in health:
            report.add("mesh gRPC Health/Check, c=1 (gRPC's own round trip, no work)",
                       f"p50 {health['p50_ms']:.3f} ms, p99 {health['p99_ms']:.3f} ms")
        mesh_grpc: dict[int, Load] = {}
        for c, res in zip((1, 16, 64), grpc_res, strict=True):
            if "error" in res:
                report.add(f"mesh gRPC, c={c}", f"failed: {res['error']}")
                continue
            mesh_grpc[c] = Load(res["rps"], res["p50_ms"], res["p99_ms"], res["errors"],
                                res["cpu_ms"])
            report.add(f"mesh gRPC, c={c} (asyncio client)", mesh_grpc[c].row()
                       + (f" {res['error_sample']}" if res["errors"] else ""))
        echo_http = wrk(mesh_url, ECHO, 64, secs / 2, tmp, mesh.pid)
        report.add("mesh HTTP, c=64, echo provider (no upstream client)", echo_http.row())
        echo_grpc = client([{"op": "grpc_load", "target": target, "body": ECHO,
                             "concurrency": 64, "duration": secs / 2, "server": mesh.pid}],
                           timeout=secs + 60)[0]
        if "error" not in echo_grpc:
            report.add("mesh gRPC, c=64, echo provider (no upstream client)",
                       Load(echo_grpc["rps"], echo_grpc["p50_ms"], echo_grpc["p99_ms"],
                            echo_grpc["errors"], echo_grpc["cpu_ms"]).row())
        ttfb = client([
            {"op": "http_latency", "port": http_port, "path": "/v1/chat/completions",
             "body": STREAM, "duration": secs / 2},
            {"op": "grpc_ttfb", "target": target, "body": STREAM, "duration": secs / 2}],
            timeout=secs + 60)
        report.add("mesh HTTP stream, first byte",
                   f"p50 {ttfb[0].get('ttfb_p50_ms', float('nan')):.3f} ms, "
                   f"p99 {ttfb[0].get('ttfb_p99_ms', float('nan')):.3f} ms "
                   f"(direct {py_stream['ttfb_p50_ms']:.3f} ms)")
        report.add("mesh gRPC stream, first event",
                   f"p50 {ttfb[1].get('ttfb_p50_ms', float('nan')):.3f} ms, "
                   f"p99 {ttfb[1].get('ttfb_p99_ms', float('nan')):.3f} ms")
        stall = 20.0 if args.quick else 40.0
        streams = client([
            {"op": "grpc_streams", "target": target, "body": SLOW, "n": args.streams,
             "stall_s": stall},
            {"op": "http_streams", "port": http_port, "path": "/v1/chat/completions",
             "body": SLOW, "n": args.streams, "stall_s": stall}], timeout=2 * stall + 60)
        streams_ok = True
        for door, res in zip(("gRPC", "HTTP"), streams, strict=True):
            if "error" in res:
                report.add(f"{args.streams} concurrent streams via {door}",
                           f"failed: {res['error']}")
                streams_ok = False
                continue
            ok = res["completed"] == res["started"]
            streams_ok = streams_ok and ok
            report.add(f"{args.streams} concurrent slow streams via {door}",
                       f"{res['completed']}/{res['started']} completed, {res['failed']} failed,"
                       f" {res['stalled']} stalled (> {stall:g}s); wall {res['wall_s']:.2f} s, "
                       f"first byte p50 {res['ttfb_p50_ms']:.0f} ms, max "
                       f"{res['ttfb_max_ms']:.0f} ms" + (f" {res['errors']}"
                                                         if res["errors"] else ""))
        mesh_rss = peak_rss_mb(mesh.pid)
        report.add("mesh peak RSS (VmHWM, with children)", f"{mesh_rss:.1f} MB")
        Procs.stop(mesh)

    added_http = mesh_http[1].p50_ms - nginx_c1.p50_ms
    report.add("added p50 at c=1, HTTP (mesh wrk - nginx wrk)",
               _added(mesh_http[1].p50_ms, nginx_c1.p50_ms))
    added_grpc = float("nan")
    if 1 in mesh_grpc:
        added_grpc = mesh_grpc[1].p50_ms - py_direct["p50_ms"]
        report.add("added p50 at c=1, gRPC (mesh gRPC client - nginx asyncio client)",
                   _added(mesh_grpc[1].p50_ms, py_direct["p50_ms"]))
    report.check("added p50 at c=1 via gRPC <= 1 ms", f"{added_grpc:.3f} ms",
                 added_grpc <= 1.0)
    report.check("added p50 at c=1 via HTTP <= 2 ms", f"{added_http:.3f} ms", added_http <= 2.0)
    report.check(">= 1,500 non-streaming req/s at c=64 via HTTP",
                 f"{mesh_http[64].rps:,.0f} req/s", mesh_http[64].rps >= 1500)
    report.check(f"{args.streams} concurrent streams complete (gRPC and HTTP)",
                 "; ".join(f"{d}: {r.get('completed', 0)}/{args.streams}"
                           for d, r in zip(("gRPC", "HTTP"), streams, strict=True)), streams_ok)
    report.check("mesh peak RSS <= 150 MB", f"{mesh_rss:.1f} MB", mesh_rss <= 150)

    if args.no_litellm:
        report.note("LiteLLM proxy skipped (--no-litellm)")
    else:
        with _section("LiteLLM proxy (litellm --num_workers 1)"):
            key = "sk-" + secrets.token_hex(24)  # LiteLLM refuses to start without one
            proxy, port, why = start_litellm(procs, tmp, config, args.install_litellm, key)
            if proxy is None:
                report.note(why)
            else:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                wrk(url, CHAT, 16, 1, tmp, key=key)
                lite = {c: wrk(url, CHAT, c, secs, tmp, proxy.pid, key) for c in (1, 16, 64)}
                for c, load in lite.items():
                    report.add(f"LiteLLM HTTP, c={c} (wrk)", load.row())
                lite_rss = peak_rss_mb(proxy.pid)
                report.add("LiteLLM peak RSS (VmHWM, with children)", f"{lite_rss:.1f} MB")
                Procs.stop(proxy)
                lite_added = lite[1].p50_ms - nginx_c1.p50_ms
                report.add("LiteLLM added p50 at c=1, HTTP",
                           _added(lite[1].p50_ms, nginx_c1.p50_ms))
                for c in (1, 16, 64):
                    ratio = mesh_http[c].rps / lite[c].rps if lite[c].rps else float("inf")
                    report.check(f"req/s vs LiteLLM at c={c} (HTTP, mesh/LiteLLM)",
                                 f"{ratio:.2f}x ({mesh_http[c].rps:,.0f} vs {lite[c].rps:,.0f})",
                                 None)
                report.check("added p50 at c=1 vs LiteLLM (HTTP, LiteLLM/mesh)",
                             f"{lite_added / added_http:.1f}x ({lite_added:.2f} vs "
                             f"{added_http:.2f} ms)" if added_http > 0 else "n/a", None)
                report.check("peak RSS vs LiteLLM (mesh/LiteLLM)",
                             f"{mesh_rss / lite_rss:.2f}x ({mesh_rss:.0f} vs {lite_rss:.0f} MB)",
                             None)

    print(f"\n== results ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs)\n")
    print(report.markdown())
    for text in report.notes:
        print(f"\nnote: {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
