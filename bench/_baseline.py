"""Another commit of this repository, runnable beside the checkout: for before/after pairs.

    tree = export_tree("main", tmp)      # tmp/baseline/scillm: the package as at `main`
    env = {"PYTHONPATH": str(tree)}      # `scillm serve` started with it runs that code

`git archive` writes the commit's files; `gen/scillm` becomes the package and `server/`,
`clients/` and `bridges/` its subpackages, as `setup.py` maps them. On PYTHONPATH it comes
before the editable install of the checkout (whose finder is the last on `sys.meta_path`),
so every `scillm.*` module the commit has is imported from it.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

__all__ = ["export_tree"]

ROOT = Path(__file__).resolve().parent.parent


def export_tree(ref: str, tmp: Path) -> Path:
    """The `scillm` package as at `ref`, laid out under `tmp/baseline`; its PYTHONPATH."""
    raw = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True,
                         capture_output=True).stdout
    src, out = tmp / "baseline-src", tmp / "baseline"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        # Extraction filters came in 3.11.4; Debian's 3.11.2 has none (the archive is our
        # own `git archive`, so extracting it unfiltered there is safe).
        if hasattr(tarfile, "data_filter"):
            tar.extractall(src, filter="data")
        else:
            tar.extractall(src)
    shutil.copytree(src / "gen" / "scillm", out / "scillm")
    for sub in ("server", "clients", "bridges"):
        shutil.copytree(src / sub, out / "scillm" / sub)
    shutil.rmtree(src)
    return out
