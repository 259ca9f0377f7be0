"""`scillm doctor`: real binaries, loopback upstreams, a real mesh's health."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from meshutil import RunningMesh
from otlp_receiver import OtlpReceiver

from scillm.server.commands.doctor import (
    Check,
    Status,
    add_arguments,
    collect,
    doctor,
    format_table,
    run_doctor,
    unmet,
)

SCILLM = str(Path(sys.executable).parent / "scillm")
NO_OTEL = {"PATH": "/usr/bin:/bin"}  # an environment without tracing
KEY = "sk-doctor-test-secret"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _by_part(checks: list[Check]) -> dict[str, Check]:
    return {c.part: c for c in checks}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


Handler = Callable[[str, str, dict[str, str]], tuple[int, dict[str, object]]]


@asynccontextmanager
async def _http_server(handler: Handler | None) -> AsyncIterator[int]:
    """A tiny HTTP/1.1 server on 127.0.0.1; `handler(method, path, headers)` answers.

    With no handler, it accepts connections and never answers.
    """

    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            if handler is None:
                await asyncio.sleep(60)
                return
            request_line, *lines = head.split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines if line)}
            await reader.readexactly(int(headers.get("content-length", "0")))
            status, body = handler(method, path, headers)
            data = json.dumps(body).encode()
            writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                         f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
                         .encode() + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def _openai(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    if headers.get("authorization") != f"Bearer {KEY}":
        return 401, {"error": {"message": "bad key", "type": "invalid_request_error"}}
    if method == "GET" and path == "/v1/models":
        return 200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]}
    if method == "POST" and path == "/v1/chat/completions":
        return 200, {"id": "c1", "object": "chat.completion", "created": 0, "model": "tiny",
                     "choices": [{"index": 0, "finish_reason": "length",
                                  "message": {"role": "assistant", "content": "pong"}}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    return 404, {"error": {"message": "no such route"}}


def _openai_config(tmp_path: Path, port: int, key: str = "os.environ/DOCTOR_TEST_KEY") -> Path:
    return _config(tmp_path, f"""
model_list:
  - model_name: tiny
    litellm_params:
      model: openai/tiny
      api_base: http://127.0.0.1:{port}/v1
      api_key: {key}
""")


# --------------------------------------------------------------------------- tools


async def test_tools_on_this_host() -> None:
    checks = _by_part(await collect(environ=NO_OTEL))
    for part, exe in (("z3", "z3"), ("coqc", "coqc"), ("coqtop", "coqtop"),
                      ("bubblewrap", "bwrap"), ("node", "node")):
        assert shutil.which(exe), f"{exe} is missing: scripts/install installs it"
        assert checks[part].status is Status.OK, checks[part]
    assert "namespaces work" in checks["bubblewrap"].detail
    if shutil.which("lean") is None:
        lean = checks["lean"]
        assert lean.status is Status.MISSING
        assert lean.hint == "install elan/lean4; Lean checks are optional"
    assert checks["otlp"] == Check("otlp", Status.SKIPPED, "tracing off: "
                                   "OTEL_EXPORTER_OTLP_ENDPOINT is unset, spans go nowhere")
    assert checks["redis"].status is Status.SKIPPED
    assert checks["config"].status is Status.OK
    assert checks["provider:echo/*"].status is Status.OK
    assert checks["mesh"].status is Status.SKIPPED


async def test_the_provers_are_the_ones_a_jail_runs(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A jail runs a prover named without a directory from its own PATH (/usr/bin's z3),
    whatever the server's PATH holds first (a venv's z3, from the z3-solver wheel): the
    doctor reported the venv's, which the mesh never runs."""
    impostor = tmp_path / "z3"
    impostor.write_text("#!/bin/sh\necho 'Z3 version 99.0.0 - not the jail one'\n")
    impostor.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert shutil.which("z3") == str(impostor)
    z3 = _by_part(await collect(environ=NO_OTEL))["z3"]
    assert z3.status is Status.OK and "99.0.0" not in z3.detail, z3


def test_strict_expectations_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_doctor(_args("--strict", "--expect", "codeworld,certainly")) == 0
    out = capsys.readouterr()
    assert "bubblewrap" in out.out and "not ready" not in out.err
    if shutil.which("lean") is None:
        assert run_doctor(_args("--strict", "--expect", "lean4")) == 1
        assert "lean4: lean is MISSING" in capsys.readouterr().err
        # Lean is optional: its absence alone said "not ready: lean is MISSING"
        assert run_doctor(_args()) == 0
        said = capsys.readouterr().err
        assert "not ready" not in said and "ready; optional parts missing: lean" in said
        # without --strict the same gap is reported, not fatal
        assert run_doctor(_args("--expect", "lean4")) == 0
    assert run_doctor(_args("--expect", "nonsense")) == 2
    assert "unknown --expect name 'nonsense'" in capsys.readouterr().err


