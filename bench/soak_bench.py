"""Soak bench: minutes of mixed load on one mesh, with upstream faults injected.

Run: ``.venv/bin/python bench/soak_bench.py [--minutes 10] [--quick]`` (--quick = 1 minute).

Three processes, each in its own process group, all on 127.0.0.1, all killed on exit:

1. `_soak_upstream.py`: an OpenAI-compatible upstream (asyncio) that echoes the last user
   message, as JSON or as an SSE stream, and by a fixed schedule answers a few % of
   requests with 429 (`Retry-After: 1`), 500, a connection dropped midway, or a 1.5 s
   first byte;
2. the mesh, `scillm serve` with all four services, whose model `soak` is that upstream
   (`openai/`, `num_retries: 2`, fallback to `echo/fallback`, which gives the same
   answer; cache off);
3. `_soak_load.py`: open-loop load at fixed rates (RATES, about 120 requests/s in all):
   unary and streamed completions through both doors (raw HTTP/1.1 and `ScillmClient`),
   Prove batches of two SMT obligations with known verdicts, CodeWorld runs of a strategy
   with a known result. Every request carries a unique nonce; every reply is classified as
   ok, expected error (typed), lost or garbled (see `_soak_load.py`).

Meanwhile the mesh's RSS (VmRSS summed over its process tree, from /proc) is sampled every
10 s. Growth is the mean over the last window vs the mean over the window after warm-up
(minute 2 vs the last minute for a 10-minute run). Targets: lost = 0, garbled = 0,
RSS growth < 10 %. Prints a Markdown summary with PASS/FAIL; a measurement, not a test:
exits 0 unless something could not be measured or a request was lost or garbled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from _completion_load import tree_pids
from _completion_parts import Procs

PYTHON = sys.executable
SCILLM = str(Path(PYTHON).with_name("scillm"))
HERE = Path(__file__).resolve().parent
#: requests started per second, by kind (open loop)
RATES = {"http_unary": 40.0, "grpc_unary": 40.0, "http_stream": 15.0, "grpc_stream": 15.0,
         "prove": 3.0, "codeworld": 2.0}
KINDS = list(RATES)
OUTCOMES = ("ok", "expected_error", "lost", "garbled")


def mesh_config(upstream: int) -> str:
    return f"""model_list:
  - model_name: soak
    litellm_params:
      model: openai/soak
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: sk-soak
      timeout: 10
  - model_name: echo/fallback
    litellm_params:
      model: echo/fallback
router_settings:
  num_retries: 2
  fallbacks: [{{soak: [echo/fallback]}}]
litellm_settings:
  cache: false
