"""Run every bench in bench/ (`*_bench.py`) in turn; exit non-zero if any failed.

Run: ``.venv/bin/python bench/run_all.py [--quick]``. `--quick` is passed to the benches
that accept it (their source mentions it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    failed = []
    for script in sorted(Path(__file__).parent.glob("*_bench.py")):
        extra = [a for a in sys.argv[1:] if a in script.read_text()]
        print(f"\n##### {script.name} {' '.join(extra)}".rstrip(), flush=True)
        if subprocess.run([sys.executable, str(script), *extra]).returncode != 0:
            failed.append(script.name)
    print(f"\nbenches failed: {', '.join(failed)}" if failed else "\nall benches ran")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
