"""Flame graphs of the Completion hot path, recorded with py-spy under load.

Run: ``.venv/bin/python bench/flamegraphs.py [--label after] [--seconds 8] [--workers N]``;
``--ref REF --label before`` records the mesh as at another commit (exported beside the
checkout by `_baseline.export_tree`, as `completion_bench.py --baseline` does).

Starts the same nginx upstream and mesh as `completion_bench.py` (`scillm serve --service
completion`, the bench's model config), then, for each door, puts a closed-loop load on
it (wrk, 16 connections, on the HTTP door; the bench's asyncio gRPC client, 16 calls in
flight, on the gRPC door) and records the mesh's process tree with `py-spy record
--subprocesses --gil` (the threads holding the GIL: the Python side; gRPC's C threads are
not in it) for `--seconds`. Writes `bench/flamegraphs/<label>-http.svg` and
`<label>-grpc.svg` (with `--keep-raw`, the collapsed stacks beside them) and prints, per
function, the share of samples it is on the stack (inclusive) and on top (own).

Read them knowing what py-spy samples: wall time while a thread holds the GIL, so a
system call that wakes another process (a socket write on loopback) also collects the
time the thread waits to run again on a busy machine; CPU time per request comes from
`completion_bench.py`. Needs py-spy (`pip install py-spy`), nginx and wrk. A measurement
aid, not a bench: `run_all.py` does not run it.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import _completion_parts as cb
from _baseline import export_tree

OUT = Path(__file__).with_name("flamegraphs")
PYSPY = str(Path(sys.executable).with_name("py-spy"))


def record(pid: int, seconds: int, svg: Path, raw: Path) -> None:
    """py-spy on `pid` (and its children): an SVG and the collapsed stacks."""
    for fmt, out in (("flamegraph", svg), ("raw", raw)):
        subprocess.run([PYSPY, "record", "--pid", str(pid), "--subprocesses", "--gil",
                        "--rate", "250", "--duration", str(seconds), "--format", fmt,
                        "--output", str(out)], check=True, capture_output=True)


def top_frames(raw: Path, n: int = 30) -> list[tuple[str, float, float]]:
    """Per function, the share of samples it is on the stack (inclusive) and on top (own),
    over every thread's samples; largest inclusive first."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (", 1)[0] + " (" + f.split(" (", 1)[-1].split(":", 1)[0] + ")"
                  for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        samples = int(count)
        total += samples
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    return [(frame, 100.0 * c / max(total, 1), 100.0 * own[frame] / max(total, 1))
            for frame, c in inclusive.most_common(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="before", help="file name prefix (before/after)")
    parser.add_argument("--seconds", type=int, default=8, help="seconds recorded per door")
    parser.add_argument("--workers", type=int, default=1, help="scillm serve --workers")
    parser.add_argument("--keep-raw", action="store_true", help="keep the collapsed stacks")
    parser.add_argument("--ref", help="record the mesh as at this commit (default: the checkout)")
    args = parser.parse_args()
    if not Path(PYSPY).exists():
        print(f"flamegraphs: {PYSPY} is missing (pip install py-spy)")
        return 2
    OUT.mkdir(exist_ok=True)
    procs = cb.Procs()
    tmp = Path(tempfile.mkdtemp(prefix="scillm-flame-"))
    try:
        _, up = cb.start_upstream(procs, tmp)
        config = tmp / "models.yaml"
        config.write_text(cb.model_config(up, echo=True))
        env = {"PYTHONPATH": str(export_tree(args.ref, tmp))} if args.ref else None
        mesh, grpc_port, http_port = cb.start_mesh(procs, tmp, config, args.workers, env)
        url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
        cb.wrk(url, cb.CHAT, 16, 1, tmp)  # warm-up
        for door in ("http", "grpc"):
            svg, raw = OUT / f"{args.label}-{door}.svg", tmp / f"{door}.txt"
            if door == "http":
                load = threading.Thread(target=cb.wrk, args=(url, cb.CHAT, 16,
                                                            args.seconds * 2 + 4, tmp))
            else:
                ops = [{"op": "grpc_load", "target": f"127.0.0.1:{grpc_port}",
                        "body": cb.CHAT, "concurrency": 16, "duration": args.seconds * 2 + 4,
                        "server": mesh.pid}]
                load = threading.Thread(target=cb.client, args=(ops, args.seconds * 2 + 60))
            load.start()
            record(mesh.pid, args.seconds, svg, raw)
            shutil.copy(raw, OUT / f"{args.label}-{door}.txt") if args.keep_raw else None
            load.join()
            print(f"\n== {door}: {svg}")
            print("  inclusive  own  function")
            for frame, inclusive, own in top_frames(raw):
                print(f"  {inclusive:8.1f}% {own:5.1f}%  {frame}")
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
