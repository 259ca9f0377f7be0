"""Completion bench: the mesh's cost per request over a fast local upstream, beside nginx
(the limit) and LiteLLM's proxy (one worker), all in one run.

Run: ``.venv/bin/python bench/completion_bench.py [--quick] [--no-litellm] [--workers 2]
[--streams 2000] [--baseline REF [--pairs 3]]``.

nginx (worker_processes 1) plays the upstream and answers a fixed `chat.completion`
(model `bench`), a fixed SSE stream (`bench-stream`) and the same stream dribbled out by
`limit_rate` (`bench-slow`, for the concurrent streams). In turn, in front of it: the mesh
in one process (`scillm serve --service completion`), the mesh with `--workers N`, and
LiteLLM's proxy with `--num_workers 1` (installed, pinned, into its own venv on first
use). HTTP load comes from wrk (one thread, closed loop); gRPC load, first-byte times and
the concurrent streams from an asyncio client in a separate process (`_completion_load.py`).
Bare Health servers (`_grpc_floor.py`) on pygrpc-native's server (the mesh's default) and
on grpcio's, under the same client, give each server's own CPU per unary call, the floor
under the gRPC door; the mesh on grpcio's server (`SCILLM_GRPC_SERVER=grpcio`) is measured
beside it.
"CPU" is the user+system time of the server's process tree (all threads, workers
included) over a load, from /proc, per request served. With `--baseline REF` the mesh as
at commit REF and as checked out are measured in alternating pairs.

Prints every figure, the issue-16 summary table, the targets (PASS/FAIL) and the ratios to
LiteLLM and to nginx, as Markdown. This is a measurement, not a test: it exits 0 unless
something could not be measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _baseline import export_tree
from _completion_parts import (
    CHAT,
    ECHO,
    LITELLM_VERSION,
    NGINX,
    SLOW,
    STREAM,
    WRK,
    Load,
    Procs,
    client,
    model_config,
    peak_rss_mib,
    rss_mib,
    start_grpc_floor,
    start_litellm,
    start_mesh,
    start_upstream,
    wrk,
)

CONCURRENCY = (1, 16, 64)


@dataclass
class Report:
    """Figures in the order they were measured, the summary table, and the targets."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    table: list[tuple[str, ...]] = field(default_factory=list)
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
        head = ("| server | RPS c=1 / 16 / 64 | added p50 c=1 | stream TTFB added c=1 | "
                "RSS idle / peak | CPU µs/req HTTP c=1 / 16 / 64 | CPU µs/req gRPC c=1 / 16 / 64 |")
        lines = [head, "| --- " * 7 + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.table]
        lines += ["", "| figure | value |", "| --- | --- |"]
        lines += [f"| {w} | {v} |" for w, v in self.rows]
        lines += ["", "| target | measured | result |", "| --- | --- | --- |"]
        lines += [f"| {w} | {v} | {'n/a' if ok is None else 'PASS' if ok else 'FAIL'} |"
                  for w, v, ok in self.checks]
        return "\n".join(lines)


@dataclass
class Server:
    """What one server measured, for the summary table."""

    name: str
    http: dict[int, Load] = field(default_factory=dict)
    grpc: dict[int, Load] = field(default_factory=dict)
    ttfb_ms: float = float("nan")
    rss_idle: float = float("nan")
    rss_peak: float = float("nan")

    def row(self, direct: Server, direct_ttfb: float) -> tuple[str, ...]:
        def nums(loads: dict[int, Load], what: str) -> str:
            if not loads:
                return "—"
            values = [getattr(loads[c], what) if c in loads else float("nan")
                      for c in CONCURRENCY]
            scale = 1000 if what == "cpu_ms" else 1
            return " / ".join(_n(v * scale) for v in values)

        added = (f"{self.http[1].p50_ms - direct.http[1].p50_ms:.3f} ms"
                 if self is not direct and 1 in self.http and 1 in direct.http else "—")
        ttfb = (f"{self.ttfb_ms - direct_ttfb:.3f} ms" if self.ttfb_ms == self.ttfb_ms
                and self is not direct else "—")
        rss = f"{_n(self.rss_idle)} / {_n(self.rss_peak)} MiB"
        return (self.name, nums(self.http, "rps"), added, ttfb, rss, nums(self.http, "cpu_ms"),
                nums(self.grpc, "cpu_ms"))


def _n(value: float) -> str:
    return "—" if value != value else f"{value:,.0f}"


@contextlib.contextmanager
def _section(title: str) -> Iterator[None]:
    print(f"\n== {title}", flush=True)
    started = time.monotonic()
    yield
    print(f"   ({time.monotonic() - started:.1f}s)", flush=True)


