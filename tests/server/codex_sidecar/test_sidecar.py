"""`scillm codex-sidecar` as a real process in each mode; CLI mode runs a stand-in `codex`
that prints the CLI's documented JSONL events (fake_codex.py)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from codex_sidecar_util import SidecarProcess, fake_calls, fake_codex_bin
from meshutil import RunningMesh

from scillm.server.codex_sidecar._request import JSON_INSTRUCTION


@pytest.fixture(scope="module")
def codex(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the stand-in `codex` in bin/."""
    root = tmp_path_factory.mktemp("codex")
    fake_codex_bin(root / "bin")
    return root


def _sidecar(codex: Path, name: str, *args: str) -> tuple[SidecarProcess, Path]:
    log = codex / name
    log.mkdir()
    sidecar = SidecarProcess(["--mode", "cli", "--codex-bin", str(codex / "bin" / "codex"),
                              *args], codex / f"{name}.out", env={"FAKE_CODEX_LOG": str(log)})
    return sidecar.wait_ready(), log


@pytest.fixture(scope="module")
def cli(codex: Path) -> Iterator[tuple[SidecarProcess, Path]]:
    """A CLI-mode sidecar (generous timeout) and the stand-in's log directory."""
    sidecar, log = _sidecar(codex, "cli", "--timeout", "60")
    yield sidecar, log
    sidecar.stop()


@pytest.fixture(scope="module")
def short(codex: Path) -> Iterator[tuple[SidecarProcess, Path]]:
    """A CLI-mode sidecar whose runs are killed after 2 s."""
    sidecar, log = _sidecar(codex, "short", "--timeout", "2")
    yield sidecar, log
    sidecar.stop()


def _ask(url: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "codex-agent/gpt-5", "messages": [{"role": "user", "content": text}],
            **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def _mine(log: Path, nonce: str) -> list[dict[str, Any]]:
    return [c for c in fake_calls(log) if nonce in c["prompt"]]


def _sse(url: str, body: dict[str, Any]) -> tuple[int, list[Any]]:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True},
                      timeout=60) as resp:
        if resp.status_code != 200:
            resp.read()
            return resp.status_code, [resp.json()]
        events = [line.removeprefix("data: ") for line in resp.iter_lines() if line]
    assert events[-1] == "[DONE]"
    return 200, [json.loads(e) for e in events[:-1]]


# --------------------------------------------------------------------------- echo mode


def test_echo_mode_health_models_and_chat(codex: Path) -> None:
    sidecar = SidecarProcess(["--mode", "echo", "--model", "gpt-5", "--model", "o4-mini"],
                             codex / "echo.out").wait_ready()
    try:
        health = httpx.get(f"{sidecar.url}/healthz", timeout=10).json()
        assert health["ok"] is True and health["mode"] == "echo"
        models = httpx.get(f"{sidecar.url}/v1/models", timeout=10).json()["data"]
        assert [(m["id"], m["capabilities"]) for m in models] == [
            ("gpt-5", {"chat": True}), ("o4-mini", {"chat": True})]
        sdk = openai.OpenAI(base_url=f"{sidecar.url}/v1", api_key="unused", max_retries=0)
        reply = sdk.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "echo this back"}])
        assert reply.choices[0].message.content == "echo this back"
        chunks = list(sdk.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "one two three"}],
            stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
            == "one two three"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
        # /chat/completions without /v1 is the same route.
        legacy = httpx.post(f"{sidecar.url}/chat/completions", timeout=10, json={
            "model": "x", "messages": [{"role": "user", "content": "no v1"}]})
        assert legacy.json()["choices"][0]["message"]["content"] == "no v1"
    finally:
        sidecar.stop()


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "x", "messages": []}, "messages"),
    ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "x", "messages": ["hi"]}, "messages[0]"),
])
def test_bad_requests_are_400_with_openais_body(cli: tuple[SidecarProcess, Path],
                                                body: dict[str, Any], param: str) -> None:
    resp = httpx.post(f"{cli[0].url}/v1/chat/completions", json=body, timeout=10)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param
    raw = httpx.post(f"{cli[0].url}/v1/chat/completions", content=b"{nope", timeout=10)
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]


