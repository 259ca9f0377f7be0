"""Replicas bench: Completion throughput on one and three replicas, and a replica killed under load.

Run: ``.venv/bin/python bench/replicas_bench.py [--quick] [--concurrency N]``.

Three phases, each bounded in time, all on 127.0.0.1:

1. one replica (`scillm serve --service completion --no-http`): closed-loop load of echo
   completions (`echo/x`, response cache off) from a load generator in a separate process
   (this file with `--load`, uvloop, one `ScillmClient`, N calls in flight);
2. three replicas, the same load through one channel over the three addresses (gRPC's
   `round_robin`); the ratio to one replica, next to the machine's core count;
3. three replicas again, and one of them SIGKILLed mid-run. Each request carries unique
   text and its reply must echo it. A call that fails with UNAVAILABLE is retried by the
   load generator (bounded, with backoff); the bench counts requests sent, succeeded,
   retried and failed for good, and whether each UNAVAILABLE call had already received the
   server's initial metadata (the echoed `x-request-id`): such a call was committed, so the
   channel's retry policy could not retry it. Target: 0 requests lost.

Every process started here runs in its own process group and is killed on exit.
Prints the figures; a measurement, not a test: exits 0 unless something could not be
measured or a request was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _completion_load import cpu_seconds
from _completion_parts import Procs

PYTHON = sys.executable
SCILLM = str(Path(PYTHON).with_name("scillm"))
MODEL_CONFIG = """model_list:
  - model_name: "echo/*"
    litellm_params: {model: "echo/*"}
litellm_settings:
  cache: false