def test_unmet_rules() -> None:
    checks = [Check("z3", Status.FAILED), Check("coqc", Status.OK), Check("coqtop", Status.OK),
              Check("lean", Status.MISSING), Check("bubblewrap", Status.OK),
              Check("otlp", Status.SKIPPED), Check("provider:a", Status.OK),
              Check("mesh", Status.OK), Check("scillm.prove.v1.ProveService", Status.OK),
              Check("scillm.completion.v1.CompletionService", Status.OK),
              Check("scillm.codeworld.v1.CodeWorldService", Status.OK),
              Check("scillm.codeworld.v1.CodeWorldService/bubblewrap", Status.MISSING)]
    assert unmet(checks, ["certainly", "coq"]) == []  # coqc is enough for certainly
    assert unmet(checks, ["smt"]) == ["smt: z3 is FAILED"]
    assert unmet(checks, ["completion"]) == []
    assert unmet(checks, ["otlp"]) == ["otlp: otlp is SKIPPED"]
    # gRPC health tells the same story: the server's bubblewrap entry counts for codeworld
    assert unmet(checks, ["codeworld"]) == [
        "codeworld: scillm.codeworld.v1.CodeWorldService/bubblewrap is MISSING"]
    assert unmet(checks, ["agent"]) == [
        "agent: the mesh does not serve scillm.agent.v1.AgentService"]
    without_mesh = [c for c in checks if not c.part.startswith(("mesh", "scillm."))]
    assert unmet(without_mesh, ["codeworld", "agent"]) == []
    mesh_down = [*without_mesh, Check("mesh", Status.FAILED)]
    assert unmet(mesh_down, ["codeworld", "redis"]) == [
        "codeworld: mesh is FAILED", "redis: redis was not checked"]
    assert unmet(checks, None) == ["z3 is FAILED", "lean is MISSING",
                                   "scillm.codeworld.v1.CodeWorldService/bubblewrap is MISSING"]
    # An optional part that is missing leaves the rest ready; broken, or asked for, it counts.
    optional = [c for c in checks if c.part != "lean"]
    assert unmet([*optional, Check("lean", Status.MISSING, optional=True)], None) == [
        "z3 is FAILED", "scillm.codeworld.v1.CodeWorldService/bubblewrap is MISSING"]
    assert "lean is FAILED" in unmet([*optional, Check("lean", Status.FAILED, optional=True)],
                                     None)
    assert unmet([Check("lean", Status.MISSING, optional=True)], ["lean4"]) == [
        "lean4: lean is MISSING"]
    assert unmet([Check("provider:a", Status.MISSING)], ["completion"]) == [
        "completion: provider:a is MISSING", "completion: no configured provider is OK"]


# --------------------------------------------------------------------------- providers


async def test_openai_provider_on_a_closed_port(tmp_path: Path) -> None:
    config = _openai_config(tmp_path, _closed_port(), key=KEY)
    check = _by_part(await collect(config, environ=NO_OTEL))["provider:tiny"]
    assert check.status is Status.FAILED
    assert "cannot connect" in check.detail and check.hint
    assert KEY not in check.detail and "key inline" in check.detail


