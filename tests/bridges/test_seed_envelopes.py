"""The seed's own request bodies, as its README, QUICKSTART and users send them, through a
real mesh: `/bridge/complete` (CodeWorld, Certainly, Lean 4), `/agent/run` and `/ready`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from http_tools_server import HttpToolServer
from meshutil import RunningMesh, mesh_settings, start_mesh
from scripted_upstream import ScriptedUpstream

SUM = "def solve(task, context):\n    return sum(context['input'])\n"
ZERO = "def solve(task, context):\n    return 0\n"


class Mesh:
    def __init__(self, running: RunningMesh, upstream: ScriptedUpstream,
                 tools: HttpToolServer) -> None:
        self.running, self.upstream, self.tools = running, upstream, tools

    def script(self, *replies: dict[str, Any]) -> None:
        self.upstream.replies = list(replies)
        self.upstream._index = 0
        self.upstream.requests.clear()

    def post(self, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(f"{self.running.http_url}{path}", json=body, timeout=120,
                          headers=headers)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    upstream = ScriptedUpstream([{"content": "unused"}]).start()
    tools = HttpToolServer(busy_429s=0).start()
    tmp = tmp_path_factory.mktemp("seed")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": upstream.url, "api_key": "x"}}
            for name in ("gen", "weak", "strong")],
        "litellm_settings": {"cache": False},
        "http_tool_servers": {"lab": {"url": tools.url}}}))
    running = start_mesh(mesh_settings(tmp, config_path=config, codeworld_model="gen"))
    yield Mesh(running, upstream, tools)
    running.stop()
    tools.stop()
    upstream.stop()


# --------------------------------------------------------------------------- CodeWorld

def test_the_seed_codeworld_body_runs_its_code_variants(mesh: Mesh) -> None:
    body = {"messages": [{"role": "user", "content": "sum the input"}],
            "items": [{"task_id": "t1", "context": {"input": [1, 2, 3], "expected": 6,
                                                    "code_variants": {"a": SUM, "b": ZERO}}}],
            "provider": {"name": "codeworld", "args": {"judge": True}},
            "options": {"session_id": "s1"}}
    reply = mesh.post("/bridge/complete", body)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["summary"] == {"items": 1, "succeeded": 2, "failed": 0}
    (result,) = out["results"]
    assert result["item_id"] == "t1" and result["best_strategy"] == "a"
    assert result["outputs"]["result"] == 6 and result["scores"]["correctness"] == 1.0
    assert {s["name"] for s in result["strategies"]} == {"a", "b"}
    manifest = out["run_manifest"]
    assert manifest["run_id"] and manifest["item_ids"] == ["t1"]
    assert manifest["options"]["session_id"] == "s1" and "mcts_stats" not in manifest
    assert out["duration_ms"] > 0 and out["signals"]["session_id"] == "s1"
    assert "error" not in out["signals"]  # recorded in its session


def test_a_run_its_session_store_failed_to_record_says_so_in_its_signals() -> None:
    from scillm.bridges.seed.replies import codeworld_reply
    from scillm.codeworld.v1 import codeworld_pb2 as cw

    summary = cw.CodeWorldRunSummary(items=0)
    summary.session.CopyFrom(cw.SessionInfo(session_id="s1", mean_aggregate=0.5,
                                            error="redis session store: refused"))
    out = codeworld_reply({}, cw.CodeWorldRunRequest(), summary, [], 1.0, None)
    assert out["signals"] == {"session_id": "s1", "plateau": False, "current": 0.5,
                              "error": "redis session store: refused"}


def test_the_seed_one_post_autogenerate_and_mcts_body(mesh: Mesh) -> None:
    """The seed README's body, verbatim; its users read .run_manifest.mcts_stats."""
    variants = {"variants": [
        {"id": "v_one", "title": "one", "rationale": "constant", "code":
            "def solve(task, context):\n    return 1\n"},
        {"id": "v_two", "title": "two", "rationale": "longer", "code":
            "def solve(task, context):\n    x = 1\n    y = 1\n    return x + y\n"}]}
    mesh.script({"content": json.dumps(variants)})
    body = {"messages": [{"role": "user", "content": "Autogenerate then search"}],
            "items": [{"task": "t", "context": {}}],
            "provider": {"name": "codeworld", "args": {
                "strategy": "mcts", "strategy_config": {
                    "autogenerate": {"enabled": True, "n": 3},
                    "rollouts": 24, "depth": 6, "uct_c": 1.25}}}}
    reply = mesh.post("/bridge/complete", body)
    assert reply.status_code == 200, reply.text
    stats = reply.json()["run_manifest"]["mcts_stats"]
    assert (stats["rollouts"], stats["depth"], stats["uct_c"]) == (24, 6, 1.25)
    assert stats["best_variant"] in ("v_one", "v_two") and stats["error"] is None
    assert stats["generation"]["model"] == "gen" and stats["generation"]["n"] == 3
    assert mesh.upstream.requests[0]["model"] == "gen"  # CodeWorld's model, not Prove's
    assert reply.json()["run_manifest"]["strategy_name"] == "mcts"