def _grpc_loads(target: str, body: dict[str, Any], pid: int, secs: float,
                levels: tuple[int, ...] = CONCURRENCY) -> dict[int, Load | str]:
    results = client([{"op": "grpc_load", "target": target, "body": body, "concurrency": c,
                       "duration": secs, "server": pid} for c in levels],
                     timeout=len(levels) * secs + 90)
    out: dict[int, Load | str] = {}
    for c, res in zip(levels, results, strict=True):
        out[c] = (res["error"] if "error" in res else
                  Load(res["rps"], res["p50_ms"], res["p99_ms"], res["errors"], res["cpu_ms"]))
    return out


def _store_grpc(report: Report, server: Server, label: str,
                loads: dict[int, Load | str]) -> None:
    for c, load in loads.items():
        if isinstance(load, str):
            report.add(f"{label} gRPC, c={c}", f"failed: {load}")
        else:
            server.grpc[c] = load
            report.add(f"{label} gRPC, c={c} (asyncio client)", load.row())


def _grpc_floor(report: Report, procs: Procs, tmp: Path, secs: float, kind: str) -> float:
    """Server CPU per Health/Check of a bare gRPC server (`kind`: native, grpcio) at c=16
    and c=64: what the server costs per unary call with no work and no interceptors.
    Returns the c=64 figure (µs)."""
    server, port = start_grpc_floor(procs, tmp, kind)
    try:
        target = f"127.0.0.1:{port}"
        loads = client([{"op": "grpc_health", "target": target, "duration": secs,
                         "concurrency": c, "server": server.pid} for c in (16, 64)],
                       timeout=2 * secs + 60)
    finally:
        Procs.stop(server)
    figures = {c: load["cpu_ms"] * 1000 if "error" not in load else float("nan")
               for c, load in zip((16, 64), loads, strict=True)}
    report.add(f"bare {kind} gRPC server, Health/Check, server CPU per call (its own floor)",
               f"c=16 {figures[16]:.0f} µs, c=64 {figures[64]:.0f} µs")
    return figures[64]


