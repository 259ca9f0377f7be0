"""The scenarios that need no model generation, run as a user runs them (each as its own
process, exit 0 required), and proof that a scenario fails when its story breaks.

The scenarios that need the local model (marked `needs_model` in run_all.py) run in
`make scenarios` only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from run_all import SCENARIOS, Scenario, run

FAST = [s for s in SCENARIOS if not s.needs_model]
BY_FILE = {s.file: s for s in SCENARIOS}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", FAST, ids=[s.file[:-3] for s in FAST])
def test_scenario_passes(scenario: Scenario) -> None:
    outcome = run(scenario)
    assert outcome.status == "PASS", outcome.output[-4000:]
    assert outcome.figure  # the one figure that matters was printed


@pytest.mark.timeout(300)
@pytest.mark.parametrize("file", ["litellm_config.py", "agent_tools.py"])
def test_a_broken_upstream_fails_the_story(file: str) -> None:
    """Every OpenAI-wire upstream answers 200 with a body that is not JSON: the story
    breaks, and the scenario must say FAIL and exit non-zero (never PASS, never SKIP)."""
    outcome = run(BY_FILE[file], env={"SCENARIO_BREAK_UPSTREAM": "garbage"})
    assert outcome.status == "FAIL", outcome.output[-4000:]
    assert "\nFAIL  " in outcome.output and "\nPASS" not in outcome.output


@pytest.mark.timeout(300)
def test_a_missing_part_is_a_skip_with_its_reason(tmp_path: Path) -> None:
    """Without redis-server on PATH the LiteLLM story cannot run its cache: SKIP (exit 77)
    naming redis-server, not a pass."""
    assert shutil.which("redis-server"), "scripts/install installs redis-server"
    bare = tmp_path / "bin"
    bare.mkdir()
    for name in ("python3", "sh"):  # what a child process may look up; no redis-server
        found = shutil.which(name)
        if found:
            os.symlink(found, bare / name)
    outcome = run(BY_FILE["litellm_config.py"], env={"PATH": str(bare)})
    assert outcome.status == "SKIP", outcome.output[-4000:]
    assert "redis-server" in outcome.figure