def test_a_body_past_8_mib_is_refused_before_its_end(cli: tuple[SidecarProcess, Path]) -> None:
    """A chunked body is refused once what was read passes the limit, without waiting for
    (or holding) the rest."""
    host, port = cli[0].url.removeprefix("http://").rsplit(":", 1)
    piece = b"x" * (1 << 20)
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(9):  # 9 MiB, and more to come, it says
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < int(
                reply.lower().split(b"content-length: ")[1].split(b"\r\n")[0]):
            data = conn.recv(65536)  # the head and the body may come apart
            assert data, reply
            reply += data
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"request body exceeds 8388608 bytes" in body


# --------------------------------------------------------------------------- CLI mode


def test_cli_mode_turns_the_event_stream_into_a_completion(
        cli: tuple[SidecarProcess, Path]) -> None:
    sidecar, log = cli
    nonce = uuid.uuid4().hex
    resp = httpx.post(f"{sidecar.url}/v1/chat/completions", timeout=60, json={
        "model": "codex-agent/gpt-5", "reasoning": {"effort": "high"},
        "messages": [{"role": "system", "content": "Be terse."},
                     {"role": "user", "content": f"first {nonce}"},
                     {"role": "assistant", "content": "earlier answer"},
                     {"role": "user", "content": f"what now {nonce}"}]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    message = body["choices"][0]["message"]
    # The last agent message is the answer; the earlier one ("Let me look...") is not.
    assert message["content"] == f"ANSWER: what now {nonce}"
    assert message["reasoning_content"] == ("**Reading the task**\n\nThe user asks something "
                                            "small.\n\n**Answering**\n\nOne line will do.")
    assert body["usage"]["prompt_tokens"] == 1200 and body["usage"]["completion_tokens"] == 34
    (call,) = _mine(log, nonce)
    argv = call["argv"]
    assert argv[:3] == ["exec", "--json", "--skip-git-repo-check"] and argv[-1] == "-"
    assert "--model=gpt-5" in argv  # the codex-agent/ prefix stripped
    assert argv[argv.index("-c") + 1] == 'model_reasoning_effort="high"'
    assert call["prompt"] == (f"Be terse.\n\nfirst {nonce}\n\nAssistant: earlier answer\n\n"
                              f"what now {nonce}")


def test_cli_mode_streams_reasoning_then_the_answer(cli: tuple[SidecarProcess, Path]) -> None:
    nonce = uuid.uuid4().hex
    status, chunks = _sse(cli[0].url, {
        "model": "gpt-5", "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"stream {nonce}"}]})
    assert status == 200
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    kinds = [next(iter(k for k in d if k != "role"), None) for d in deltas]
    assert kinds == ["content", "reasoning_content", "reasoning_content", "content", None]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in deltas).startswith(
        "**Reading the task**")
    assert deltas[3]["content"] == f"ANSWER: stream {nonce}"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 1234


def test_json_schema_goes_to_output_schema_and_json_object_to_the_prompt(
        cli: tuple[SidecarProcess, Path]) -> None:
    sidecar, log = cli
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"], "additionalProperties": False}
    nonce = uuid.uuid4().hex
    resp = _ask(sidecar.url, f"schema {nonce}", response_format={
        "type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert json.loads(resp.json()["choices"][0]["message"]["content"]) == {"answer": "ok"}
    (call,) = _mine(log, nonce)
    assert call["schema"] == schema and "--output-schema" in call["argv"]
    other = uuid.uuid4().hex
    assert _ask(sidecar.url, f"object {other}",
                response_format={"type": "json_object"}).status_code == 200
    (call,) = _mine(log, other)
    assert call["prompt"].endswith(JSON_INSTRUCTION) and "--output-schema" not in call["argv"]
    bad = _ask(sidecar.url, "x", response_format={"type": "json_schema", "json_schema": {}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"


@pytest.mark.parametrize("variant", ["noauth", "nologin"])
def test_no_credentials_is_a_clear_401(cli: tuple[SidecarProcess, Path], variant: str) -> None:
    sidecar, log = cli
    nonce = uuid.uuid4().hex
    resp = _ask(sidecar.url, f"[fake:{variant}] {nonce}")
    assert resp.status_code == 401
    error = resp.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "codex_not_logged_in"
    assert "codex login" in error["message"]
    assert len(_mine(log, nonce)) == 1  # not retried
    status, body = _sse(sidecar.url, {"model": "gpt-5", "messages": [
        {"role": "user", "content": f"[fake:{variant}] stream"}]})
    assert status == 401 and body[0]["error"]["code"] == "codex_not_logged_in"


def test_transient_exit_codes_are_retried_once(cli: tuple[SidecarProcess, Path]) -> None:
    sidecar, log = cli
    nonce = uuid.uuid4().hex
    flaky = _ask(sidecar.url, f"[fake:flaky] {nonce}")
    assert flaky.status_code == 200, flaky.text
    assert len(_mine(log, nonce)) == 2
    nonce = uuid.uuid4().hex
    failing = _ask(sidecar.url, f"[fake:transient] {nonce}")
    assert failing.status_code == 502
    assert "exit code 75" in failing.json()["error"]["message"]
    assert len(_mine(log, nonce)) == 2  # the first run and one retry
    nonce = uuid.uuid4().hex
    crash = _ask(sidecar.url, f"[fake:crash] {nonce}")
    assert crash.status_code == 502
    assert "boom: the model refused" in crash.json()["error"]["message"]
    assert len(_mine(log, nonce)) == 1  # exit 1 is not transient


def test_malformed_lines_are_skipped_and_a_silent_run_is_502(
        cli: tuple[SidecarProcess, Path]) -> None:
    resp = _ask(cli[0].url, "[fake:malformed] tolerate noise")
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "ANSWER: [fake:malformed] " \
                                                             "tolerate noise"
    silent = _ask(cli[0].url, "[fake:silent] nothing")
    assert silent.status_code == 502
    assert "no agent message" in silent.json()["error"]["message"]


def test_a_cli_usage_error_is_reported(codex: Path) -> None:
    sidecar, _ = _sidecar(codex, "bogus", "--codex-arg=--no-such-flag")
    try:
        resp = _ask(sidecar.url, "hi")
        assert resp.status_code == 502
        assert "unexpected argument '--no-such-flag'" in resp.json()["error"]["message"]
    finally:
        sidecar.stop()


def _gone(pid: int, within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return True  # killed, waiting to be reaped by its new parent
        time.sleep(0.05)
    return False


def test_the_timeout_kills_the_process_group(short: tuple[SidecarProcess, Path]) -> None:
    sidecar, log = short
    resp = _ask(sidecar.url, "[fake:slow] take forever")
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "codex_timeout"
    child = int((log / "child.pid").read_text())
    assert _gone(child), "the CLI's child process outlived the timeout"


def test_a_timeout_after_streaming_began_goes_in_band(short: tuple[SidecarProcess, Path]) -> None:
    status, chunks = _sse(short[0].url, {"model": "gpt-5", "messages": [
        {"role": "user", "content": "[fake:slow] stream forever"}]})
    assert status == 200
    assert "reasoning_content" in chunks[1]["choices"][0]["delta"]
    assert chunks[-1]["error"]["code"] == "codex_timeout"


def test_a_caller_who_hangs_up_frees_the_slot(cli: tuple[SidecarProcess, Path]) -> None:
    sidecar, log = cli
    nonce = uuid.uuid4().hex
    with pytest.raises(httpx.ReadTimeout):  # held until a release that never comes
        _ask_with_timeout(sidecar.url, f"[fake:hold] {nonce}", timeout=1.0)
    assert len(_mine(log, nonce)) == 1
    deadline = time.monotonic() + 30
    while (health := httpx.get(f"{sidecar.url}/healthz", timeout=10).json())["running"]:
        assert time.monotonic() < deadline, f"the run outlived its caller: {health}"
        time.sleep(0.05)


def test_stopping_the_sidecar_kills_its_runs(codex: Path) -> None:
    sidecar, log = _sidecar(codex, "stopping", "--timeout", "120")
    def ask() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the sidecar goes away mid-request
            _ask_with_timeout(sidecar.url, "[fake:hold] until stopped", timeout=60)

    caller = threading.Thread(target=ask, daemon=True)
    caller.start()
    deadline = time.monotonic() + 30
    while not fake_calls(log):
        assert time.monotonic() < deadline, "the CLI run did not start"
        time.sleep(0.05)
    sidecar.stop()
    assert sidecar.proc.returncode == 0
    assert _gone(fake_calls(log)[0]["pid"]), "the CLI run outlived the sidecar"
    caller.join(timeout=30)


def _ask_with_timeout(url: str, text: str, timeout: float) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=timeout, json={
        "model": "gpt-5", "messages": [{"role": "user", "content": text}]})


def test_concurrency_is_capped(codex: Path) -> None:
    sidecar, log = _sidecar(codex, "capped", "--max-concurrency", "2", "--timeout", "120")
    results: list[int] = []

    def ask(i: int) -> None:
        results.append(_ask(sidecar.url, f"[fake:hold] {i}").status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while True:
            health = httpx.get(f"{sidecar.url}/healthz", timeout=10).json()
            if health["waiting"] == 1 and len(fake_calls(log)) == 2:
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.05)
        assert health["running"] == 2
        (log / "release").write_text("go")
        for t in threads:
            t.join(timeout=60)
        assert results == [200, 200, 200]
        assert len(fake_calls(log)) == 3
    finally:
        (log / "release").write_text("go")
        sidecar.stop()


def _scillm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    scillm = str(Path(sys.executable).parent / "scillm")
    return subprocess.run([scillm, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_help_and_bad_settings_at_start_up(tmp_path: Path) -> None:
    assert "codex-sidecar" in _scillm("--help").stdout
    text = " ".join(_scillm("codex-sidecar", "--help").stdout.split())
    for word in ("echo", "forward", "cli", "X-Codex-Force-Local", "--max-concurrency",
                 "--transient-exit-code", "CODEX_FORWARD_TOKEN", "process group"):
        assert word in text, word
    missing = _scillm("codex-sidecar", "--mode", "cli", "--codex-bin", str(tmp_path / "none"))
    assert missing.returncode == 2
    assert "was not found" in missing.stderr and "Traceback" not in missing.stderr
    no_base = _scillm("codex-sidecar", "--mode", "forward", env={"CODEX_FORWARD_BASE": ""})
    assert no_base.returncode == 2 and "--forward-base" in no_base.stderr
    bad_port = _scillm("codex-sidecar", env={"CODEX_SIDECAR_PORT": "http"})
    assert bad_port.returncode == 2 and "CODEX_SIDECAR_PORT" in bad_port.stderr


# --------------------------------------------------------------------------- forward mode


def test_forward_mode_passes_requests_to_another_base(
        codex: Path, mesh: RunningMesh) -> None:
    sidecar = SidecarProcess(["--mode", "forward", "--forward-base", f"{mesh.http_url}/v1",
                              "--codex-bin", str(codex / "bin" / "codex")], codex / "fwd.out",
                             env={"FAKE_CODEX_LOG": str(codex)}).wait_ready()
    try:
        models = httpx.get(f"{sidecar.url}/v1/models", timeout=10).json()["data"]
        assert {"id": "echo/*", "capabilities": {"chat": True}}.items() <= next(
            m for m in models if m["id"] == "echo/*").items()
        sdk = openai.OpenAI(base_url=f"{sidecar.url}/v1", api_key="unused", max_retries=0)
        reply = sdk.chat.completions.create(
            model="codex-agent/echo/x", messages=[{"role": "user", "content": "forwarded"}])
        assert reply.choices[0].message.content == "forwarded"
        chunks = list(sdk.chat.completions.create(
            model="echo/x", messages=[{"role": "user", "content": "streamed on"}], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
            == "streamed on"
        missing = httpx.post(f"{sidecar.url}/v1/chat/completions", timeout=10, json={
            "model": "nosuch/model", "messages": [{"role": "user", "content": "x"}]})
        assert missing.status_code == 404  # the upstream's answer, as it gave it
        local = httpx.post(f"{sidecar.url}/v1/chat/completions", timeout=60,
                           headers={"X-Codex-Force-Local": "1"}, json={
                               "model": "gpt-5", "messages": [{"role": "user",
                                                               "content": "run locally"}]})
        assert local.json()["choices"][0]["message"]["content"] == "ANSWER: run locally"
    finally:
        sidecar.stop()


def test_forward_mode_without_an_upstream_is_502(codex: Path) -> None:
    sidecar = SidecarProcess(["--mode", "forward", "--forward-base", "http://127.0.0.1:9/v1"],
                             codex / "fwd-dead.out").wait_ready()
    try:
        health = httpx.get(f"{sidecar.url}/healthz", timeout=10).json()
        assert health["forward_base"] == "http://127.0.0.1:9/v1" and "running" not in health
        resp = _ask(sidecar.url, "anyone?")
        assert resp.status_code == 502
        assert resp.json()["error"]["code"] == "upstream_unreachable"
        forced = httpx.post(f"{sidecar.url}/v1/chat/completions", timeout=10,
                            headers={"X-Codex-Force-Local": "1"}, json={
                                "model": "x", "messages": [{"role": "user", "content": "x"}]})
        assert forced.status_code == 501 and "--codex-bin" in forced.json()["error"]["message"]
    finally:
        sidecar.stop()


def test_a_sidecar_that_requires_its_key_refuses_everyone_else(codex: Path) -> None:
    log = codex / "keyed"
    log.mkdir()
    sidecar = SidecarProcess(
        ["--mode", "cli", "--require-key", "--codex-bin", str(codex / "bin" / "codex")],
        codex / "keyed.out", env={"FAKE_CODEX_LOG": str(log),
                                  "CODEX_SIDECAR_API_KEY": "sidecar-secret"}).wait_ready()
    try:
        assert httpx.get(f"{sidecar.url}/healthz", timeout=30).status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}):
            refused = httpx.post(f"{sidecar.url}/v1/chat/completions", timeout=30,
                                 headers=headers, json={"model": "gpt-5", "messages": [
                                     {"role": "user", "content": "hi"}]})
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert httpx.get(f"{sidecar.url}/v1/models", headers=headers,
                             timeout=30).status_code == 401
        assert not fake_calls(log)  # the CLI never ran for them
        sdk = openai.OpenAI(base_url=f"{sidecar.url}/v1", api_key="sidecar-secret",
                            max_retries=0, timeout=60)
        reply = sdk.chat.completions.create(model="gpt-5",
                                            messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    finally:
        sidecar.stop()


def test_a_model_name_is_never_read_as_a_cli_option() -> None:
    from scillm.server.codex_sidecar._cli import CodexJob, CodexRunner
    from scillm.server.codex_sidecar._settings import SidecarSettings

    runner = CodexRunner(SidecarSettings(mode="cli", codex_cmd=("/bin/codex",)))
    job = CodexJob(prompt="p", model="--dangerously-bypass-approvals-and-sandbox")
    argv = runner.argv(job, None)
    assert "--model=--dangerously-bypass-approvals-and-sandbox" in argv
    assert "--dangerously-bypass-approvals-and-sandbox" not in argv


def test_a_forward_base_answering_without_end_is_502_not_read_whole(codex: Path) -> None:
    """A forward base gone wrong (a body announced at 100 GB) is read no further than 64 MiB
    of its answer: 502 naming the limit."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def flood() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: 100000000000\r\n\r\n")
            piece = b"x" * (1 << 20)
            for _ in range(1024):
                conn.sendall(piece)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    sidecar = SidecarProcess(["--mode", "forward", "--forward-base",
                              f"http://127.0.0.1:{port}/v1"], codex / "flood.out").wait_ready()
    try:
        reply = httpx.post(f"{sidecar.url}/v1/chat/completions", timeout=60, json={
            "model": "echo/x", "messages": [{"role": "user", "content": "x"}]})
    finally:
        sidecar.stop()
        listener.close()
    assert reply.status_code == 502, reply.text[:300]
    assert "over 67108864 bytes" in reply.json()["error"]["message"]


def test_a_forward_bases_error_never_shows_the_forward_key(codex: Path) -> None:
    """A forward base answering a bad key with "Incorrect API key provided: <the key>"
    (some OpenAI-compatible servers quote it) reached the sidecar's caller verbatim."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def quote_the_key() -> None:
        for _ in range(2):  # /chat/completions, then /models
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):
                head = conn.recv(65536).decode(errors="replace")
                sent = next((line.split(" ", 2)[-1] for line in head.split("\r\n")
                             if line.lower().startswith("authorization:")), "none")
                body = json.dumps({"error": {"message": f"Incorrect API key: {sent}"}})
                conn.sendall(b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json"
                             b"\r\nconnection: close\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body.encode())

    thread = threading.Thread(target=quote_the_key, daemon=True)
    thread.start()
    sidecar = SidecarProcess(["--mode", "forward", "--forward-base",
                              f"http://127.0.0.1:{port}/v1"], codex / "quote.out",
                             env={"CODEX_FORWARD_TOKEN": "sk-forward-secret"}).wait_ready()
    try:
        chat = _ask(sidecar.url, "x")
        models = httpx.get(f"{sidecar.url}/v1/models", timeout=30)
    finally:
        sidecar.stop()
        listener.close()
    for reply in (chat, models):
        assert reply.status_code == 401, reply.text
        assert "sk-forward-secret" not in reply.text and "[redacted]" in reply.text
