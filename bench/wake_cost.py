"""Wake cost: how much of the added latency at c=1 is the machine waking an idle CPU.

Run: ``.venv/bin/python bench/wake_cost.py [--rounds 4] [--seconds 3]``.

At one request at a time the mesh sleeps twice per request (waiting for the caller, then
for the upstream) and each wake-up of an idle CPU costs what the machine charges for it:
on a VM whose guest halt-polling is off (`haltpoll.guest_halt_poll_ns=0` on the kernel
command line of the Firecracker VMs this was measured on) an idle vCPU halts and the host
must schedule it again. This measures the same c=1 load twice, in alternating rounds:

- `halt`: as `completion_bench.py` runs it;
- `awake`: with one `SCHED_IDLE` spinner per CPU, which never takes CPU time from any
  other process but keeps every CPU from going idle, so no wake-up ever has to leave a
  halt.

Each round measures, under the same condition, nginx directly and the mesh in front of it
(wrk, c=1, the bench's nginx upstream and model config) and the mesh's CPU per request
(`/proc`, all its threads), and counts the mesh's context switches per request (how often
it went to sleep). The difference between the two rows is the machine's wake cost, not the
mesh's work: a diagnosis of the c=1 row of issue #16, not a way to serve (the spinners
burn every idle CPU cycle).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _completion_parts as cb

SPIN = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass"


def switches(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        total += int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per load")
    args = parser.parse_args()
    procs = cb.Procs()
    rows: dict[str, dict[str, list[float]]] = {
        mode: {"direct": [], "mesh": [], "added": [], "cpu": [], "sleeps": []}
        for mode in ("halt", "awake")}
    with tempfile.TemporaryDirectory(prefix="scillm-wake-") as name:
        tmp = Path(name)
        try:
            _, upstream = cb.start_upstream(procs, tmp)
            config = tmp / "models.yaml"
            config.write_text(cb.model_config(upstream))
            mesh, _, http = cb.start_mesh(procs, tmp, config)
            url = f"http://127.0.0.1:{http}/v1/chat/completions"
            direct = f"http://127.0.0.1:{upstream}/v1/chat/completions"
            cb.wrk(url, cb.CHAT, 1, 1, tmp)  # warm-up
            for _ in range(args.rounds):
                for mode, row in rows.items():
                    spinners = [subprocess.Popen([sys.executable, "-c", SPIN])
                                for _ in range(os.cpu_count() or 1)] if mode == "awake" else []
                    try:
                        time.sleep(0.3 if spinners else 0)
                        nginx = cb.wrk(direct, cb.CHAT, 1, args.seconds, tmp)
                        before = switches(mesh.pid)
                        served = cb.wrk(url, cb.CHAT, 1, args.seconds, tmp, server=mesh.pid)
                        slept = switches(mesh.pid) - before
                    finally:
                        for spinner in spinners:
                            spinner.kill()
                            spinner.wait()
                    requests = served.rps * args.seconds
                    row["direct"].append(nginx.p50_ms)
                    row["mesh"].append(served.p50_ms)
                    row["added"].append(served.p50_ms - nginx.p50_ms)
                    row["cpu"].append(served.cpu_ms * 1e3)
                    row["sleeps"].append(slept / max(requests, 1.0))
        finally:
            procs.stop_all()
    print(f"c=1, {args.rounds} alternating rounds of {args.seconds:g} s, medians:")
    print("| CPUs | nginx direct p50 | mesh p50 | added p50 | mesh CPU per request "
          "| mesh sleeps per request |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, row in rows.items():
        med = {key: statistics.median(values) for key, values in row.items()}
        print(f"| {mode} | {med['direct']:.3f} ms | {med['mesh']:.3f} ms | "
              f"{med['added']:.3f} ms | {med['cpu']:.0f} µs | {med['sleeps']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
