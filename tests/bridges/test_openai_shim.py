"""The OpenAI HTTP door, driven by the official openai SDK and plain HTTP."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import socket
import time
from typing import Any

import httpx
import openai
import pytest
from meshutil import RunningMesh

from scillm.clients import SyncScillmClient


@pytest.fixture
def sdk(mesh: RunningMesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="unused", max_retries=0,
                         timeout=30)


def test_sdk_gets_the_echo_back(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model="echo/x", messages=[{"role": "user", "content": "hello shim"}])
    assert reply.choices[0].message.content == "hello shim"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 2
    extra = reply.model_extra or {}
    assert extra["scillm"]["routing"]["provider"] == "echo"


def test_sdk_streams_the_echo(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="echo/x", messages=[{"role": "user", "content": "one two three four"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)


def test_sse_ends_with_done_and_carries_request_id(mesh: RunningMesh) -> None:
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", f"{mesh.http_url}/v1/chat/completions",
            headers={"x-request-id": "trace-me"},
            json={"model": "echo/x", "stream": True,
                  "messages": [{"role": "user", "content": "a b"}]}) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-request-id"] == "trace-me"
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_models_lists_configured_names(sdk: openai.OpenAI) -> None:
    names = [m.id for m in sdk.models.list()]
    assert any(n.startswith("echo/") for n in names)


def _deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "nosuch/thing", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ({"model": "echo/x", "messages": []}, 400, "messages"),
    ({"model": "echo/x", "messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages[0].role"),
    ({"model": "echo/x", "messages": [{"role": "user", "content": "x"}], "n": "two"}, 400, "n"),
    ({"model": "echo/x", "messages": [{"role": "user", "content": "x"}],
      "temperature": 9}, 400, "temperature"),
    # "yes" is not true: a stream asked for with the wrong type is refused, as OpenAI does,
    # not answered in one piece; the same for a run routed behind a model name.
    ({"model": "echo/x", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
     400, "stream"),
    ({"model": "echo/x", "messages": [{"role": "user", "content": "x"}], "stream": True,
      "stream_options": {"include_usage": "yes"}}, 400, "stream_options.include_usage"),
    ({"model": "certainly/smt", "messages": [{"role": "user", "content": "x"}],
      "stream": 1}, 400, "stream"),
    ({"model": "echo/x", "messages": [{"role": "user", "content": "x"}],
      "parallel_tool_calls": "false"}, 400, "parallel_tool_calls"),
    # Nested past what a protobuf Struct can carry: refused, not a RecursionError's 500.
    ({"model": "echo/x", "messages": [{"role": "user", "content": "x"}], "tools": [
        {"type": "function", "function": {"name": "f", "parameters": _deep(200)}}]},
     400, "tools[0].function.parameters"),
    ({"model": "echo/x", "messages": [{"role": "user", "content": "x"}], "x": _deep(500)},
     400, "extra_body"),
    ({"model": "codeworld", "messages": [{"role": "user", "content": "x"}], "items": [
        {"id": "t", "context": _deep(30)}],
      "provider": {"args": {"strategies": [{"name": "s", "code": "def solve(t, c): return 1"}]}}},
     400, "items[0].context"),
])
def test_errors_use_openais_body(mesh: RunningMesh, body: dict[str, object], status: int,
                                 param: str) -> None:
    resp = httpx.post(f"{mesh.http_url}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert resp.headers["x-request-id"]


def test_sdk_retrieves_one_model(sdk: openai.OpenAI, mesh: RunningMesh) -> None:
    """OpenAI's `GET /v1/models/{model}` (the SDK's `models.retrieve`) was a 404 "Invalid
    URL" for every name: it describes a name the mesh serves, also one a wildcard serves
    (`echo/x` through `echo/*`), and is 404 `model_not_found` with close names for others."""
    for name in ("echo/x", "echo/*"):
        model = sdk.models.retrieve(name)
        assert (model.id, model.object, model.owned_by) == (name, "model", "scillm")
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("ecko/x")
    error = missing.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_found"
    assert "ecko/x" in error["message"]
    described = SyncScillmClient(mesh.grpc_target)
    with described as client:
        assert client.get_model("echo/x").deployments == 1


def test_sdk_raises_typed_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nosuch/x",
                                    messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="echo/x", messages=[])


def test_invalid_json_and_oversized_bodies(mesh: RunningMesh) -> None:
    url = f"{mesh.http_url}/v1/chat/completions"
    bad = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    huge = json.dumps({"model": "echo/x", "messages": [
        {"role": "user", "content": "x" * (mesh.mesh.settings.max_request_bytes + 1)}]})
    big = httpx.post(url, content=huge, headers={"content-type": "application/json"},
                     timeout=30)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


def test_a_compressed_body_is_415_naming_the_encoding(mesh: RunningMesh) -> None:
    """A gzip body was read as JSON and refused as "not valid JSON" (400), which sends a
    caller looking for a fault in their JSON; the door does not read compressed bodies,
    and says so. `identity` is no encoding and is read."""
    url = f"{mesh.http_url}/v1/chat/completions"
    body = json.dumps({"model": "echo/x", "messages": [{"role": "user", "content": "hi"}]})
    for encoding in ("gzip", "br, gzip"):
        refused = httpx.post(url, content=gzip.compress(body.encode()), headers={
            "content-type": "application/json", "content-encoding": encoding}, timeout=30)
        assert refused.status_code == 415, refused.text
        error = refused.json()["error"]
        assert error["code"] == "unsupported_content_encoding" and encoding in error["message"]
        assert error["type"] == "invalid_request_error"
    plain = httpx.post(url, content=body, headers={
        "content-type": "application/json", "content-encoding": "Identity"}, timeout=30)
    assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"]


def test_a_caller_who_hangs_up_inside_its_body_is_no_error(
        mesh: RunningMesh, caplog: pytest.LogCaptureFixture) -> None:
    """A caller gone before its body was read whole was logged as a request that 'failed
    unexpectedly', with a traceback (and an answer sent to nobody): any caller could fill
    the log that way. It is a hang-up, noted at debug level, on the completions door and
    on the other JSON routes."""
    caplog.set_level(logging.DEBUG, logger="scillm.bridges.openai")
    uvicorn_log = logging.getLogger("uvicorn")  # it does not propagate to the root
    uvicorn_log.addHandler(caplog.handler)
    try:
        for path in ("/v1/chat/completions", "/key/generate"):
            with socket.create_connection(("127.0.0.1", mesh.mesh.http_port), timeout=30) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          "application/json\r\nContent-Length: 1000\r\n\r\n".encode()
                          + b'{"model":')
            deadline = time.monotonic() + 20
            while not any("hung up" in r.getMessage() and path in r.getMessage()
                          for r in caplog.records):
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                time.sleep(0.02)
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    reply = httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=30, json={
        "model": "echo/x", "messages": [{"role": "user", "content": "still here"}]})
    assert reply.json()["choices"][0]["message"]["content"] == "still here"


def test_garbage_requests_are_logged_a_line_a_minute_not_a_line_each(
        mesh: RunningMesh, caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn logs "Invalid HTTP request received." for every malformed request: any
    caller could fill the log a line per connection (40 garbage requests: 80 lines). The
    first is logged; the rest of the minute are counted into the next line that is
    (tests/server/test_http_protocol.py has the wording)."""
    uvicorn_log = logging.getLogger("uvicorn.error")  # its parent does not propagate
    uvicorn_log.addHandler(caplog.handler)
    try:
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", mesh.mesh.http_port), timeout=30) as s:
                s.sendall(b"GARBAGE\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 400 ")
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    said = [r.getMessage() for r in caplog.records if "Invalid HTTP" in r.getMessage()]
    # At most two: a minute's boundary may fall inside the loop; none when an earlier test
    # of this process had one said less than a minute ago (the throttle is per process).
    assert len(said) <= 2, said
    ok = httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=30, json={
        "model": "echo/x", "messages": [{"role": "user", "content": "still here"}]})
    assert ok.status_code == 200