"""


def rss_kb(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def read_lines(proc: subprocess.Popen[bytes], into: list[str], ready: threading.Event,
               marker: str) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\n")
        into.append(line)
        if line.startswith(marker):
            ready.set()
    ready.set()


def start_reading(procs: Procs, cmd: list[str], log: Path, marker: str, timeout: float,
                  env: dict[str, str] | None = None,
                  ) -> tuple[subprocess.Popen[bytes], list[str]]:
    proc = procs.start(cmd, log, env=env, stdout=subprocess.PIPE)
    lines: list[str] = []
    ready = threading.Event()
    threading.Thread(target=read_lines, args=(proc, lines, ready, marker), daemon=True).start()
    if not ready.wait(timeout) or not any(line.startswith(marker) for line in lines):
        raise RuntimeError(f"{cmd[1]} did not start; see {log}: " + log.read_text()[-800:])
    return proc, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="1 minute")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period")
    args = parser.parse_args()
    minutes = 1.0 if args.quick else args.minutes
    procs = Procs()

    def terminate(signum: int, frame: Any) -> None:
        procs.stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    tmp = Path(tempfile.mkdtemp(prefix="scillm-soak-"))
    print(f"soak: {minutes:g} min, temp dir {tmp}", flush=True)
    try:
        return run(minutes * 60, args.sample_s, procs, tmp)
    finally:
        procs.stop_all()


def run(duration: float, sample_s: float, procs: Procs, tmp: Path) -> int:
    upstream, up_lines = start_reading(
        procs, [PYTHON, str(HERE / "_soak_upstream.py")], tmp / "upstream.log", "PORT ", 30)
    up_port = int(next(x for x in up_lines if x.startswith("PORT ")).split()[1])
    config = tmp / "models.yaml"
    config.write_text(mesh_config(up_port))
    mesh, mesh_lines = start_reading(
        procs, [SCILLM, "serve", "--config", str(config), "--grpc-port", "0",
                "--http-port", "0"], tmp / "mesh.log", "scillm: gRPC on", 120,
        env={"OTEL_SDK_DISABLED": "true", "SCILLM_STORE_PATH": str(tmp / "runs.sqlite3")})
    line = next(x for x in mesh_lines if x.startswith("scillm: gRPC on"))
    grpc_port = int(line.split("gRPC on ")[1].split(",")[0].rsplit(":", 1)[1])
    http_port = int(line.split("HTTP on http://")[1].split()[0].rsplit(":", 1)[1])
    print(f"upstream :{up_port}, mesh gRPC :{grpc_port} HTTP :{http_port} (pid {mesh.pid})",
          flush=True)
    time.sleep(3)  # the services' engines warm up (prover pools, sandbox)

    op = {"http": http_port, "grpc": f"127.0.0.1:{grpc_port}", "duration": duration,
          "rates": RATES}
    load, load_lines = start_reading(procs, [PYTHON, str(HERE / "_soak_load.py"),
                                             json.dumps(op)], tmp / "load.log", "STARTED", 30)
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    samples.append((0.0, rss_kb(mesh.pid)))
    print(f"  t=   0s  RSS {samples[-1][1] / 1024:7.1f} MB", flush=True)
    shown = 0
    while load.poll() is None and time.monotonic() - t0 < duration + 120:
        time.sleep(max(0.0, t0 + len(samples) * sample_s - time.monotonic()))
        t = time.monotonic() - t0
        if t <= duration + 1:
            samples.append((t, rss_kb(mesh.pid)))
            print(f"  t={t:4.0f}s  RSS {samples[-1][1] / 1024:7.1f} MB", flush=True)
        for progress in load_lines[shown:]:
            if progress.startswith("PROGRESS"):
                print("  " + progress, flush=True)
        shown = len(load_lines)
        if mesh.poll() is not None:
            print(f"!! the mesh exited with {mesh.returncode}", flush=True)
            break
    if load.poll() is None:
        Procs.stop(load)
        raise RuntimeError("the load generator did not finish in time")
    time.sleep(0.2)
    result_line = next((x for x in load_lines if x.startswith("SOAKJSON ")), None)
    if result_line is None:
        raise RuntimeError(f"no result from the load generator; see {tmp / 'load.log'}: "
                           + (tmp / "load.log").read_text()[-1500:])
    result = json.loads(result_line[len("SOAKJSON "):])
    cpu_mesh = _cpu_s(mesh.pid)
    metrics = scrape_metrics(http_port)
    Procs.stop(upstream)
    time.sleep(0.2)
    counts: dict[str, int] = next(
        (json.loads(x[7:]) for x in up_lines if x.startswith("COUNTS ")), {})
    mesh_log = (tmp / "mesh.log").read_text(errors="replace")
    code = report(duration, samples, result, counts, mesh_log, cpu_mesh, tmp)
    print("\nThe mesh's /metrics at the end: " + "; ".join(metrics))
    return code


def scrape_metrics(port: int) -> list[str]:
    """RPCs by method and code, and upstream retries, from the mesh's /metrics."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError as exc:
        return [f"unavailable ({exc})"]
    return [line for line in text.splitlines()
            if line.startswith(("scillm_rpc_requests_total", "scillm_retries_total"))]