def test_codeworld_legacy_fields(mesh: Mesh) -> None:
    body = {"messages": [{"role": "user", "content": "sum"}],
            "items": [{"id": "x", "spec": "sum the list",
                       "context": {"input": [2, 2], "expected": 4}}],
            "provider": {"args": {"strategies": [{"name": "sum", "code": SUM},
                                                 {"name": "zero", "code": ZERO}]}},
            "codeworld_metrics": ["correctness"], "codeworld_iterations": 2,
            "codeworld_allowed_languages": ["python"], "request_timeout": 60}
    reply = mesh.post("/bridge/complete", body)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["statistics"] == {"iterations": 2, "metrics": ["correctness"],
                                 "allowed_languages": ["python"]}
    result = out["results"][0]
    assert result["item_id"] == "x" and result["best_strategy"] == "sum"
    assert result["scores"]["aggregate"] == 1.0  # ranked by correctness alone
    body["provider"]["args"]["strategies"].append(
        {"name": "js", "language": "javascript", "code": "function solve() { return 4 }"})
    refused = mesh.post("/bridge/complete", body)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "codeworld_allowed_languages"


def test_ours_stay_ours_and_the_header_decides(mesh: Mesh) -> None:
    body = {"messages": [{"role": "user", "content": "sum"}],
            "items": [{"task_id": "a", "context": {"input": [1], "expected": 1}}],
            "provider": {"args": {"strategies": [{"name": "sum", "source": SUM}]}}}
    ours = mesh.post("/bridge/complete", body)
    assert ours.json()["object"] == "chat.completion"
    seed = mesh.post("/bridge/complete", body, **{"x-scillm-envelope": "seed"})
    assert seed.json()["results"][0]["item_id"] == "a"
    named = {**body, "provider": {**body["provider"], "name": "codeworld"}}
    assert mesh.post("/bridge/complete", named, **{"x-scillm-envelope": "scillm"}
                     ).json()["object"] == "chat.completion"
    unknown = mesh.post("/bridge/complete", {**body, "provider": {"name": "mystery"}})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "provider.name"


# --------------------------------------------------------------------------- Certainly

def test_the_seed_lean4_body_says_what_to_configure(mesh: Mesh) -> None:
    """The seed QUICKSTART's Lean 4 batch: requirements only, and no formalizer here."""
    body = {"messages": [{"role": "system", "content": "Analyse the batch"}],
            "lean4_requirements": [{"requirement_text": "0 + n = n"},
                                   {"requirement_text": "The sum of two even numbers is even"}],
            "lean4_flags": [], "max_seconds": 180}
    reply = mesh.post("/bridge/complete", body)
    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]["message"]
    assert "SCILLM_PROVE_MODEL" in message and "formalize.model" in message
    assert "callable" not in message
    flagged = mesh.post("/bridge/complete", {**body, "lean4_flags": ["--no-llm"]})
    assert flagged.status_code == 400 and "--no-llm" in flagged.json()["error"]["message"]
    unknown = mesh.post("/bridge/complete", {**body, "lean4_flags": ["--fast"]})
    assert unknown.json()["error"]["param"] == "lean4_flags"


def test_a_certainly_body_answers_proof_results_by_item(mesh: Mesh) -> None:
    body = {"messages": [{"role": "user", "content": "check"}],
            "items": [{"id": "inc", "backend": "smt", "preamble": "(declare-const x Int)",
                       "statement": "(> (+ x 1) x)"},
                      {"item_id": "big", "backend": "smt", "preamble": "(declare-const x Int)",
                       "statement": "(> x 5)"}],
            "provider": {"name": "certainly"}, "options": {"session_id": "p1"}}
    reply = mesh.post("/bridge/complete", body)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["summary"]["items"] == 2 and out["summary"]["proved"] == 1
    by_id = {r["item_id"]: r for r in out["proof_results"]}
    assert by_id["inc"]["ok"] is True and by_id["big"]["verdict"] == "refuted"
    assert out["results"] == out["proof_results"]
    assert out["run_manifest"]["run_id"] and out["run_manifest"]["options"]["session_id"] == "p1"
    assert out["duration_ms"] > 0