def _streams(report: Report, label: str, grpc_target: str, http_port: int, n: int,
             stall: float) -> bool:
    results = client([
        {"op": "grpc_streams", "target": grpc_target, "body": SLOW, "n": n, "stall_s": stall},
        {"op": "http_streams", "port": http_port, "path": "/v1/chat/completions",
         "body": SLOW, "n": n, "stall_s": stall}], timeout=2 * stall + 120)
    ok = True
    for door, res in zip(("gRPC", "HTTP"), results, strict=True):
        if "error" in res:
            report.add(f"{label}: {n} concurrent streams via {door}", f"failed: {res['error']}")
            ok = False
            continue
        ok = ok and res["completed"] == res["started"]
        report.add(f"{label}: {n} concurrent slow streams via {door}",
                   f"{res['completed']}/{res['started']} completed, {res['failed']} failed, "
                   f"{res['stalled']} stalled (> {stall:g}s); wall {res['wall_s']:.2f} s, "
                   f"first byte p50 {res['ttfb_p50_ms']:.0f} ms, max {res['ttfb_max_ms']:.0f} ms"
                   + (f" {res['errors']}" if res["errors"] else ""))
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short measurements")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument("--workers", type=int, default=2,
                        help="workers of the multi-process mesh (0: skip it; default 2)")
    parser.add_argument("--streams", type=int, default=2000, help="concurrent streams")
    parser.add_argument("--baseline", metavar="REF",
                        help="also measure the mesh at commit REF beside this checkout, in "
                             "alternating pairs (CPU per request, HTTP and gRPC)")
    parser.add_argument("--pairs", type=int, default=3, help="before/after pairs (3)")
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
    print(f"completion bench ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, logs in {tmp}", flush=True)
    try:
        return run(args, secs, procs, report, tmp)
    finally:
        procs.stop_all()
        if not os.environ.get("SCILLM_BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, secs: float, procs: Procs, report: Report, tmp: Path) -> int:
    nginx, up = start_upstream(procs, tmp)
    config = tmp / "models.yaml"
    config.write_text(model_config(up))
    mesh_config = tmp / "mesh-models.yaml"
    mesh_config.write_text(model_config(up, echo=True))
    path = "/v1/chat/completions"
    direct = Server("nginx direct (the limit)")

    with _section("upstream: nginx direct"):
        for c in CONCURRENCY:
            direct.http[c] = wrk(f"http://127.0.0.1:{up}{path}", CHAT, c, secs, tmp, nginx.pid)
            report.add(f"nginx direct, c={c} (wrk)", direct.http[c].row())
        base = client([
            {"op": "http_latency", "port": up, "path": path, "body": CHAT, "duration": secs / 2},
            {"op": "http_latency", "port": up, "path": "/stream" + path, "body": STREAM,
             "duration": secs / 2}], timeout=secs + 30)
        py_direct, py_stream = base
        direct_ttfb = py_stream["ttfb_p50_ms"]
        report.add("nginx direct, c=1 (asyncio client)",
                   f"p50 {py_direct['p50_ms']:.3f} ms, p99 {py_direct['p99_ms']:.3f} ms")
        report.add("nginx direct stream, first byte (asyncio client)",
                   f"p50 {direct_ttfb:.3f} ms")
        direct.rss_peak = peak_rss_mib(nginx.pid)

    one = Server("SciLLM (one process)")
    with _section("mesh: scillm serve --service completion"):
        mesh, grpc_port, http_port = start_mesh(procs, tmp, mesh_config)
        time.sleep(1.0)  # settled after start-up
        one.rss_idle = rss_mib(mesh.pid)
        report.add("mesh idle RSS (VmRSS after start-up, with children)",
                   f"{one.rss_idle:.1f} MiB")
        target = f"127.0.0.1:{grpc_port}"
        url = f"http://127.0.0.1:{http_port}{path}"
        wrk(url, CHAT, 16, 1, tmp)  # warm-up: connections, pools, code paths
        for c in CONCURRENCY:
            one.http[c] = wrk(url, CHAT, c, secs, tmp, mesh.pid)
            report.add(f"mesh HTTP, c={c} (wrk)", one.http[c].row())
        _store_grpc(report, one, "mesh", _grpc_loads(target, CHAT, mesh.pid, secs))
        health = client([{"op": "grpc_health", "target": target, "duration": secs / 2},
                         {"op": "grpc_health", "target": target, "duration": secs / 2,
                          "concurrency": 16, "server": mesh.pid}], timeout=secs + 60)
        if "error" not in health[0] and "error" not in health[1]:
            report.add("mesh gRPC Health/Check (gRPC's own cost: no work)",
                       f"c=1 p50 {health[0]['p50_ms']:.3f} ms; c=16 server CPU "
                       f"{health[1]['cpu_ms'] * 1000:.0f} µs/call")
        echo_http = wrk(url, ECHO, 64, secs / 2, tmp, mesh.pid)
        report.add("mesh HTTP, c=64, echo provider (no upstream client)", echo_http.row())
        echo_grpc = _grpc_loads(target, ECHO, mesh.pid, secs / 2, (64,))[64]
        report.add("mesh gRPC, c=64, echo provider (no upstream client)",
                   echo_grpc if isinstance(echo_grpc, str) else echo_grpc.row())
        ttfb = client([
            {"op": "http_latency", "port": http_port, "path": path, "body": STREAM,
             "duration": secs / 2},
            {"op": "grpc_ttfb", "target": target, "body": STREAM, "duration": secs / 2}],
            timeout=secs + 60)
        one.ttfb_ms = ttfb[0].get("ttfb_p50_ms", float("nan"))
        report.add("mesh HTTP stream, first byte",
                   f"p50 {one.ttfb_ms:.3f} ms, p99 {ttfb[0].get('ttfb_p99_ms', float('nan')):.3f}"
                   f" ms (direct {direct_ttfb:.3f} ms)")
        report.add("mesh gRPC stream, first event",
                   f"p50 {ttfb[1].get('ttfb_p50_ms', float('nan')):.3f} ms, "
                   f"p99 {ttfb[1].get('ttfb_p99_ms', float('nan')):.3f} ms")
        stall = 20.0 if args.quick else 40.0
        streams_ok = _streams(report, "mesh", target, http_port, args.streams, stall)
        one.rss_peak = peak_rss_mib(mesh.pid)
        report.add("mesh peak RSS (VmHWM, with children)", f"{one.rss_peak:.1f} MiB")
        Procs.stop(mesh)

    with _section("gRPC servers alone: bare Health servers (no mesh), the gRPC door's floor"):
        floor_us = {kind: _grpc_floor(report, procs, tmp, secs, kind)
                    for kind in ("native", "grpcio")}
    with _section("mesh on grpcio's gRPC server (SCILLM_GRPC_SERVER=grpcio), for comparison"):
        mesh, grpc_port, _ = start_mesh(procs, tmp, mesh_config,
                                        env={"SCILLM_GRPC_SERVER": "grpcio"})
        on_grpcio = _grpc_loads(f"127.0.0.1:{grpc_port}", CHAT, mesh.pid, secs, (1, 64))
        for c, load in on_grpcio.items():
            report.add(f"mesh gRPC on grpcio's server, c={c} (asyncio client)",
                       load if isinstance(load, str) else load.row())
        Procs.stop(mesh)

    many: Server | None = None
    if args.workers > 1:
        many = Server(f"SciLLM --workers {args.workers}")
        with _section(f"mesh: scillm serve --service completion --workers {args.workers}"):
            mesh, grpc_port, http_port = start_mesh(procs, tmp, mesh_config, args.workers)
            time.sleep(1.0)
            many.rss_idle = rss_mib(mesh.pid)
            url = f"http://127.0.0.1:{http_port}{path}"
            wrk(url, CHAT, 64, 1, tmp)
            for c in CONCURRENCY:
                many.http[c] = wrk(url, CHAT, c, secs, tmp, mesh.pid)
                report.add(f"workers HTTP, c={c} (wrk)", many.http[c].row())
            _store_grpc(report, many, "workers",
                        _grpc_loads(f"127.0.0.1:{grpc_port}", CHAT, mesh.pid, secs, (64,)))
            ttfb = client([{"op": "http_latency", "port": http_port, "path": path,
                            "body": STREAM, "duration": secs / 2}], timeout=secs + 60)
            many.ttfb_ms = ttfb[0].get("ttfb_p50_ms", float("nan"))
            many.rss_peak = peak_rss_mib(mesh.pid)
            report.add(f"workers RSS (master and {args.workers} workers)",
                       f"idle {many.rss_idle:.1f} MiB, peak {many.rss_peak:.1f} MiB")
            Procs.stop(mesh)

    lite: Server | None = None
    if args.no_litellm:
        report.note("LiteLLM proxy skipped (--no-litellm)")
    else:
        with _section(f"LiteLLM proxy {LITELLM_VERSION} (litellm --num_workers 1)"):
            key = "sk-" + secrets.token_hex(24)  # LiteLLM refuses to start without one
            proxy, port, why = start_litellm(procs, tmp, config, key)
            if proxy is None:
                report.note(why)
            else:
                lite = Server(f"LiteLLM {LITELLM_VERSION}, 1 worker")
                lite.rss_idle = rss_mib(proxy.pid)
                url = f"http://127.0.0.1:{port}{path}"
                wrk(url, CHAT, 16, 1, tmp, key=key)
                for c in CONCURRENCY:
                    lite.http[c] = wrk(url, CHAT, c, secs, tmp, proxy.pid, key)
                    report.add(f"LiteLLM HTTP, c={c} (wrk)", lite.http[c].row())
                ttfb = client([{"op": "http_latency", "port": port, "path": path,
                                "body": STREAM, "duration": secs, "key": key, "warmup": 5}],
                              timeout=secs + 60)
                lite.ttfb_ms = ttfb[0].get("ttfb_p50_ms", float("nan"))
                lite.rss_peak = peak_rss_mib(proxy.pid)
                report.add("LiteLLM stream, first byte", f"p50 {lite.ttfb_ms:.3f} ms")
                report.add("LiteLLM RSS", f"idle {lite.rss_idle:.1f} MiB, "
                                          f"peak {lite.rss_peak:.1f} MiB")
                Procs.stop(proxy)

    if args.baseline:
        with _section(f"before/after pairs: the mesh at {args.baseline} vs this checkout"):
            _pairs(args, secs, procs, report, tmp, mesh_config)

    servers = [s for s in (direct, lite, one, many) if s is not None]
    report.table = [s.row(direct, direct_ttfb) for s in servers]
    _targets(report, direct, direct_ttfb, one, many, lite, streams_ok, args.streams, floor_us)
    print(f"\n== results ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})\n")
    print(report.markdown())
    for text in report.notes:
        print(f"\nnote: {text}")
    return 0


def _targets(report: Report, direct: Server, direct_ttfb: float, one: Server,
             many: Server | None, lite: Server | None, streams_ok: bool, streams: int,
             grpc_floor_us: dict[str, float]) -> None:
    """Issue 16's targets, each on the server it is about, and the ratios."""
    door = one.http[64].cpu_ms * 1000
    report.check("CPU per unary request, OpenAI door, one process, c=64 <= 250 µs",
                 f"{door:.0f} µs (c=1 {one.http[1].cpu_ms * 1000:.0f}, "
                 f"c=16 {one.http[16].cpu_ms * 1000:.0f})", door <= 250)
    if 64 in one.grpc:
        grpc_cpu = one.grpc[64].cpu_ms * 1000
        report.check("CPU per unary gRPC Completion, one process, c=64 <= 150 µs",
                     f"{grpc_cpu:.0f} µs (an empty Health/Check alone: "
                     f"{grpc_floor_us['native']:.0f} µs on the native server, "
                     f"{grpc_floor_us['grpcio']:.0f} µs on grpcio's)",
                     grpc_cpu <= 150)
    best = many if many is not None else one
    report.check(f"RPS at c=64 through the door >= 4,000 ({best.name})",
                 f"{best.http[64].rps:,.0f} req/s (one process {one.http[64].rps:,.0f})",
                 best.http[64].rps >= 4000)
    if lite is not None:
        ratio = best.http[64].rps / lite.http[64].rps if lite.http[64].rps else float("inf")
        report.check(f"RPS at c=64 >= 100x LiteLLM 1-worker ({best.name})",
                     f"{ratio:.0f}x ({best.http[64].rps:,.0f} vs {lite.http[64].rps:,.0f})",
                     ratio >= 100)
    added = one.http[1].p50_ms - direct.http[1].p50_ms
    report.check("added p50 at c=1 (HTTP, one process) <= 0.3 ms",
                 f"{added:.3f} ms ({one.http[1].p50_ms:.3f} - {direct.http[1].p50_ms:.3f})",
                 added <= 0.3)
    ttfb = one.ttfb_ms - direct_ttfb
    report.check("stream TTFB added at c=1 (HTTP, one process) <= 0.5 ms",
                 f"{ttfb:.3f} ms ({one.ttfb_ms:.3f} - {direct_ttfb:.3f})", ttfb <= 0.5)
    report.check(f">= 2,000 concurrent streams with no stall ({streams}, gRPC and HTTP)",
                 "all completed" if streams_ok else "some failed or stalled",
                 streams_ok and streams >= 2000)
    report.check("RSS idle <= 100 MiB (one process)", f"{one.rss_idle:.1f} MiB",
                 one.rss_idle <= 100)
    for server in (one, many):
        if server is None:
            continue
        for c in CONCURRENCY:
            if lite is not None and lite.http[c].rps:
                report.check(f"RPS vs LiteLLM at c={c} ({server.name})",
                             f"{server.http[c].rps / lite.http[c].rps:.1f}x", None)
        report.check(f"RPS vs the nginx limit at c=64 ({server.name})",
                     f"{server.http[64].rps / direct.http[64].rps:.3f}x "
                     f"({server.http[64].rps:,.0f} vs {direct.http[64].rps:,.0f})", None)


def _pairs(args: argparse.Namespace, secs: float, procs: Procs, report: Report, tmp: Path,
           config: Path) -> None:
    """The mesh at `args.baseline` and as checked out, alternated: CPU per request."""
    tree = export_tree(args.baseline, tmp)
    figures: dict[str, list[tuple[float, float, float]]] = {"before": [], "after": []}
    for _ in range(args.pairs):
        for label, env in (("before", {"PYTHONPATH": str(tree)}), ("after", {})):
            mesh, grpc_port, http_port = start_mesh(procs, tmp, config, env=env)
            url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
            wrk(url, CHAT, 16, 1, tmp)
            http = wrk(url, CHAT, 16, secs, tmp, mesh.pid)
            c1 = wrk(url, CHAT, 1, secs / 2, tmp, mesh.pid)
            grpc = _grpc_loads(f"127.0.0.1:{grpc_port}", CHAT, mesh.pid, secs, (16,))[16]
            Procs.stop(mesh)
            grpc_us = float("nan") if isinstance(grpc, str) else grpc.cpu_ms * 1000
            figures[label].append((http.cpu_ms * 1000, grpc_us, c1.p50_ms))
            print(f"  {label}: HTTP c=16 {http.cpu_ms * 1000:.0f} µs/req ({http.rps:,.0f} "
                  f"req/s), gRPC c=16 {grpc_us:.0f} µs/req, HTTP c=1 p50 {c1.p50_ms:.3f} ms",
                  flush=True)
    for label, rows in figures.items():
        http_us, grpc_us, p50 = (statistics.median(col) for col in zip(*rows, strict=True))
        report.add(f"{'before: ' + args.baseline if label == 'before' else 'after: checkout'}"
                   f" (median of {args.pairs})",
                   f"CPU HTTP c=16 {http_us:.0f} µs/req, gRPC c=16 {grpc_us:.0f} µs/req; "
                   f"HTTP c=1 p50 {p50:.3f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
