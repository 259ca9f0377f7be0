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
from meshutil import RunningMesh, ServedProcess, mesh_settings, start_mesh
from otlp_receiver import OtlpReceiver
from test_tls import make_pki

from scillm.clients import TlsConfig
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
    # A process serving every service itself is read as it was: nothing "at" elsewhere.
    assert checks["mesh"] == Check("mesh", Status.OK, f"{mesh.grpc_target} SERVING")
    assert not [c for p, c in checks.items() if p.startswith("scillm.") and " at " in c.detail]


async def test_an_absent_mesh_is_failed_quickly() -> None:
    started = time.monotonic()
    checks = _by_part(await collect(target=f"127.0.0.1:{_closed_port()}", timeout_s=1.0,
                                    environ=NO_OTEL))
    assert checks["mesh"].status is Status.FAILED and "scillm serve" in checks["mesh"].hint
    assert unmet(list(checks.values()), ["certainly"]) == ["certainly: mesh is FAILED"]
    assert time.monotonic() - started < 5


def _served(tmp_path: Path, name: str, *args: str) -> ServedProcess:
    """`scillm serve ARGS` in a child process with a store of its own, no tracing."""
    (tmp_path / name).mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SCILLM_"))}
    env["SCILLM_STORE_PATH"] = str(tmp_path / name / "runs.sqlite3")
    return ServedProcess(name, ["--grpc-port", "0", "--grace", "1", *args], env,
                         tmp_path / f"{name}.log")


def _from_json(out: str) -> dict[str, Check]:
    """The checks of a `--json` report, by part."""
    return _by_part([Check(**{**c, "status": Status(c["status"])})
                     for c in json.loads(out)["checks"]])


PROVE = "scillm.prove.v1.ProveService"
COMPLETION = "scillm.completion.v1.CompletionService"
CODEWORLD = "scillm.codeworld.v1.CodeWorldService"