async def test_openai_provider_live_on_loopback(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCTOR_TEST_KEY", KEY)
    async with _http_server(_openai) as port:
        config = _openai_config(tmp_path, port)
        code = await doctor(_args("--config", str(config), "--live", "--json", "--strict",
                                  "--expect", "completion"), environ=NO_OTEL)
    out = capsys.readouterr().out
    assert KEY not in out
    report = json.loads(out)
    checks = {c["part"]: c for c in report["checks"]}
    assert checks["provider:tiny"]["status"] == "OK", checks["provider:tiny"]
    assert "GET /models 200" in checks["provider:tiny"]["detail"]
    assert "key from $DOCTOR_TEST_KEY" in checks["provider:tiny"]["detail"]
    assert checks["live:tiny"]["status"] == "OK", checks["live:tiny"]
    assert code == 0 and report["ready"] and report["unmet"] == []


async def test_openai_provider_rejects_the_key(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCTOR_TEST_KEY", "sk-wrong")
    async with _http_server(_openai) as port:
        checks = _by_part(await collect(_openai_config(tmp_path, port), live=True,
                                        environ=NO_OTEL))
    assert checks["provider:tiny"].status is Status.FAILED
    assert "key rejected (401)" in checks["provider:tiny"].detail
    assert checks["provider:tiny"].hint == "check $DOCTOR_TEST_KEY"
    assert checks["live:tiny"].status is Status.FAILED
    assert "sk-wrong" not in format_table(list(checks.values()))


async def test_missing_api_key_names_the_variable(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCTOR_TEST_KEY", raising=False)
    config = _openai_config(tmp_path, _closed_port())
    check = _by_part(await collect(config, environ=NO_OTEL))["provider:tiny"]
    assert check.status is Status.FAILED
    assert "DOCTOR_TEST_KEY" in check.detail and check.hint == "export DOCTOR_TEST_KEY=..."


async def test_a_silent_upstream_is_bounded(tmp_path: Path) -> None:
    async with _http_server(None) as port:
        started = time.monotonic()
        checks = _by_part(await collect(_openai_config(tmp_path, port, key=KEY),
                                        timeout_s=0.5, environ=NO_OTEL))
    assert time.monotonic() - started < 5
    assert checks["provider:tiny"].status is Status.FAILED


async def test_a_bad_config_is_a_failed_part(tmp_path: Path) -> None:
    config = _config(tmp_path, "model_list: []\n")
    checks = _by_part(await collect(config, environ=NO_OTEL))
    assert checks["config"].status is Status.FAILED and "model_list" in checks["config"].detail
    assert not any(p.startswith("provider:") for p in checks)
    missing = _by_part(await collect(tmp_path / "absent.yaml", environ=NO_OTEL))
    assert missing["config"].status is Status.FAILED
    broken = _by_part(await collect(_config(tmp_path, "model_list: [\n"), environ=NO_OTEL))
    assert broken["config"].status is Status.FAILED


# --------------------------------------------------------------------------- redis, otlp


async def test_otlp_says_where_traces_go_and_that_the_receiver_answers() -> None:
    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        check = _by_part(await collect(environ=env))["otlp"]
        assert check == Check("otlp", Status.OK, f"traces go to {receiver.endpoint} "
                              "(OTEL_EXPORTER_OTLP_ENDPOINT, plaintext): the OTLP "
                              "TraceService answers"), check
        # The traces-only variable wins; without a scheme, INSECURE says plaintext.
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"127.0.0.1:{receiver.port}",
               "OTEL_EXPORTER_OTLP_INSECURE": "true"}
        check = _by_part(await collect(environ=env))["otlp"]
        assert check.status is Status.OK, check
        assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, plaintext" in check.detail
        off = _by_part(await collect(environ={**env, "OTEL_SDK_DISABLED": "true"}))["otlp"]
        assert off.status is Status.SKIPPED and "OTEL_SDK_DISABLED" in off.detail


async def test_otlp_endpoint_on_a_closed_port() -> None:
    port = _closed_port()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    check = _by_part(await collect(environ=env))["otlp"]
    assert check.status is Status.FAILED, check
    assert check.detail.startswith(f"traces go to http://127.0.0.1:{port} "
                                   "(OTEL_EXPORTER_OTLP_ENDPOINT, plaintext): UNAVAILABLE")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in check.hint


async def test_otlp_endpoint_that_is_no_trace_receiver() -> None:
    # A gRPC server without TraceService: it answers, but not as a collector.
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
        check = _by_part(await collect(environ=env))["otlp"]
    finally:
        await server.stop(0)
    assert check.status is Status.FAILED and "no OTLP trace receiver" in check.detail
    # A port that accepts connections and never speaks: the deadline, not a hang.
    async with _http_server(None) as silent:
        started = time.monotonic()
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent}"}
        check = _by_part(await collect(environ=env, timeout_s=1.0))["otlp"]
    assert time.monotonic() - started < 5
    assert check.status is Status.FAILED, check


# `redis_port` (a real redis-server) comes from tests/conftest.py.


async def test_redis_when_configured(tmp_path: Path, redis_port: int) -> None:
    up = _config(tmp_path, "model_list: [{model_name: e, litellm_params: {model: echo/e}}]\n"
                 f"litellm_settings: {{cache: true, cache_params: {{type: redis, "
                 f"host: 127.0.0.1, port: {redis_port}}}}}\n")
    assert _by_part(await collect(up, environ=NO_OTEL))["redis"].status is Status.OK
    down = _config(tmp_path, "model_list: [{model_name: e, litellm_params: {model: echo/e}}]\n"
                   f"router_settings: {{redis_host: 127.0.0.1, redis_port: {_closed_port()}}}\n"
                   "litellm_settings: {cache: true}\n")
    check = _by_part(await collect(down, environ=NO_OTEL))["redis"]
    assert check.status is Status.FAILED and "cannot connect" in check.detail


async def test_redis_of_the_rate_windows_is_checked_too(tmp_path: Path, redis_port: int) -> None:
    """SCILLM_REDIS_URL (the keys' windows, the sessions) was not checked: with that Redis
    down the doctor said "redis SKIPPED not configured" and "ready"; router_settings'
    redis_host with the cache off was skipped as "the cache is off"."""
    plain = _config(tmp_path, "model_list: [{model_name: e, litellm_params: {model: echo/e}}]\n")
    env = {**NO_OTEL, "SCILLM_REDIS_URL": f"redis://127.0.0.1:{_closed_port()}"}
    check = _by_part(await collect(plain, environ=env))["redis"]
    assert check.status is Status.FAILED and "cannot connect" in check.detail, check
    env["SCILLM_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    assert _by_part(await collect(plain, environ=env))["redis"].status is Status.OK
    windows = _config(tmp_path, "model_list: [{model_name: e, litellm_params: {model: echo/e}}]\n"
                      f"router_settings: {{redis_host: 127.0.0.1, redis_port: {_closed_port()}}}\n")
    check = _by_part(await collect(windows, environ=NO_OTEL))["redis"]
    assert check.status is Status.FAILED and "cannot connect" in check.detail, check


# --------------------------------------------------------------------------- the mesh


async def test_grpc_health_tells_the_same_story(mesh: RunningMesh) -> None:
    checks = _by_part(await collect(target=mesh.grpc_target, environ=NO_OTEL))
    assert checks["mesh"].status is Status.OK
    for service in ("completion.v1.CompletionService", "prove.v1.ProveService",
                    "codeworld.v1.CodeWorldService", "agent.v1.AgentService"):
        assert checks[f"scillm.{service}"].status is Status.OK
    local_to_health = {"z3": "scillm.prove.v1.ProveService/smt",
                       "coqc": "scillm.prove.v1.ProveService/coq",
                       "lean": "scillm.prove.v1.ProveService/lean4",
                       "bubblewrap": "scillm.codeworld.v1.CodeWorldService/bubblewrap"}
    for local, entry in local_to_health.items():
        assert (checks[local].status is Status.OK) == (checks[entry].status is Status.OK), (
            checks[local], checks[entry])
    if checks["bubblewrap"].status is Status.OK and checks["z3"].status is Status.OK:
        assert unmet(list(checks.values()), ["codeworld", "certainly", "completion"]) == []
    # Lean is optional on the mesh's side too: `doctor --target` called a mesh without it
    # "not ready: scillm.prove.v1.ProveService/lean4 is MISSING".
    lean4 = checks["scillm.prove.v1.ProveService/lean4"]
    assert lean4.optional, lean4
    assert not [r for r in unmet(list(checks.values()), []) if "lean" in r]


async def test_an_absent_mesh_is_failed_quickly() -> None:
    started = time.monotonic()
    checks = _by_part(await collect(target=f"127.0.0.1:{_closed_port()}", timeout_s=1.0,
                                    environ=NO_OTEL))
    assert checks["mesh"].status is Status.FAILED and "scillm serve" in checks["mesh"].hint
    assert unmet(list(checks.values()), ["certainly"]) == ["certainly: mesh is FAILED"]
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- output


def test_table_is_aligned() -> None:
    table = format_table([Check("z3", Status.OK, "Z3 4.8"),
                          Check("provider:long-name", Status.MISSING, "x", "do y")])
    header, first, second = table.splitlines()
    status_col = header.index("STATUS")
    assert first.index("OK") == status_col and second.index("MISSING") == status_col
    assert second.endswith("do y")


def test_the_installed_command() -> None:
    help_run = subprocess.run([SCILLM, "doctor", "--help"], capture_output=True, text=True,
                              timeout=30, check=False)
    assert help_run.returncode == 0, help_run.stderr
    assert "--expect" in help_run.stdout
    out = subprocess.run([SCILLM, "doctor", "--json"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    parts = {c["part"] for c in json.loads(out.stdout)["checks"]}
    assert {"z3", "coqc", "lean", "bubblewrap", "otlp", "mesh"} <= parts
