"""`codex-agent/<model>` through the mesh's two doors (gRPC, and the OpenAI door with the
real openai SDK), unary and streamed, against `scillm codex-sidecar --mode cli` running a
stand-in `codex` (a real process each)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from codex_sidecar_util import SidecarProcess, fake_calls, fake_codex_bin
from meshutil import RunningMesh, ServedProcess, mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient


@pytest.fixture(scope="module")
def codex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningMesh, Path]]:
    """A CLI-mode sidecar and a mesh whose `codex-agent/*` deployment is that sidecar;
    yields the mesh and the stand-in's log directory."""
    root = tmp_path_factory.mktemp("codex-mesh")
    exe = fake_codex_bin(root / "bin")
    log = root / "log"
    log.mkdir()
    sidecar = SidecarProcess(["--mode", "cli", "--codex-bin", str(exe), "--timeout", "60"],
                             root / "sidecar.out", env={"FAKE_CODEX_LOG": str(log)}).wait_ready()
    config = root / "models.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "codex-agent/*", "litellm_params": {
            "model": "codex-agent/*", "api_base": f"{sidecar.url}/v1"}}],
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(root, config_path=config))
    try:
        yield running, log
    finally:
        running.stop()
        sidecar.stop()


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def test_grpc_unary_and_stream(codex: tuple[RunningMesh, Path]) -> None:
    running, log = codex
    nonce = uuid.uuid4().hex
    async with ScillmClient(running.grpc_target) as client:
        reply = await client.completion.create({"model": "codex-agent/gpt-5",
                                                "messages": _user(f"grpc {nonce}")})
        message = reply.choices[0].message
        assert message.content[0].text == f"ANSWER: grpc {nonce}"
        assert message.reasoning_content.startswith("**Reading the task**")
        assert reply.usage.prompt_tokens == 1200 and reply.usage.completion_tokens == 34
        routing = reply.routing
        assert routing.provider == "codex-agent"
        assert list(routing.retry_stats.statuses) == [200]
        assert routing.retry_stats.attempts == 1 and routing.retry_stats.failures == 0
        assert not routing.retry_stats.HasField("first_failure_status")
        events = [e async for e in client.completion.stream(
            {"model": "codex-agent/gpt-5", "messages": _user(f"grpc stream {nonce}")})]
    deltas = [e.chunk.choices[0].delta for e in events if e.HasField("chunk")
              and e.chunk.choices]
    reasoning = "".join(d.reasoning_content for d in deltas)
    assert reasoning.startswith("**Reading the task**") and "**Answering**" in reasoning
    assert "".join(d.content for d in deltas) == f"ANSWER: grpc stream {nonce}"
    end = events[-1].end
    assert end.usage.total_tokens == 1234 and list(end.routing.retry_stats.statuses) == [200]
    assert [a for c in fake_calls(log) if nonce in c["prompt"] for a in c["argv"]
            if a.startswith("--model")] == ["--model=gpt-5", "--model=gpt-5"]


def test_openai_sdk_unary_and_stream(codex: tuple[RunningMesh, Path]) -> None:
    running, _ = codex
    sdk = openai.OpenAI(base_url=f"{running.http_url}/v1", api_key="unused", max_retries=0,
                        timeout=60)
    reply = sdk.chat.completions.create(model="codex-agent/gpt-5",
                                        messages=_user("through the door"))
    assert reply.choices[0].message.content == "ANSWER: through the door"
    assert (reply.choices[0].message.model_extra or {})["reasoning_content"].startswith(
        "**Reading the task**")
    routing = (reply.model_extra or {})["scillm"]["routing"]
    assert routing["provider"] == "codex-agent"
    assert routing["retry_stats"] == {"attempts": 1, "failures": 0, "total_sleep_ms": 0.0,
                                      "final_status": 200, "first_failure_status": None,
                                      "statuses": [200]}
    chunks = list(sdk.chat.completions.create(
        model="codex-agent/gpt-5", messages=_user("streamed door"),
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ANSWER: streamed door"
    assert any((c.choices[0].delta.model_extra or {}).get("reasoning_content")
               for c in chunks if c.choices)
    last = chunks[-1]
    assert last.usage is not None and last.usage.total_tokens == 1234
    assert (last.model_extra or {})["scillm"]["routing"]["retry_stats"]["statuses"] == [200]


def test_history_is_cut_to_system_and_the_last_eight(codex: tuple[RunningMesh, Path]) -> None:
    running, log = codex
    nonce = uuid.uuid4().hex
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"t{i} {nonce}"}
             for i in range(11)]
    sdk = openai.OpenAI(base_url=f"{running.http_url}/v1", api_key="unused", max_retries=0,
                        timeout=60)
    sdk.chat.completions.create(model="codex-agent/gpt-5", messages=[
        {"role": "system", "content": f"rules {nonce}"}, *turns])
    (call,) = [c for c in fake_calls(log) if nonce in c["prompt"]]
    assert call["prompt"].startswith(f"rules {nonce}\n\nAssistant: t3 {nonce}")
    assert f"t2 {nonce}" not in call["prompt"] and call["prompt"].endswith(f"t10 {nonce}")


def test_no_credentials_reaches_both_doors_as_401(codex: tuple[RunningMesh, Path]) -> None:
    running, _ = codex
    sdk = openai.OpenAI(base_url=f"{running.http_url}/v1", api_key="unused", max_retries=0,
                        timeout=60)
    with pytest.raises(openai.AuthenticationError, match="codex login"):
        sdk.chat.completions.create(model="codex-agent/gpt-5",
                                    messages=_user("[fake:noauth] hi"))


async def test_no_credentials_over_grpc_is_unauthenticated(
        codex: tuple[RunningMesh, Path]) -> None:
    import grpc

    running, _ = codex
    async with ScillmClient(running.grpc_target) as client:
        with pytest.raises(RPCError) as caught:
            await client.completion.create({"model": "codex-agent/gpt-5",
                                            "messages": _user("[fake:noauth] grpc")})
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_serve_finds_the_sidecar_in_codex_agent_api_base(tmp_path: Path) -> None:
    """`scillm serve` with CODEX_AGENT_API_BASE set serves codex-agent/<model> with no
    configuration file."""
    sidecar = SidecarProcess(["--mode", "echo"], tmp_path / "echo.out").wait_ready()
    served = ServedProcess("codex-env", ["--grpc-port", "0", "--http-port", "0"], env={
        **os.environ, "CODEX_AGENT_API_BASE": f"{sidecar.url}/v1",
        "SCILLM_STORE_PATH": str(tmp_path / "runs.sqlite3")}, log=tmp_path / "serve.out")
    try:
        served.wait_ready()
        sdk = openai.OpenAI(base_url=f"{served.http_url}/v1", api_key="unused", max_retries=0,
                            timeout=60)
        assert "codex-agent/*" in [m.id for m in sdk.models.list()]
        reply = sdk.chat.completions.create(model="codex-agent/gpt-5",
                                            messages=_user("env wired"))
        assert reply.choices[0].message.content == "env wired"
    finally:
        served.stop()
        sidecar.stop()
