"""The Codex sidecar as a real process (`scillm codex-sidecar`), and a fake `codex` on disk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshutil import ServedProcess

FAKE_CODEX = Path(__file__).parent / "server" / "codex_sidecar" / "fake_codex.py"


def fake_codex_bin(directory: Path) -> Path:
    """An executable `codex` in `directory` that runs the stand-in with this interpreter."""
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / "codex"
    exe.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = 'codex'\n"
                   f"runpy.run_path({str(FAKE_CODEX)!r}, run_name='__main__')\n")
    exe.chmod(0o755)
    return exe


def fake_calls(log: Path) -> list[dict[str, Any]]:
    """What the stand-in was run with, one entry per run."""
    path = log / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


class SidecarProcess:
    """`scillm codex-sidecar ARGS --port 0` as a child process; `url` once it is ready."""

    READY = re.compile(r"scillm codex-sidecar: \w+ on (http://\S+)")

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.url = ""
        scillm = str(Path(sys.executable).parent / "scillm")
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [scillm, "codex-sidecar", "--port", "0", *args], stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 60.0) -> SidecarProcess:
        deadline = time.monotonic() + timeout
        while True:
            match = self.READY.search(self.log.read_text(errors="replace"))
            if match:
                self.url = match.group(1)
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("scillm codex-sidecar did not start:\n"
                                     + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    #: SIGTERM, then SIGKILL to its process group after 20 s: as for `scillm serve`.
    stop = ServedProcess.stop
