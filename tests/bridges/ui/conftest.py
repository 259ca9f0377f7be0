"""A mesh with real runs in it (Prove, CodeWorld all and MCTS, an agent, a completion),
and Debian's chromium driven by Playwright, for the runs UI's tests.

The mesh has a master key; models are scripted OpenAI-compatible upstreams (the real
wire format). Screenshots go to tests/artifacts/ui/ (or $SCILLM_TEST_ARTIFACTS/ui/).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh
from scripted_upstream import ScriptedUpstream

TESTS = Path(__file__).resolve().parents[2]

MASTER = "sk-master-ui-test"
TRACE_TEMPLATE = "http://jaeger.test:16686/trace/{trace_id}"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

SUM = "def solve(task, context):\n    return sum(context['input'])\n"
LOOP = ("def solve(task, context):\n    total = 0\n    for x in context['input']:\n"
        "        total += x\n    return total\n")
BROKEN = "def solve(task, context):\n    raise ValueError('no idea')\n"
ZERO = "def solve(task, context):\n    return 0\n"

AGENT_SCRIPT = [
    {"content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "run_python", "arguments": json.dumps({"code": "print(6 * 7)"})}}]},
    {"content": "The answer is 42."},
]
COQ_WRONG = "```coq\nTheorem add_0 : forall n : nat, n + 0 = n.\nProof. reflexivity. Qed.\n```"
COQ_RIGHT = ("```coq\nTheorem add_0 : forall n : nat, n + 0 = n.\n"
             "Proof. induction n; simpl; auto. Qed.\n```")
VARIANT = {"variants": [{"id": "v", "title": "builtin", "rationale": "use sum()",
                         "code": SUM}]}


def artifacts() -> Path:
    """Where the UI tests leave their screenshots (gitignored)."""
    base = Path(os.environ.get("SCILLM_TEST_ARTIFACTS") or TESTS / "artifacts")
    out = base / "ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class UiMesh:
    """The mesh, its upstreams, and the ids of the runs made through it."""

    running: RunningMesh
    upstreams: dict[str, ScriptedUpstream]
    runs: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.running.http_url

    def post(self, path: str, body: dict[str, Any], key: str = MASTER) -> dict[str, Any]:
        reply = httpx.post(f"{self.url}{path}", json=body, timeout=180,
                           headers={"authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
        out: dict[str, Any] = reply.json()
        return out

    def run(self, name: str, body: dict[str, Any]) -> str:
        """Make a run through the OpenAI door; remember its id and result."""
        scillm = self.post("/v1/chat/completions", body)["scillm"]
        self.results[name] = scillm["result"]
        run_id: str = scillm["result"]["manifest"]["run_id"]
        self.runs[name] = run_id
        return run_id


def _make_runs(mesh: UiMesh) -> None:
    user = [{"role": "user", "content": "sum the input"}]
    mesh.run("codeworld", {
        "model": "codeworld", "messages": user,
        "items": [{"task_id": "small", "context": {"input": [1, 2, 3], "expected": 6}},
                  {"task_id": "large", "context": {"input": list(range(200)),
                                                   "expected": sum(range(200))}}],
        "provider": {"args": {"strategies": [{"name": "builtin", "source": SUM},
                                             {"name": "loop", "source": LOOP},
                                             {"name": "broken", "source": BROKEN}]}},
        "options": {"session_id": "demo", "track_id": "sums"}})
    mesh.run("mcts", {
        "model": "codeworld/mcts", "messages": user,
        "items": [{"task_id": "t", "context": {"input": [4, 5], "expected": 9}}],
        "provider": {"args": {"strategies": [{"name": "zero", "source": ZERO},
                                             {"name": "loop", "source": LOOP}],
                              "generator_model": "gen"}},
        "rollouts": 8, "depth": 3, "seed": 5, "uct_c": 0.7,
        "options": {"session_id": "demo", "track_id": "search"}})
    mesh.run("prove", {
        "model": "certainly/smt", "messages": [{"role": "user", "content": "check"}],
        "items": [
            {"item_id": "inc", "preamble": "(declare-const x Int)",
             "statement": "(> (+ x 1) x)"},
            {"item_id": "big", "preamble": "(declare-const x Int)", "statement": "(> x 5)"},
            {"item_id": "sneaky", "preamble": "(declare-const x Int)\n(check-sat)",
             "statement": "(= x x)"}],
        "options": {"session_id": "proofs"}})
    mesh.run("coq", {
        "model": "certainly/coq", "messages": [{"role": "user", "content": "check"}],
        "items": [{"item_id": "wrong",
                   "statement": "Theorem two : 1 + 1 = 2.",
                   "proof": "Proof.\n  simpl.\n  exact I.\nQed."}],
        "options": {"session_id": "proofs"}})
    mesh.run("formalize", {
        "model": "certainly/coq", "messages": [{"role": "user", "content": "check"}],
        "items": [{"item_id": "r1",
                   "requirement_text": "Adding zero to a natural changes nothing"}],
        "options": {"session_id": "proofs", "model": "prover", "max_attempts": 3}})
    mesh.run("agent", {
        "model": "agent/scripted", "messages": [{"role": "user",
                                                 "content": "What is 6 * 7? Use python."}],
        "max_iterations": 4, "max_total_tokens": 1000, "max_total_seconds": 60,
        "languages": ["python"], "scillm": {"session_id": "chat"}})


@pytest.fixture(scope="package")
def ui_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiMesh]:
    upstreams = {"scripted": ScriptedUpstream(AGENT_SCRIPT).start(),
                 "prover": ScriptedUpstream([{"content": COQ_WRONG},
                                             {"content": COQ_RIGHT}]).start(),
                 "gen": ScriptedUpstream([{"content": json.dumps(VARIANT)}]).start()}
    tmp = tmp_path_factory.mktemp("ui")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": up.url, "api_key": "unused"}}
            for name, up in upstreams.items()],
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp, config_path=config, master_key=MASTER,
                                       trace_url_template=TRACE_TEMPLATE))
    mesh = UiMesh(running, upstreams)
    try:
        _make_runs(mesh)
        yield mesh
    finally:
        running.stop()
        for up in upstreams.values():
            up.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, through Playwright (no browser is downloaded)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/install installs Debian's chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