"""
#: Load-generator retries of a call that failed with UNAVAILABLE (after the channel's own).
APP_RETRIES = 4
CALL_TIMEOUT_S = 10.0
BIN_S = 0.05  # successes are counted per bin of this many seconds


# -- the load generator (a separate process) --------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _load(op: dict[str, Any]) -> dict[str, Any]:
    """N workers in a closed loop for `duration` s; every request checked and accounted."""
    import grpc

    from scillm.clients import RPCError, ScillmClient, openai_wire  # type: ignore[import-not-found]

    nonce = uuid.uuid4().hex[:8]
    seq = 0
    latencies: list[float] = []
    done_at: list[float] = []  # monotonic time of each success
    outcome: Counter[str] = Counter()
    unavailable: list[dict[str, Any]] = []  # one per attempt that failed with UNAVAILABLE
    errors: Counter[str] = Counter()

    async def one(client: Any, record: bool) -> None:
        nonlocal seq
        seq += 1
        text = f"bench {nonce} {seq}"
        request = openai_wire.request_to_proto(
            {"model": "echo/x", "messages": [{"role": "user", "content": text}]})
        t0 = time.monotonic()
        for attempt in range(APP_RETRIES + 1):
            request_id = f"{nonce}-{seq}-{attempt}"
            try:
                reply = await client.completion.create(request, timeout=CALL_TIMEOUT_S,
                                                       request_id=request_id)
            except RPCError as err:
                if not record:
                    raise
                if err.code != grpc.StatusCode.UNAVAILABLE:
                    outcome["failed"] += 1
                    errors[f"{err.code.name}: {err.message[:120]}"] += 1
                    return
                # A killed server sends no trailers: the request id can only have come
                # from the initial metadata, i.e. the call was committed.
                unavailable.append({"t": time.monotonic(), "attempt": attempt,
                                    "committed": err.request_id == request_id,
                                    "message": err.message[:160]})
                if attempt == APP_RETRIES:
                    outcome["failed"] += 1
                    errors[f"UNAVAILABLE after {APP_RETRIES} retries"] += 1
                    return
                await asyncio.sleep(min(0.05 * 2 ** attempt, 0.5))
                continue
            content = openai_wire.message_from_proto(reply.choices[0].message)["content"]
            if record:
                outcome["succeeded" if content == text else "wrong_reply"] += 1
                outcome["after_retry"] += attempt > 0
                latencies.append(time.monotonic() - t0)
                done_at.append(time.monotonic())
            return

    async with ScillmClient(op["target"]) as client:
        warm_until = time.monotonic() + op["warmup"]
        async def warm() -> None:
            while time.monotonic() < warm_until:
                await one(client, record=False)
        await asyncio.gather(*(warm() for _ in range(op["concurrency"])))

        print("LOADSTARTED", flush=True)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        stop_at = started + op["duration"]
        sent_before = seq

        async def worker() -> None:
            while time.monotonic() < stop_at:
                await one(client, record=True)

        tasks = [asyncio.ensure_future(worker()) for _ in range(op["concurrency"])]
        _, pending = await asyncio.wait(tasks, timeout=op["duration"] + op["drain"])
        for task in pending:  # past the bound: whatever is still in flight is stuck
            task.cancel()
        outcome["stuck"] = len(pending)
        elapsed = time.monotonic() - started
        print("LOADDONE", flush=True)
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    sent = seq - sent_before
    client_cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    bins = Counter(int((t - started) / BIN_S) for t in done_at)
    return {"started": started, "elapsed": elapsed, "sent": sent, **outcome,
            "rps": outcome["succeeded"] / elapsed,
            "client_cpu_ms": client_cpu * 1e3 / max(outcome["succeeded"], 1),
            "p50_ms": _pct(latencies, .5) * 1e3, "p99_ms": _pct(latencies, .99) * 1e3,
            "max_ms": max(latencies, default=0) * 1e3,
            "done_per_bin": [bins.get(i, 0) for i in range(max(bins, default=-1) + 1)],
            "unavailable": {
                "attempts": len(unavailable),
                "first_attempts": sum(u["attempt"] == 0 for u in unavailable),
                "committed": sum(u["committed"] for u in unavailable),
                "first_t": min((u["t"] for u in unavailable), default=None),
                "last_t": max((u["t"] for u in unavailable), default=None),
                "messages": Counter(u["message"] for u in unavailable).most_common(3)},
            "errors": dict(errors.most_common(5))}


def load_main(op_json: str) -> None:
    import uvloop

    async def run() -> Any:
        op = json.loads(op_json)
        async with asyncio.timeout(op["warmup"] + op["duration"] + op["drain"] + 15):
            return await _load(op)

    try:
        result = uvloop.run(run())
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    os.set_blocking(sys.stdout.fileno(), True)  # the loop may have left the pipe non-blocking
    print("BENCHJSON " + json.dumps(result), flush=True)


# -- the orchestrator -------------------------------------------------------------------------


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_replicas(procs: Procs, tmp: Path, config: Path, n: int) -> list[Replica]:
    """Start `n` Completion replicas at once (gRPC only, any free port); wait until ready."""
    started = []
    for _ in range(n):
        i = len(procs.started)
        proc = procs.start([SCILLM, "serve", "--service", "completion", "--no-http",
                            "--grpc-port", "0", "--config", str(config)],
                           tmp / f"replica{i}.log", env={"OTEL_SDK_DISABLED": "true"},
                           stdout=subprocess.PIPE)
        started.append((proc, tmp / f"replica{i}.log"))
    replicas = []
    for proc, log in started:
        ports: list[int] = []
        ready = threading.Event()

        def drain(proc: subprocess.Popen[bytes] = proc, ports: list[int] = ports,
                  ready: threading.Event = ready) -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace")
                if line.startswith("scillm: gRPC on") and not ports:
                    ports.append(int(line.split("gRPC on ")[1].split()[0]
                                     .rstrip(",").rsplit(":", 1)[1]))
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(60) or not ports:
            raise RuntimeError(f"a replica did not start: {log.read_text()[-800:]}")
        replicas.append(Replica(proc, ports[0]))
    return replicas


@dataclass
class LoadRun:
    """A load-generator run and the replicas' CPU over its measured part."""

    result: dict[str, Any]
    server_cpu_s: list[float]
    killed_at: float | None = None  # monotonic
    events: dict[str, float] = field(default_factory=dict)


