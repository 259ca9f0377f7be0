"""The parts of completion_bench.py: the nginx upstream, the processes, wrk and the
asyncio load generator's driver, the mesh and the LiteLLM proxy started for a run.

Every process started here runs in its own process group (`Procs`) and is killed when
the run ends. Only loopback traffic.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
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


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    """`field_name` of /proc/PID/status (VmRSS now, VmHWM the peak) summed over the
    process and its children, MiB."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
    return total / 1024


def peak_rss_mib(pid: int) -> float:
    """VmHWM of the process and its children, MiB."""
    return rss_mib(pid, "VmHWM")


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


def start_upstream(procs: Procs, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    """nginx with the fixed answers (`nginx_conf`), on a free port."""
    port = free_port()
    (tmp / "nginx.conf").write_text(nginx_conf(tmp, port, "1500"))
    proc = procs.start([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
                       tmp / "nginx.out")
    wait_port(port, proc, 10)
    return proc, port


def start_grpc_floor(procs: Procs, tmp: Path,
                     kind: str) -> tuple[subprocess.Popen[bytes], int]:
    """A bare Health server (`_grpc_floor.py`) on gRPC server `kind` (grpcio, native):
    the process and its port."""
    proc = procs.start([PYTHON, str(Path(__file__).with_name("_grpc_floor.py")), kind],
                       tmp / f"grpc-floor-{kind}.log", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.isdigit():
        raise RuntimeError(f"the bare gRPC server did not start: {line!r}; see "
                           f"{tmp / f'grpc-floor-{kind}.log'}")
    return proc, int(line)


def start_mesh(procs: Procs, tmp: Path, config: Path, workers: int = 1,
               env: dict[str, str] | None = None,
               ) -> tuple[subprocess.Popen[bytes], int, int]:
    """`scillm serve --service completion` (with `--workers` when not 1) on free ports:
    the process, its gRPC port and its HTTP port. `env` is added to the environment (a
    PYTHONPATH running another commit's code, for before/after pairs)."""
    extra = ["--workers", str(workers)] if workers != 1 else []
    proc = procs.start([SCILLM, "serve", "--grpc-port", "0", "--http-port", "0", "--config",
                        str(config), "--service", "completion", *extra], tmp / "mesh.log",
                       env={"OTEL_SDK_DISABLED": "true", **(env or {})},
                       stdout=subprocess.PIPE)
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
    if not ready.wait(120) or not found:
        raise RuntimeError(f"the mesh did not start; see {tmp / 'mesh.log'}: "
                           + (tmp / "mesh.log").read_text()[-800:])
    line = found[0]
    grpc_port = int(line.split("gRPC on ")[1].split(",")[0].rsplit(":", 1)[1])
    http_port = int(line.split("HTTP on http://")[1].split()[0].rsplit(":", 1)[1])
    return proc, grpc_port, http_port


#: The LiteLLM proxy the bench compares with, installed into its own venv.
LITELLM_VERSION = "1.108.7"


def install_litellm() -> str:
    """`litellm[proxy]==LITELLM_VERSION` in LITELLM_HOME (once); "" or why it failed."""
    marker = LITELLM_HOME / ".scillm-bench-version"
    if (LITELLM_HOME / "bin" / "litellm").exists() and marker.exists() \
            and marker.read_text().strip() == LITELLM_VERSION:
        return ""
    print(f"  installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_HOME} (once)...",
          flush=True)
    try:
        if not (LITELLM_HOME / "bin" / "pip").exists():
            subprocess.run([PYTHON, "-m", "venv", str(LITELLM_HOME)], check=True,
                           capture_output=True, timeout=120)
        subprocess.run([str(LITELLM_HOME / "bin" / "pip"), "install", "-q",
                        f"litellm[proxy]=={LITELLM_VERSION}"], check=True,
                       capture_output=True, timeout=1800)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return (f"LiteLLM proxy could not be installed: {exc} "
                f"{detail.decode(errors='replace')[-300:]}")
    marker.write_text(LITELLM_VERSION + "\n")
    return ""


def start_litellm(procs: Procs, tmp: Path, config: Path,
                  key: str) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    """LiteLLM's proxy, one worker, on `config`: the process and its port, or why not."""
    why = install_litellm()
    if why:
        return None, 0, why
    port = free_port()
    env = {"LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True",
           "DISABLE_ADMIN_UI": "True"}
    proc = procs.start([str(LITELLM_HOME / "bin" / "litellm"), "--config", str(config),
                        "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                       tmp / "litellm.log", env=env)
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