def test_a_chunked_body_past_the_limit_is_refused_without_reading_it_all(
        mesh: RunningMesh) -> None:
    """With no Content-Length the size is known only by reading: the door stops at the
    limit with 413 and closes, rather than taking in a body of any size first."""
    limit = mesh.mesh.settings.max_request_bytes
    chunk = b"x" * (1 << 20)
    offered = 32 * limit // len(chunk)  # 256 MiB at the default limit
    sent = 0
    with socket.create_connection(("127.0.0.1", mesh.mesh.http_port), timeout=30) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(offered):
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += 1
        reply = b""
        with contextlib.suppress(ConnectionError):
            while data := conn.recv(65536):
                reply += data
    assert sent < offered // 4, f"{sent} MiB taken in past a {limit}-byte limit"
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_health_endpoints(mesh: RunningMesh) -> None:
    assert httpx.get(f"{mesh.http_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{mesh.http_url}/readyz", timeout=10)
    body = ready.json()
    assert body["services"]["scillm.completion.v1.CompletionService"] == "SERVING"
    assert ready.status_code == (200 if body["ready"] else 503)
    assert body["ready"] == all(v == "SERVING" for v in body["services"].values())


def test_overhead_header_and_metrics(mesh: RunningMesh) -> None:
    resp = httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=30, json={
        "model": "echo/x", "messages": [{"role": "user", "content": "measure me"}]})
    overhead = float(resp.headers["x-scillm-overhead-ms"])
    assert 0.0 <= overhead < float(resp.headers["x-scillm-total-ms"]) + 1.0
    metrics = httpx.get(f"{mesh.http_url}/metrics", timeout=10).text
    assert ('scillm_rpc_requests_total{code="OK",method="CompletionService/Completion",'
            'model="echo/x"}') in metrics
    assert "scillm_rpc_latency_seconds_bucket" in metrics
    assert 'scillm_tokens_total{kind="completion",model="echo/x"}' in metrics
    # The response cache is off unless configured: no lookups, so no cache events.
    assert 'scillm_cache_events_total{result=' not in metrics