def run_load(replicas: list[Replica], args: argparse.Namespace, duration: float,
             kill: tuple[Replica, float] | None = None) -> LoadRun:
    """Run the load generator against `replicas`; SIGKILL `kill[0]` `kill[1]` s in."""
    op = {"target": ",".join(r.address for r in replicas), "concurrency": args.concurrency,
          "duration": duration, "warmup": 0.5, "drain": CALL_TIMEOUT_S + 5}
    bound = op["warmup"] + duration + op["drain"] + 30
    proc = subprocess.Popen([PYTHON, str(Path(__file__).resolve()), "--load", json.dumps(op)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    events: dict[str, float] = {}
    cpu: dict[str, list[float]] = {}
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line in ("LOADSTARTED", "LOADDONE"):
                events[line] = time.monotonic()
                cpu[line] = [cpu_seconds(r.proc.pid) if r.proc.poll() is None else 0.0
                             for r in replicas]
                if line == "LOADSTARTED":
                    started.set()
            else:
                lines.append(line)
        started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed_at = None
    try:
        if kill is not None:
            victim, after = kill
            if not started.wait(60):
                raise RuntimeError("the load generator did not start")
            time.sleep(after)
            cpu_victim = cpu_seconds(victim.proc.pid)
            os.killpg(victim.proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            victim.proc.wait(5)
        try:
            proc.wait(bound)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the load generator ran past {bound:g}s") from None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    reader.join(5)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    result = next((json.loads(line[len("BENCHJSON "):]) for line in reversed(lines)
                   if line.startswith("BENCHJSON ")), None)
    if result is None or "error" in result:
        raise RuntimeError(f"the load generator failed: {result or err[-800:]}")
    if "LOADDONE" not in cpu:
        raise RuntimeError("the load generator never finished its load")
    used = [b - a for a, b in zip(cpu["LOADSTARTED"], cpu["LOADDONE"], strict=True)]
    if kill is not None:  # the victim's CPU up to its death
        i = replicas.index(kill[0])
        used[i] = cpu_victim - cpu["LOADSTARTED"][i]
    return LoadRun(result, used, killed_at, events)


def describe(name: str, run: LoadRun) -> str:
    r = run.result
    cpu = sum(run.server_cpu_s)
    share = "/".join(f"{c / cpu:.0%}" for c in run.server_cpu_s) if cpu else "-"
    return (f"{name}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms,"
            f" max {r['max_ms']:.1f} ms; {r['succeeded']:,} ok in {r['elapsed']:.2f} s;"
            f" server CPU {cpu * 1e3 / max(r['succeeded'], 1):.2f} ms/req"
            f" ({cpu / r['elapsed']:.2f} cores, split {share}),"
            f" load generator CPU {r['client_cpu_ms']:.2f} ms/req"
            f" ({r['client_cpu_ms'] * r['rps'] / 1e3:.2f} cores)")


def rate(done_per_bin: list[int], start: float, end: float) -> float:
    """Successes per second between `start` and `end` s into the load (whole bins)."""
    first, last = round(start / BIN_S), round(end / BIN_S)
    return sum(done_per_bin[first:last]) / ((last - first) * BIN_S) if last > first else 0.0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--load":
        load_main(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2-3 s per phase (~30 s)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    args = parser.parse_args()

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="scillm-replicas-"))
    print(f"replicas bench ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs,"
          f" c={args.concurrency}, logs in {tmp}", flush=True)
    try:
        return run(args, procs, tmp)
    finally:
        procs.stop_all()
        if not os.environ.get("SCILLM_BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, procs: Procs, tmp: Path) -> int:
    secs = 2.0 if args.quick else 5.0
    kill_secs, kill_after = (3.0, 1.0) if args.quick else (6.0, 2.0)
    config = tmp / "models.yaml"
    config.write_text(MODEL_CONFIG)
    cores = os.cpu_count() or 1

    print("\n== phase 1: one replica", flush=True)
    one = start_replicas(procs, tmp, config, 1)
    single = run_load(one, args, secs)
    print("  " + describe("1 replica", single), flush=True)
    Procs.stop(one[0].proc)  # SIGTERM: graceful

    print("\n== phase 2: three replicas, one channel, round_robin", flush=True)
    three = start_replicas(procs, tmp, config, 3)
    triple = run_load(three, args, secs)
    print("  " + describe("3 replicas", triple), flush=True)
    ratio = triple.result["rps"] / single.result["rps"]
    print(f"  scaling: {ratio:.2f}x one replica on {cores} cores"
          f" (3 replicas + the load generator share {cores} cores: expect < 3x)", flush=True)

    print(f"\n== phase 3: three replicas, one SIGKILLed {kill_after:g} s into the load",
          flush=True)
    victim = three[1]
    chaos = run_load(three, args, kill_secs, kill=(victim, kill_after))
    r = chaos.result
    assert chaos.killed_at is not None
    print("  " + describe("3 replicas, one killed", chaos), flush=True)
    kill_t = chaos.killed_at
    kill_in = kill_t - r["started"]  # CLOCK_MONOTONIC is the same in both processes
    before = rate(r["done_per_bin"], 0, kill_in)
    after = rate(r["done_per_bin"], kill_in + 0.5, kill_secs)
    print(f"  throughput: {before:,.0f} req/s before the kill, {after:,.0f} req/s on two"
          f" replicas (from 0.5 s after it)", flush=True)
    unavailable = r["unavailable"]
    committed = unavailable["committed"]
    lost = r["sent"] - r.get("succeeded", 0)
    print(f"  requests: sent {r['sent']:,}, succeeded {r.get('succeeded', 0):,}"
          f" ({r.get('after_retry', 0)} after a load-generator retry), failed for good"
          f" {r.get('failed', 0)}, wrong reply {r.get('wrong_reply', 0)},"
          f" stuck {r.get('stuck', 0)}; lost {lost}", flush=True)
    print(f"  UNAVAILABLE reaching the caller despite the channel's retry policy:"
          f" {unavailable['first_attempts']} calls ({unavailable['attempts']} attempts in"
          f" all), {committed} of the attempts had received the server's initial metadata"
          f" (committed), {unavailable['attempts'] - committed} had not", flush=True)
    if unavailable["attempts"]:
        print(f"  they failed {(unavailable['first_t'] - kill_t) * 1e3:+.0f} to"
              f" {(unavailable['last_t'] - kill_t) * 1e3:+.0f} ms from the kill; messages:"
              f" {unavailable['messages']}", flush=True)
    if r["errors"]:
        print(f"  errors: {r['errors']}", flush=True)

    print(f"\n== results ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {cores} CPUs,"
          f" c={args.concurrency}, {secs:g} s per load)\n")
    rows = [
        ("1 replica", f"{single.result['rps']:,.0f} req/s, p50 {single.result['p50_ms']:.2f} ms,"
                      f" p99 {single.result['p99_ms']:.2f} ms"),
        ("3 replicas, round_robin", f"{triple.result['rps']:,.0f} req/s, p50"
                                    f" {triple.result['p50_ms']:.2f} ms, p99"
                                    f" {triple.result['p99_ms']:.2f} ms"),
        ("scaling, 3 replicas / 1", f"{ratio:.2f}x on {cores} cores"),
        ("3 replicas, one SIGKILLed", f"{r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms,"
                                      f" p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms"),
        ("3 replicas, one SIGKILLed: before / after the kill",
         f"{before:,.0f} / {after:,.0f} req/s"),
        ("kill: sent / succeeded / failed / lost",
         f"{r['sent']:,} / {r.get('succeeded', 0):,} / {r.get('failed', 0)} / {lost}"),
        ("kill: UNAVAILABLE surfaced by the channel",
         f"{unavailable['first_attempts']} calls, {committed}/{unavailable['attempts']}"
         f" attempts committed;"
         f" {r.get('after_retry', 0)} recovered by the load generator's retry"),
    ]
    print("| figure | value |\n| --- | --- |")
    print("\n".join(f"| {w} | {v} |" for w, v in rows))
    ok = lost == 0
    print(f"\ntarget: 0 requests lost with one replica of three SIGKILLed:"
          f" {'PASS' if ok else 'FAIL'} ({lost} lost)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
