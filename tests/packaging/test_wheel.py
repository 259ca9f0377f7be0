"""The wheel, not the editable install: build it, install it in a fresh venv, import all.

An editable install maps folders at run time and hides packaging mistakes (a missing
sub-package, a generated module left out, a missing dependency). This test builds the
wheel with `python -m build`, installs it with its dependencies into a new venv, and
imports every public module there, from a directory outside the repository.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _public_modules() -> list[str]:
    roots = {"scillm": ROOT / "gen" / "scillm", "scillm.server": ROOT / "server",
             "scillm.clients": ROOT / "clients", "scillm.bridges": ROOT / "bridges"}
    found: list[str] = []
    for name, base in roots.items():
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(p.startswith("_") and p != "__init__" for p in rel.parts):
                continue
            found.append(".".join([name, *parts]))
    return found


@pytest.mark.timeout(600)
def test_wheel_installs_and_imports_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
         str(ROOT)], capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list(dist.glob("scillm-*.whl"))
    assert len(wheels) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheels[0])],
                             capture_output=True, text=True, timeout=420, check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    modules = _public_modules()
    assert "scillm.completion.v1.completion_pb2" in modules
    assert "scillm.server.cli" in modules
    script = ("import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
              "from importlib.resources import files\nui = files('scillm.bridges.ui')\n"
              "assert ui.joinpath('templates/run.html').is_file(), 'UI templates missing'\n"
              "assert ui.joinpath('static/ui.js').is_file(), 'UI script missing'\n")
    imported = subprocess.run([str(py), "-c", script, *modules], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path, check=False)
    assert imported.returncode == 0, imported.stderr[-3000:]
    helped = subprocess.run([str(venv / "bin" / "scillm"), "serve", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert helped.returncode == 0 and "--service" in helped.stdout