def test_client_disconnect_cancels_the_grpc_stream(mesh: RunningMesh) -> None:
    def cancelled() -> float:
        for line in httpx.get(f"{mesh.http_url}/metrics", timeout=10).text.splitlines():
            if line.startswith('scillm_rpc_requests_total{code="CANCELLED",'
                               'method="CompletionService/CompletionStream",model="echo/x"}'):
                return float(line.split()[-1])
        return 0.0

    before = cancelled()
    # An echo answer holds at most 4,096 words: 64 choices of them make a stream of ~16 MB,
    # far more than flow control buffers.
    words = " ".join(f"w{i:08d}" for i in range(4096))
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", f"{mesh.http_url}/v1/chat/completions",
            json={"model": "echo/x", "stream": True, "n": 64,
                  "scillm": {"cache": {"bypass": True}},
                  "messages": [{"role": "user", "content": words}]}) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")
    # The response is closed after one event: the shim must cancel its gRPC call.
    import time

    deadline = time.monotonic() + 10
    while cancelled() <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1


def test_codeworld_reply_says_plainly_when_generation_failed() -> None:
    """The one-line outcome of a `codeworld/mcts:auto` run names every failed model
    generation (the first batch and MCTS expansions), not only the seed's counts."""
    from scillm.bridges.openai.runs import ROUTES
    from scillm.codeworld.v1 import codeworld_pb2 as cw

    text = next(r for r in ROUTES if r.service == "codeworld").text
    ok = cw.CodeWorldRunSummary(items=1, succeeded=1)
    assert text(ok) == "CodeWorld: 1 items, 1 succeeded, 0 failed"
    failed = cw.CodeWorldRunSummary(items=1, succeeded=1)
    failed.mcts_stats.generation.CopyFrom(cw.GenerationInfo(
        model="local/gemma", error="GenerationFailed: answer is not JSON"))
    failed.mcts_stats.expansions.extend([cw.GenerationInfo(model="local/gemma"),
                                         cw.GenerationInfo(error="GenerationFailed: " + "x" * 300)])
    said = text(failed)
    assert said.startswith("CodeWorld: 1 items, 1 succeeded, 0 failed; generation failed "
                           "(local/gemma): GenerationFailed: answer is not JSON; "
                           "1 of 2 variant expansions failed (last: GenerationFailed: xxx")
    assert len(said) < 400
    unrecorded = cw.CodeWorldRunSummary(items=1, succeeded=1)
    unrecorded.session.CopyFrom(cw.SessionInfo(session_id="s1", error="redis session store: "
                                               "Connection refused."))
    assert text(unrecorded) == ("CodeWorld: 1 items, 1 succeeded, 0 failed; not recorded in "
                                "session 's1': redis session store: Connection refused.")


def test_a_path_or_method_the_door_does_not_serve_answers_in_openais_body(
        mesh: RunningMesh, sdk: openai.OpenAI) -> None:
    """An SDK reaching for an endpoint the door does not serve reads OpenAI's error body
    (its own words for an unknown URL), not Starlette's plain "Not Found"."""
    with pytest.raises(openai.NotFoundError) as info:
        sdk.moderations.create(input="hi")
    assert info.value.body == {"message": "Invalid URL (POST /v1/moderations)",
                               "type": "invalid_request_error", "param": None, "code": None}
    wrong = httpx.get(f"{mesh.http_url}/v1/chat/completions", timeout=30)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["message"] == "GET is not allowed on /v1/chat/completions"
    page = httpx.get(f"{mesh.http_url}/ui/no-such-page", timeout=30)
    assert page.status_code == 404 and not page.text.startswith('{"error"')  # the UI's own