def test_provider_lean4_goes_to_the_lean_backend(mesh: Mesh) -> None:
    body = {"messages": [{"role": "user", "content": "check"}],
            "items": [{"statement": "theorem t : True := trivial"}],
            "provider": {"name": "lean4"}}
    reply = mesh.post("/bridge/complete", body)
    if reply.status_code == 200:  # a Lean toolchain is installed
        assert reply.json()["proof_results"][0]["backend"] == "lean4"
    else:
        assert reply.status_code == 400 and "lean4" in reply.json()["error"]["message"]


# --------------------------------------------------------------------------- Agent

def test_ready_answers_like_the_seed_agent_app(mesh: Mesh) -> None:
    reply = httpx.get(f"{mesh.running.http_url}/ready", timeout=30)
    assert reply.status_code == 200 and reply.json()["ok"] is True


def test_the_seed_agent_body_with_http_tools(mesh: Mesh) -> None:
    """The seed README's /agent/run body (tool_backend http), answered in its shape."""
    mesh.script({"content": None, "tool_calls": [{"id": "e1", "type": "function", "function": {
        "name": "lab__echo", "arguments": json.dumps({"text": "hello"})}}]},
        {"content": "It said hello."})
    body = {"messages": [{"role": "user", "content": "hi"}], "model": "weak",
            "tool_backend": "http", "tool_http_base_url": mesh.tools.url,
            "tool_http_headers": {"Authorization": "Bearer <token>"}}
    reply = mesh.post("/agent/run", body)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert out["ok"] is True and out["final_answer"] == "It said hello."
    assert out["stopped_reason"] == "success"
    assert set(out["metrics"]) == {"iterations", "ttotal_ms", "escalated", "used_model"}
    assert out["metrics"]["iterations"] == 2 and out["metrics"]["used_model"] == "weak"
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "tool", "assistant"]
    (_, headers, _), = mesh.tools.invokes("echo")
    assert headers["authorization"] == "Bearer <token>"
    elsewhere = mesh.post("/agent/run", {**body, "tool_http_base_url": "http://127.0.0.1:9"})
    assert elsewhere.status_code == 400 and "not configured" in elsewhere.text


def test_the_seed_agent_escalates_on_budget_exceeded(mesh: Mesh) -> None:
    mesh.script({"content": "budget exceeded"}, {"content": "solved"})
    reply = mesh.post("/agent/run", {
        "messages": [{"role": "user", "content": "hard"}], "model": "weak",
        "escalate_on_budget_exceeded": True, "escalate_model": "strong"})
    out = reply.json()
    assert out["final_answer"] == "solved"
    assert out["metrics"]["escalated"] is True and out["metrics"]["used_model"] == "strong"
    mesh.script({"content": "ok"})
    ours = mesh.post("/agent/run", {"messages": [{"role": "user", "content": "hi"}],
                                    "model": "weak"})
    assert ours.json()["answer"] == "ok" and "final_answer" not in ours.json()


def test_lean4_requirements_become_requirement_items() -> None:
    from scillm.bridges.seed.prove import request_from_envelope
    from scillm.prove.v1 import prove_pb2 as pv

    req = request_from_envelope({
        "messages": [], "lean4_requirements": [
            {"requirement_text": "0 + n = n", "metadata": {"source": "q1"}},
            {"requirement": "n + 0 = n"}, "1 = 1"],
        "lean4_flags": ["--deterministic"], "model": "lean4", "max_seconds": 180})
    assert [i.requirement_text for i in req.items] == ["0 + n = n", "n + 0 = n", "1 = 1"]
    assert req.items[0].metadata["source"] == "q1"
    assert req.default_backend == pv.BACKEND_LEAN4
    assert req.formalize.HasField("temperature") and req.formalize.temperature == 0.0
    assert req.limits.timeout.seconds == 180