def _cpu_s(pid: int) -> float:
    from _completion_load import cpu_seconds

    return cpu_seconds(pid)


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def report(duration: float, samples: list[tuple[float, int]], result: dict[str, Any],
           upstream_counts: dict[str, int], mesh_log: str, cpu_mesh: float, tmp: Path) -> int:
    """Print the summary; 1 when a request was lost or garbled, else 0."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for kind, outcome, n in result["outcomes"]:
        table[kind][outcome] += n
    lost_unfinished = int(result["unfinished"])
    totals = Counter[str]()
    for c in table.values():
        totals.update(c)
    totals["lost"] += lost_unfinished
    sent = sum(totals.values())

    warm = min(60.0, duration / 3)
    base = [kb for t, kb in samples if warm <= t < 2 * warm]
    last = [kb for t, kb in samples if t >= duration - warm]
    growth = (_mean(last) - _mean(base)) / _mean(base) * 100 if base and last else float("nan")

    print("\n## Soak summary\n")
    print(f"{duration / 60:g} min, {sent} requests ({sent / result['wall_s']:.0f}/s over "
          f"{result['wall_s']:.0f} s incl. drain); python {platform.python_version()}, "
          f"{os.cpu_count()} cores; mesh CPU {cpu_mesh:.0f} s "
          f"({cpu_mesh / result['wall_s'] * 100:.0f} % of one core)\n")
    print("| kind | sent | ok | expected error | lost | garbled | ok p50 / p99 / max (ms) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for kind in KINDS:
        c = table.get(kind, Counter())
        lat = result["latency_ms"].get(kind, {})
        print(f"| {kind} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES)
              + f" | {lat.get('p50', float('nan')):.1f} / {lat.get('p99', float('nan')):.1f}"
              f" / {lat.get('max', float('nan')):.0f} |")
    print(f"| **all** | {sent} | " + " | ".join(str(totals[o]) for o in OUTCOMES) + " | |")
    if lost_unfinished:
        print(f"\n{lost_unfinished} requests still unfinished after the drain: counted lost")
    if result["skipped"]:
        print(f"\nnot sent (load generator at its cap of requests in flight): {result['skipped']}")

    print("\nNon-ok outcomes by reason:\n")
    for kind, outcome, reason, n in result["reasons"][:25]:
        print(f"- {kind} / {outcome}: {reason} x{n}")
    for kind, lines in result["samples"].items():
        for line in lines:
            print(f"  sample {kind}: {line}")
    print("\nUpstream requests by injected fault (retries included): "
          + ", ".join(f"{k} {v}" for k, v in sorted(upstream_counts.items())))
    print("Per minute (by start time): " + "; ".join(
        f"m{int(m) + 1}: " + " ".join(f"{k} {v}" for k, v in sorted(c.items()))
        for m, c in result["per_minute"].items()))
    errors = sum(1 for line in mesh_log.splitlines() if " ERROR " in line or "Traceback" in line)
    print(f"Mesh log: {len(mesh_log.splitlines())} lines, {errors} ERROR/Traceback lines "
          f"({tmp / 'mesh.log'})")

    print("\nRSS of the mesh's process tree (VmRSS, MB):\n")
    print("| t (s) | " + " | ".join(f"{t:.0f}" for t, _ in samples) + " |")
    print("| --- |" + " ---: |" * len(samples))
    print("| RSS | " + " | ".join(f"{kb / 1024:.1f}" for _, kb in samples) + " |")
    print(f"\nwindow after warm-up [{warm:.0f}, {2 * warm:.0f}) s: mean "
          f"{_mean(base) / 1024:.1f} MB; last window "
          f"[{duration - warm:.0f}, {duration:.0f}] s: mean "
          f"{_mean(last) / 1024:.1f} MB; growth {growth:+.1f} %")

    print("\n| target | measured | result |\n| --- | --- | --- |")
    for what, value, ok in (("lost = 0", str(totals["lost"]), totals["lost"] == 0),
                            ("garbled = 0", str(totals["garbled"]), totals["garbled"] == 0),
                            ("RSS growth < 10 %", f"{growth:+.1f} %", growth < 10)):
        print(f"| {what} | {value} | {'PASS' if ok else 'FAIL'} |")
    return 1 if totals["lost"] or totals["garbled"] else 0


if __name__ == "__main__":
    sys.exit(main())