@pytest.mark.parametrize("stream", [False, True])
def test_an_agent_run_that_failed_does_not_read_as_an_answer(mesh: RunningMesh,
                                                            stream: bool) -> None:
    """The model gave up and its escalation model does not exist: the run ended in error,
    but the door answered 200, finish_reason "stop" and the content "I give up", as if that
    were the run's answer. The content now says the run failed, and why."""
    body = {"model": "agent/echo/x", "escalation_model": "nonexistent-model",
            "messages": [{"role": "user", "content": "I give up"}], "stream": stream}
    reply = httpx.post(f"{mesh.http_url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    if stream:
        events = [json.loads(line[6:]) for line in reply.text.splitlines()
                  if line.startswith("data: {")]
        content = "".join(e["choices"][0]["delta"].get("content") or ""
                          for e in events if e.get("choices"))
    else:
        content = reply.json()["choices"][0]["message"]["content"]
    assert content.startswith("The agent run failed:") and "nonexistent-model" in content, \
        content


@pytest.mark.parametrize("stream", [False, True])
def test_an_agent_run_out_of_turns_finishes_for_length(mesh: RunningMesh, stream: bool) -> None:
    """A run stopped by its budget or max_iterations finished "stop", as a whole answer."""
    body = {"max_iterations": 1, "stream": stream,  # echo's answer is code: run, a turn gone
            "messages": [{"role": "user", "content": "```python\nprint(1)\n```"}]}
    reply = httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=120, json={
        **body, "model": "agent/echo/x", "auto_run_code": True, "languages": ["python"]})
    assert reply.status_code == 200, reply.text
    if stream:
        finishes = [json.loads(line[6:])["choices"][0]["finish_reason"]
                    for line in reply.text.splitlines() if line.startswith("data: {")
                    and json.loads(line[6:]).get("choices")]
        finish = [f for f in finishes if f][-1]
    else:
        finish = reply.json()["choices"][0]["finish_reason"]
    assert "STOP_REASON_MAX_ITERATIONS" in reply.text, reply.text[-600:]
    assert finish == "length", reply.text[-600:]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_an_agent_run_keeps_to_max_tokens(sdk: openai.OpenAI, field: str) -> None:
    """`max_tokens` was ignored by `agent/...` models: each model call of the run (its
    answer included) now gets it, as a completion would (echo's answer: the first words)."""
    reply = sdk.chat.completions.create(
        model="agent/echo/x", messages=[{"role": "user", "content": "one two three four"}],
        **{field: 2}, extra_body={"use_tools": False})  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "one two"


@pytest.mark.parametrize(("model", "extra"), [
    ("agent/echo/x", {}),
    ("certainly/smt", {"items": [{"preamble": "(declare-const y Int)", "statement": "(= y y)"}]}),
])
def test_a_run_behind_a_model_name_refuses_more_than_one_choice(
        mesh: RunningMesh, model: str, extra: dict[str, Any]) -> None:
    """`n: 3` to a run answered one choice, silently: a run has one answer."""
    reply = httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=60, json={
        "model": model, "n": 3, "messages": [{"role": "user", "content": "hi"}], **extra})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "n" and "one" in error["message"], error


@pytest.mark.parametrize(("field", "value"), [
    ("top_p", 1.5), ("top_p", -0.1), ("max_tokens", 0), ("max_completion_tokens", -3)])
def test_an_agent_run_refuses_sampling_out_of_range(mesh: RunningMesh, field: str,
                                                    value: float) -> None:
    reply = httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=60, json={
        "model": "agent/echo/x", field: value, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == field, reply.text


def test_an_agent_run_keeps_to_stop(sdk: openai.OpenAI) -> None:
    """`stop` was dropped by `agent/...` models: each model call of the run now gets it, as
    a completion would (echo's answer: the text before the stop string)."""
    reply = sdk.chat.completions.create(
        model="agent/echo/x", messages=[{"role": "user", "content": "one two three four"}],
        stop=["three"], extra_body={"use_tools": False})
    assert reply.choices[0].message.content == "one two"


@pytest.mark.parametrize(("field", "value"), [
    ("presence_penalty", 2.5), ("frequency_penalty", -2.01), ("stop", ["a", "b", "c", "d", "e"]),
    ("stop", [""]), ("stop", 7)])
def test_an_agent_run_refuses_penalties_and_stops_out_of_range(
        mesh: RunningMesh, field: str, value: Any) -> None:
    reply = httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=60, json={
        "model": "agent/echo/x", field: value, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == field, reply.text


@pytest.mark.parametrize(("field", "value"), [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "required"), ("logprobs", True), ("top_logprobs", 2),
    ("parallel_tool_calls", True), ("function_call", "auto")])
def test_an_agent_run_refuses_what_it_cannot_honour(mesh: RunningMesh, field: str,
                                                   value: Any) -> None:
    """A caller's own `tools`, or `logprobs`, went unheeded without a word: the run offers
    its own tools and answers no logprobs, so such a request is the caller's error."""
    reply = httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=60, json={
        "model": "agent/echo/x", field: value, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == field and "agent" in error["message"], error
