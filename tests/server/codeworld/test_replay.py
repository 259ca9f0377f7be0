"""The README's CodeWorld example, run and replayed with the real CLI against a mesh.

Replay compares what is deterministic: a replay of the example is identical (exit 0)
although its wall-time `speed` differs, and a changed strategy result still exits 3.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from meshutil import RunningMesh

from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.server.manifests import open_run_store
from scillm.server.manifests._replay import split

SCILLM = str(Path(sys.executable).parent / "scillm")
README = Path(__file__).resolve().parents[3] / "README.md"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCILLM, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def _readme_spec() -> str:
    found = re.search(r"cat > spec\.json <<'EOF'\n(.*?)\nEOF\n", README.read_text(), re.S)
    assert found, "the README's CodeWorld example is gone"
    return found.group(1)


def _replay(run_id: str, mesh: RunningMesh) -> tuple[int, dict[str, object]]:
    out = _cli("runs", "replay", run_id, "--store", str(mesh.mesh.settings.store_path),
               "--target", mesh.grpc_target)
    return out.returncode, json.loads(out.stdout)


def test_the_readme_example_replays_as_identical_and_a_change_exits_3(
        tmp_path: Path, mesh: RunningMesh) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(_readme_spec())
    ran = _cli("codeworld", "run", str(spec), "--target", mesh.grpc_target)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout.splitlines()[-1])["summary"]
    assert summary["volatile_metrics"] == ["speed"]
    run_id = summary["manifest"]["run_id"]
    for _ in range(3):  # timing differs every time; the verdict must not
        code, report = _replay(run_id, mesh)
        assert (code, report["identical"], report["differences"]) == (0, True, []), report
    # The volatile outcomes are reported apart (the speed metric at least).
    assert all("speed" in d or "score" in d or "rank" in d
               for d in report["volatile"]), report  # type: ignore[union-attr]

    # The same run stored with a strategy that now returns a wrong total.
    store = open_run_store(mesh.mesh.settings.store_path)
    try:
        stored = store.get(run_id)
        assert stored is not None
        request = cw.CodeWorldRunRequest()
        request.CopyFrom(stored.request)
        loop = next(s for s in request.strategies if s.name == "loop")
        loop.source = loop.source.replace("return t", "return t + 1")
        manifest = type(stored.manifest)()
        manifest.CopyFrom(stored.manifest)
        manifest.run_id = f"{run_id[:-4]}beef"
        store.put_sync(manifest, request, stored.result, [])
    finally:
        store.close()
    code, report = _replay(manifest.run_id, mesh)
    assert code == 3 and report["identical"] is False
    assert "rankings.sum.loop.correctness: 1.0 -> 0.0" in report["differences"], report


def test_split_keeps_deterministic_metrics_and_moves_ranks_apart() -> None:
    summary = cw.CodeWorldRunSummary(volatile_metrics=["speed"])
    ranking = summary.rankings.add(task_id="t")
    ranking.entries.add(strategy="a", rank=1, score=0.9,
                        metrics={"correctness": 1.0, "speed": 0.8, "brevity": 0.9})
    ranking.entries.add(strategy="b", rank=2, score=0.8,
                        metrics={"correctness": 1.0, "speed": 0.7, "brevity": 0.8})
    fixed, moving = split(summary)
    assert fixed["rankings"] == {"t": {"a": {"correctness": 1.0, "brevity": 0.9},
                                       "b": {"correctness": 1.0, "brevity": 0.8}}}
    assert moving["rankings"]["t"]["b"] == {"rank": 2, "score": 0.8, "speed": 0.7}
    # Swapped on timing alone: the same deterministic view.
    swapped = cw.CodeWorldRunSummary()
    swapped.CopyFrom(summary)
    first, second = swapped.rankings[0].entries
    first.rank, second.rank = 2, 1
    swapped.rankings[0].entries.reverse()
    assert split(swapped)[0] == fixed and split(swapped)[1] != moving
