"""Run every scenario (one story each), then print a table: scenario, status, seconds, and
the one figure that matters. Exit 0 when none failed (a SKIP is not a failure: it says which
part this machine lacks).

Run: .venv/bin/python scenarios/run_all.py [--fast] [NAME ...]   (or `make scenarios`)

`--fast` leaves out the scenarios that need model generation (local/gemma); those are the
ones `make test` does not run. Each scenario starts and stops what it needs; a scenario
still running after its time limit is killed with everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
SKIP_EXIT = 77


@dataclass(frozen=True)
class Scenario:
    """One story's program, whether it needs model generation, and its time limit."""

    story: int
    file: str
    needs_model: bool
    limit_s: float


#: Every story of issue 20, in order.
SCENARIOS = (
    Scenario(1, "openai_clients.py", needs_model=True, limit_s=600),
    Scenario(2, "litellm_config.py", needs_model=False, limit_s=180),
    Scenario(3, "certainly.py", needs_model=True, limit_s=900),
    Scenario(4, "codeworld.py", needs_model=True, limit_s=1200),
    Scenario(5, "agent_tools.py", needs_model=False, limit_s=180),
    Scenario(6, "keys_and_limits.py", needs_model=False, limit_s=120),
    Scenario(7, "operate.py", needs_model=False, limit_s=180),
    Scenario(8, "replicas_burst.py", needs_model=False, limit_s=300),
)


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    status: str
    seconds: float
    figure: str
    output: str


def run(scenario: Scenario, env: dict[str, str] | None = None) -> Outcome:
    """Run one scenario as its own process (group), killed past its time limit."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(HERE / scenario.file)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})
    try:
        output, _ = proc.communicate(timeout=scenario.limit_s)
        status = {0: "PASS", SKIP_EXIT: "SKIP"}.get(proc.returncode, "FAIL")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        output += f"\nFAIL  still running after {scenario.limit_s:g} s: killed"
        status = "FAIL"
    lines = output.splitlines()
    figure = next((line[7:] for line in reversed(lines) if line.startswith("FIGURE ")), "")
    if status != "PASS":
        figure = next((line for line in reversed(lines)
                       if line.startswith(("SKIP", "FAIL"))), figure)
    return Outcome(scenario, status, time.monotonic() - started, figure, output)


def table(outcomes: list[Outcome]) -> str:
    """A Markdown table of the outcomes."""
    rows = ["| story | scenario | model | status | seconds | figure |",
            "| --- | --- | --- | --- | ---: | --- |"]
    rows += [f"| {o.scenario.story} | `scenarios/{o.scenario.file}` | "
             f"{'local/gemma' if o.scenario.needs_model else '-'} | {o.status} | "
             f"{o.seconds:.1f} | {o.figure.replace('|', '/')} |" for o in outcomes]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true",
                        help="leave out the scenarios that need model generation")
    parser.add_argument("names", nargs="*", help="only these scenarios (file names)")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not (args.fast and s.needs_model)
              and (not args.names or s.file in args.names or s.file[:-3] in args.names)]
    outcomes = []
    for scenario in chosen:
        print(f"\n##### {scenario.file}", flush=True)
        outcome = run(scenario)
        print(outcome.output, end="", flush=True)
        outcomes.append(outcome)
    print("\n" + table(outcomes))
    count = {status: sum(o.status == status for o in outcomes)
             for status in ("PASS", "FAIL", "SKIP")}
    print(f"\nscenarios: {count['PASS']} passed, {count['FAIL']} failed, "
          f"{count['SKIP']} skipped")
    return 1 if count["FAIL"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