async def test_a_door_reports_each_service_it_fronts_at_its_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`doctor --target` at a door (`scillm serve --service none`) read the door's own
    health, which lists no service: with the Prove process behind it stopped, it said
    "mesh OK" and ready (--strict: exit 0). Each service the door sends elsewhere is now
    read at its target, and a target that is down is FAILED, named with its setting."""
    started: list[ServedProcess] = []

    async def serve(name: str, *args: str) -> ServedProcess:
        started.append(_served(tmp_path, name, *args))
        return await asyncio.to_thread(started[-1].wait_ready)

    try:
        completion = await serve("completion", "--service", "completion", "--no-http")
        prove = await serve("prove", "--service", "prove", "--no-http",
                            "--completion-target", completion.grpc_target)
        door = await serve("door", "--service", "none", "--http-port", "0",
                           "--completion-target", completion.grpc_target,
                           "--prove-target", prove.grpc_target)
        checks = _by_part(await collect(target=door.grpc_target, environ=NO_OTEL))
        assert checks["mesh"] == Check("mesh", Status.OK, f"{door.grpc_target} SERVING; "
                                       "serves no service itself (a door)"), checks["mesh"]
        assert checks[COMPLETION] == Check(COMPLETION, Status.OK,
                                           f"SERVING at {completion.grpc_target}")
        assert checks[PROVE] == Check(PROVE, Status.OK, f"SERVING at {prove.grpc_target}")
        smt = checks[f"{PROVE}/smt"]
        assert smt.status is Status.OK and smt.detail == f"SERVING at {prove.grpc_target}"
        assert CODEWORLD not in checks  # neither served there nor sent anywhere
        assert unmet(list(checks.values()), ["certainly"]) == []

        prove.stop()
        checks = _by_part(await collect(target=door.grpc_target, environ=NO_OTEL))
        down = checks[PROVE]
        assert down.status is Status.FAILED, down
        assert down.detail == (f"no gRPC health at {prove.grpc_target} (--prove-target of "
                               f"{door.grpc_target}): UNAVAILABLE (Connection refused)"), down
        assert down.hint == (f"start it (scillm serve --service prove) or fix --prove-target "
                             f"of {door.grpc_target} (SCILLM_PROVE_TARGET)")
        assert f"{PROVE}/smt" not in checks
        assert checks[COMPLETION].status is Status.OK and checks["mesh"].status is Status.OK
        assert unmet(list(checks.values()), ["certainly"]) == [
            f"certainly: {PROVE} is FAILED"]
        capsys.readouterr()
        assert await doctor(_args("--target", door.grpc_target, "--strict"),
                            environ=NO_OTEL) == 1
        assert f"not ready: {PROVE} is FAILED" in capsys.readouterr().err
    finally:
        for proc in reversed(started):
            proc.stop()


async def test_a_door_behind_a_master_key_and_a_target_serving_something_else(
        tmp_path: Path) -> None:
    """Behind a master key a door tells where its services live only to a caller with a
    key (`--api-key`): without one doctor says so, not "ready". A target that answers but
    does not serve the service sent to it is FAILED, naming the setting to fix; a door
    that serves nothing and sends nothing anywhere is not a ready mesh."""
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    backend = start_mesh(mesh_settings(tmp_path / "a", services=("completion",),
                                       http_enabled=False))
    door = start_mesh(mesh_settings(tmp_path / "b", services=(), master_key=KEY,
                                    completion_target=backend.grpc_target,
                                    codeworld_target=backend.grpc_target))
    empty = start_mesh(mesh_settings(tmp_path / "c", services=()))
    try:
        blind = _by_part(await collect(target=door.grpc_target, environ=NO_OTEL))
        told = _by_part(await collect(target=door.grpc_target, environ=NO_OTEL, api_key=KEY))
        nothing = _by_part(await collect(target=empty.grpc_target, environ=NO_OTEL))
    finally:
        for running in (empty, door, backend):
            running.stop()
    assert blind["mesh"].status is Status.FAILED, blind["mesh"]
    assert "UNAUTHENTICATED" in blind["mesh"].detail and "--api-key" in blind["mesh"].hint
    assert not [p for p in blind if p.startswith("scillm.")]
    assert told["mesh"].status is Status.OK, told["mesh"]
    assert told[COMPLETION] == Check(COMPLETION, Status.OK, f"SERVING at {backend.grpc_target}")
    wrong = told[CODEWORLD]
    assert wrong.status is Status.FAILED and "does not serve it" in wrong.detail, wrong
    assert wrong.hint == (f"fix --codeworld-target of {door.grpc_target} "
                          "(SCILLM_CODEWORLD_TARGET)")
    assert nothing["mesh"].status is Status.FAILED, nothing["mesh"]
    assert "serves no service and sends none elsewhere" in nothing["mesh"].detail


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def test_a_tls_mesh_is_dialed_with_the_mesh_s_tls_settings(
        tmp_path: Path, pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`doctor --target` dialed plaintext only: a TLS mesh (here a door and the process
    behind it) was "no gRPC health at ...: UNAVAILABLE" with the hint to start it. It
    takes `scillm serve`'s TLS settings (flags, or the SCILLM_TLS_* variables) and dials
    as the mesh's processes dial each other; a plaintext dial of it says what happened."""
    cert, key = pki / "server-chain.pem", pki / "server.key"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    backend = start_mesh(mesh_settings(tmp_path / "a", services=("completion",),
                                       http_enabled=False, tls_cert=cert, tls_key=key))
    door = start_mesh(mesh_settings(tmp_path / "b", services=(), tls_cert=cert, tls_key=key,
                                    completion_target=backend.grpc_target))
    try:
        plain = _by_part(await collect(target=door.grpc_target, timeout_s=2.0,
                                       environ=NO_OTEL))["mesh"]
        assert await doctor(_args("--target", door.grpc_target, "--json", "--tls-cert",
                                  str(cert), "--tls-key", str(key)), environ=NO_OTEL) == 0
        flags = _from_json(capsys.readouterr().out)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SCILLM_"))}
        run = await asyncio.to_thread(
            subprocess.run, [SCILLM, "doctor", "--target", door.grpc_target, "--json"],
            env={**env, "SCILLM_TLS_CERT": str(cert), "SCILLM_TLS_KEY": str(key)},
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        door.stop()
        backend.stop()
    assert plain == Check("mesh", Status.FAILED, f"{door.grpc_target} speaks TLS, and doctor "
                          "dialed it in plaintext", plain.hint), plain
    assert "--tls-cert" in plain.hint and "SCILLM_TLS_CERT" in plain.hint
    assert run.returncode == 0, run.stderr
    from_env = _from_json(run.stdout)
    for checks in (flags, from_env):
        assert checks["mesh"].status is Status.OK, checks["mesh"]
        assert checks[COMPLETION] == Check(COMPLETION, Status.OK,
                                           f"SERVING at {backend.grpc_target}")
    assert "Handshake failed" not in run.stderr


async def test_mutual_tls_and_a_dial_of_the_wrong_kind(
        tmp_path: Path, pki: Path, mesh: RunningMesh,
        capsys: pytest.CaptureFixture[str]) -> None:
    """With mutual TLS doctor presents the mesh's certificate, as its processes do; a
    handshake refused, and a TLS dial of a plaintext mesh, are said as such."""
    cert, key, ca = pki / "server-chain.pem", pki / "server.key", pki / "ca.pem"
    mutual = start_mesh(mesh_settings(tmp_path, services=("completion",), http_enabled=False,
                                      tls_cert=cert, tls_key=key, tls_client_ca=ca))
    try:
        assert await doctor(_args("--target", mutual.grpc_target, "--json", "--tls-cert",
                                  str(cert), "--tls-key", str(key), "--tls-client-ca",
                                  str(ca)), environ=NO_OTEL) == 0
        report = json.loads(capsys.readouterr().out)
        anonymous = _by_part(await collect(target=mutual.grpc_target, environ=NO_OTEL,
                                           timeout_s=2.0,
                                           tls=TlsConfig.from_files(ca=str(ca))))["mesh"]
    finally:
        mutual.stop()
    checks = {c["part"]: c for c in report["checks"]}
    assert checks["mesh"]["status"] == "OK" and checks[COMPLETION]["status"] == "OK", checks
    assert anonymous.status is Status.FAILED
    assert anonymous.detail.startswith(f"{mutual.grpc_target} speaks TLS, but the handshake "
                                       "failed"), anonymous
    assert "mutual TLS" in anonymous.hint
    tls_to_plain = _by_part(await collect(target=mesh.grpc_target, environ=NO_OTEL,
                                          tls=TlsConfig.from_files(ca=str(ca))))["mesh"]
    assert tls_to_plain == Check("mesh", Status.FAILED, f"{mesh.grpc_target} speaks "
                                 "plaintext, and doctor dialed it with TLS", tls_to_plain.hint)
    assert "SCILLM_TLS_CERT" in tls_to_plain.hint
    # A certificate without its key is refused as `scillm serve` refuses it.
    assert await doctor(_args("--target", mesh.grpc_target, "--tls-cert", str(cert)),
                        environ=NO_OTEL) == 2
    assert "tls_cert and tls_key go together" in capsys.readouterr().err


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
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--api-key"):
        assert flag in help_run.stdout
    out = subprocess.run([SCILLM, "doctor", "--json"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    parts = {c["part"] for c in json.loads(out.stdout)["checks"]}
    assert {"z3", "coqc", "lean", "bubblewrap", "otlp", "mesh"} <= parts


@pytest.mark.usefixtures("no_egress_proxy")
async def test_a_provider_behind_the_environments_proxy_is_checked_through_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Doctor connected to the provider directly, where the mesh's calls go through the
    egress proxy (`server/egress.py`): behind one it said FAILED of a provider the mesh
    reaches, and OK of one the proxy cannot."""
    from forward_proxy import ForwardProxy

    monkeypatch.setenv("DOCTOR_TEST_KEY", KEY)
    proxy = ForwardProxy().start()
    try:
        async with _http_server(_openai) as port:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            through = _by_part(await collect(_openai_config(tmp_path, port),
                                             environ=NO_OTEL))["provider:tiny"]
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
            closed = _by_part(await collect(_openai_config(tmp_path, port),
                                            environ=NO_OTEL))["provider:tiny"]
    finally:
        proxy.stop()
    assert through.status is Status.OK and "GET /models 200" in through.detail, through
    assert "egress proxy" in through.detail and proxy.forwarded, through
    assert closed.status is Status.FAILED and "egress proxy" in closed.detail, closed
    assert "HTTPS_PROXY" in closed.hint, closed


async def test_a_list_target_reports_each_replica(tmp_path: Path) -> None:
    """A list target was asked through one round-robin channel, which skips a replica that
    is down: doctor said the mesh was ready with one of two replicas gone. Each replica of
    a list is now asked on its own, and one that is down is FAILED, named."""
    started: list[ServedProcess] = []
    try:
        for name in ("a", "b"):
            started.append(_served(tmp_path, name, "--service", "completion", "--no-http"))
            await asyncio.to_thread(started[-1].wait_ready)
        a, b = (proc.grpc_target for proc in started)
        target = f"{a},{b}"
        checks = _by_part(await collect(target=target, environ=NO_OTEL))
        assert checks[f"replica {a}"] == Check(f"replica {a}", Status.OK, f"SERVING at {a}")
        assert checks[f"replica {b}"].status is Status.OK
        assert unmet(list(checks.values()), ["completion"]) == []

        started[1].stop()
        checks = _by_part(await collect(target=target, environ=NO_OTEL))
        down = checks[f"replica {b}"]
        assert down.status is Status.FAILED and b in down.detail, down
        assert "UNAVAILABLE" in down.detail and "scillm serve" in down.hint, down
        assert checks[f"replica {a}"].status is Status.OK
        assert checks["mesh"].status is Status.OK  # the mesh answers, through replica a
        assert f"replica {b} is FAILED" in unmet(list(checks.values()), [])
    finally:
        for proc in reversed(started):
            proc.stop()