def test_a_misspelt_item_field_is_named_with_the_one_it_may_mean() -> None:
    """An item of `statment` failed as "nothing to check: statement, proof and
    requirement_text are all empty", which does not say what was wrong."""
    from scillm.bridges.seed.prove import request_from_envelope
    from scillm.clients import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="'statment' \\(did you mean 'statement'") \
            as info:
        request_from_envelope({"model": "certainly/smt", "messages": [],
                               "items": [{"id": "a", "statment": "(> 1 0)", "tag": "x"}]})
    assert info.value.param == "items[0]"
    # Keys the envelope does not read still pass when the item has something to check.
    req = request_from_envelope({"model": "certainly/smt", "messages": [],
                                 "items": [{"statement": "(> 1 0)", "tag": "x"}]})
    assert req.items[0].statement == "(> 1 0)"


def test_the_reply_line_counts_refutations_among_the_failures_and_apart() -> None:
    from scillm.bridges.seed.prove import summary_text
    from scillm.prove.v1 import prove_pb2 as pv

    line = summary_text(pv.ProveSummary(items=5, proved=3, vacuous=1, failed=1, refuted=1))
    assert line == "Certainly: 5 items, 3 proved (1 vacuously), 2 failed (1 refuted), 0 unproved"


@pytest.mark.parametrize(("args", "wanted"), [
    ({"n_variants": 2}, 2), ({"num_variants": 4}, 4),
    ({"strategy_config": {"n_variants": 5}}, 5), ({}, 3),
    ({"num_variants": 4, "strategy_config": {"autogenerate": {"enabled": True, "n": 6}}}, 6),
])
def test_the_number_of_variants_is_read_under_each_of_its_names(args: dict[str, Any],
                                                                 wanted: int) -> None:
    from scillm.bridges.seed.codeworld import request_from_envelope

    request = request_from_envelope({
        "model": "codeworld/mcts:auto", "items": [{"task_id": "t", "context": {}}],
        "provider": {"name": "codeworld", "args": {"generator_model": "m", **args}}})
    assert request.mcts.autogenerate and request.mcts.num_variants == wanted


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/agent/run", {"messages": [{"role": "user", "content": "x"}], "model": "gen",
                    "max_iterations": 1e20}, "max_iterations"),
    ("/bridge/complete", {"messages": [], "provider": {"name": "certainly"}, "items": [
        {"statement": "(> 1 0)", "backend": "smt", "metadata": ["a", "b"]}]},
     "items[0].metadata"),
    ("/bridge/complete", {"messages": [], "provider": {"name": "certainly"},
                          "items": [{"statement": "(> 1 0)", "backend": "smt"}],
                          "options": {"max_attempts": "abc"}}, "options.max_attempts"),
    ("/bridge/complete", {"messages": [], "provider": {"name": "certainly"},
                          "items": [{"statement": "(> 1 0)", "backend": "smt"}],
                          "options": {"max_seconds": 1e300}}, "options.max_seconds"),
])
def test_out_of_range_and_mistyped_fields_are_400_naming_them(
        mesh: Mesh, path: str, body: dict[str, Any], param: str) -> None:
    reply = mesh.post(path, body)
    assert reply.status_code == 400, reply.text
    assert param in json.dumps(reply.json())


_HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/agent/run", {"messages": _HI, "model": "gen", "use_tools": "false"}, "use_tools"),
    ("/agent/run", {"messages": _HI, "model": "gen", "auto_run_code_on_code_block": "no"},
     "auto_run_code_on_code_block"),
    ("/agent/run", {"messages": _HI, "model": "gen", "enable_repair": 0}, "enable_repair"),
    ("/v1/chat/completions", {"messages": _HI, "model": "agent/gen", "auto_run_code": "false"},
     "auto_run_code"),
    ("/v1/chat/completions", {"messages": _HI, "model": "agent/gen", "trace": "yes"}, "trace"),
    ("/bridge/complete", {"messages": _HI, "items": [{"task_id": "t", "context": {
        "code_variants": {"a": "x = 1"}}}], "provider": {"name": "codeworld", "args": {
            "limits": {"strict": "false"}}}}, "strict"),
])
def test_a_flag_that_is_not_a_boolean_is_refused_not_read_as_true(
        mesh: Mesh, path: str, body: dict[str, Any], param: str) -> None:
    """Flags were read with bool(): `"auto_run_code": "false"` turned code running on, the
    opposite of what the caller wrote. A flag must be true, false or null (400 naming it)."""
    reply = mesh.post(path, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert param in (error["param"] or "") and "true or false" in error["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": 5}, "model"),
    ({"model": {"name": "gen"}}, "model"),
    ({"model": "gen", "escalation_model": ["strong"]}, "escalation_model"),
    ({"model": "gen", "tool_backend": 1, "question": "q"}, "tool_backend"),
])
def test_an_agent_model_that_is_not_a_string_is_refused_not_stringified(
        mesh: Mesh, body: dict[str, Any], param: str) -> None:
    """`"model": 5` ran an agent on a model named "5" (and failed inside the run); a name
    of the wrong type is a 400 naming the field, in both envelopes."""
    reply = mesh.post("/agent/run", {"messages": [{"role": "user", "content": "hi"}], **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


_CW_ITEMS = [{"task_id": "t", "context": {"code_variants": {"a": "x = 1"}}}]


def _codeworld(**args: Any) -> dict[str, Any]:
    return {"messages": _HI, "items": _CW_ITEMS, "provider": {"name": "codeworld",
                                                              "args": args}}


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/bridge/complete", _codeworld(limits={"timeout_s": 1e300}),
     "provider.args.limits.timeout_s"),
    ("/bridge/complete", _codeworld(limits={"memory_bytes": 1e30}),
     "provider.args.limits.memory_bytes"),
    ("/bridge/complete", _codeworld(limits={"concurrency": 1e12}),
     "provider.args.limits.concurrency"),
    ("/bridge/complete", {**_codeworld(rollouts=1e20), "model": "codeworld/mcts"}, "rollouts"),
    ("/bridge/complete", {**_codeworld(seed=1e30), "model": "codeworld/mcts"}, "seed"),
    ("/bridge/complete", {**_codeworld(), "model": "codeworld/mcts", "time_budget_s": 1e300},
     "time_budget_s"),
    ("/bridge/complete", {**_codeworld(), "request_timeout": 1e300}, "request_timeout"),
    ("/agent/run", {"messages": _HI, "model": "gen", "max_total_seconds": 1e300},
     "max_total_seconds"),
    ("/agent/run", {"messages": _HI, "model": "gen", "tool_backend": "echo",
                    "max_total_seconds": 1e300}, "max_total_seconds"),
    ("/v1/chat/completions", {"messages": _HI, "model": "agent/echo/x",
                              "max_total_seconds": 1e300}, "max_total_seconds"),
])
def test_a_number_past_its_proto_field_is_400_naming_it(
        mesh: Mesh, path: str, body: dict[str, Any], param: str) -> None:
    """Numbers too large for their proto field (an int32, an int64, a Duration) raised
    OverflowError or "Value out of range" inside the door: 500."""
    reply = mesh.post(path, body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


@pytest.mark.parametrize(("judge", "score"), [
    ({"weights": {"correctness": 1e308}}, None),
    (None, "def score(task, context, outputs, timings):\n    return {'a': 1e308, 'b': 1e308}\n"),
])
def test_a_run_whose_scores_would_overflow_is_no_500(
        mesh: Mesh, judge: dict[str, Any] | None, score: str | None) -> None:
    """A weight of 1e308, or metrics of 1e308, made scores inf or NaN, and the reply
    "Out of range float values are not JSON compliant": 500. The weight is refused (400
    naming it); such metrics are the scorer's error, and the rubric scores the run."""
    args: dict[str, Any] = {"judge": judge} if judge else {"score_source": score}
    reply = mesh.post("/bridge/complete", _codeworld(**args))
    if judge:
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "scoring.judge.weights"
        return
    assert reply.status_code == 200, reply.text
    result = reply.json()["results"][0]
    assert result["best_strategy"] == "a" and "brevity" in result["scores"]  # the rubric



@pytest.mark.parametrize("path", ["/bridge/complete", "/v1/chat/completions"])
@pytest.mark.parametrize("messages", [5, True, "sum", {"role": "user"}])
def test_codeworld_messages_that_are_no_array_are_a_400(mesh: Mesh, path: str,
                                                        messages: object) -> None:
    """`"messages": 5` (or true) on a CodeWorld run was a 500 with a traceback: the task
    text was read by iterating whatever `messages` was."""
    body = {"model": "codeworld", "messages": messages,
            "items": [{"task_id": "a", "context": {"input": [1], "expected": 1}}],
            "provider": {"args": {"strategies": [{"name": "sum", "source": SUM}]}}}
    reply = mesh.post(path, body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "messages"
