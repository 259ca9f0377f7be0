"""The split layout of scripts/deploy, as five real `scillm serve` processes: Completion,
Prove, CodeWorld and Agent each alone (gRPC only), and a shim-only process
(`--service none`) whose targets point at them. Keys live with Completion (the shim's
key routes follow its completion target). Every door is driven through the shim, with
the `openai` SDK where the door is OpenAI-shaped, and every door's trace must arrive
whole at an in-test OTLP receiver: one trace id, every span's parent exported, from the
shim's HTTP span through the gRPC hops to the upstream provider call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from meshutil import ServedProcess
from otlp_receiver import OtlpReceiver, Span, broken_links, new_traceparent
from scripted_upstream import ScriptedUpstream

MASTER = "sk-split-master"
ANSWER = "forty two"
SERVICES = ("completion", "prove", "codeworld", "agent")
GOOD = "def solve(task, context):\n    return sum(context['input'])\n"


@dataclass
class Split:
    """The running layout: the shim's URL, its processes, the receiver, the upstream."""

    shim: ServedProcess
    processes: dict[str, ServedProcess]
    receiver: OtlpReceiver
    upstream: ScriptedUpstream

    def sdk(self, api_key: str = MASTER) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.shim.http_url}/v1", api_key=api_key,
                             max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    tmp = tmp_path_factory.mktemp("split")
    upstream = ScriptedUpstream([{"content": ANSWER}]).start()
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "up", "litellm_params": {
            "model": "openai/up", "api_base": upstream.url, "api_key": "unused"}}],
        "litellm_settings": {"cache": False}}))
    receiver = OtlpReceiver().__enter__()
    started: dict[str, ServedProcess] = {}

    def serve(name: str, *args: str, **env: str) -> ServedProcess:
        (tmp / name).mkdir()
        proc = ServedProcess(name, ["--grpc-port", "0", "--grace", "2", *args], {
            **os.environ, "SCILLM_CONFIG_PATH": str(config), "SCILLM_MASTER_KEY": MASTER,
            "SCILLM_STORE_PATH": str(tmp / name / "runs.sqlite3"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_SERVICE_NAME": name,
            "OTEL_BSP_SCHEDULE_DELAY": "50", **env}, tmp / f"{name}.log")
        started[name] = proc
        return proc

    try:
        completion = serve("completion", "--service", "completion", "--no-http").wait_ready()
        for name in ("prove", "codeworld", "agent"):
            serve(name, "--service", name, "--no-http",
                  SCILLM_COMPLETION_TARGET=completion.grpc_target)
        for name in ("prove", "codeworld", "agent"):
            started[name].wait_ready()
        targets = [arg for name in SERVICES
                   for arg in (f"--{name}-target", started[name].grpc_target)]
        shim = serve("shim", "--service", "none", "--http-port", "0", *targets).wait_ready()
        yield Split(shim, {n: started[n] for n in SERVICES}, receiver, upstream)
    finally:
        for proc in reversed(list(started.values())):
            proc.stop()
        receiver.__exit__()
        upstream.stop()


def _method(service: str, method: str) -> str:
    package = {"completion": "completion", "prove": "prove", "codeworld": "codeworld",
               "agent": "agent", "keys": "keys"}[service]
    name = {"completion": "CompletionService", "prove": "ProveService",
            "codeworld": "CodeWorldService", "agent": "AgentService",
            "keys": "KeyService"}[service]
    return f"/scillm.{package}.v1.{name}/{method}"


def _hop(caller: str, service: str, method: str) -> set[tuple[str, str, str]]:
    """A gRPC call from process `caller` to `service`: its client and its server span."""
    name = _method(service, method)
    served_by = "completion" if service == "keys" else service
    return {(caller, "CLIENT", name), (served_by, "SERVER", name)}


def _http(path: str) -> tuple[str, str, str]:
    return ("shim", "SERVER", f"POST {path}")


#: Calls Completion makes to the scripted upstream: httpx's client span.
UPSTREAM = {("completion", "CLIENT", "POST")}
#: Agent's model call, through Completion, to the upstream.
AGENT_MODEL = _hop("agent", "completion", "Completion") | UPSTREAM


# --------------------------------------------------------------------------- the doors


def _chat(split: Split, tp: str) -> None:
    reply = split.sdk().chat.completions.create(
        model="up", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": tp})
    assert reply.choices[0].message.content == ANSWER


def _chat_stream(split: Split, tp: str) -> None:
    stream = split.sdk().chat.completions.create(
        model="up", stream=True, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": tp})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == ANSWER


def _agent(split: Split, tp: str) -> None:
    reply = split.sdk().chat.completions.create(
        model="agent/up", messages=[{"role": "user", "content": "what is 6 * 7?"}],
        extra_headers={"traceparent": tp}, extra_body={"max_iterations": 2})
    assert reply.choices[0].message.content == ANSWER
    assert reply.model_extra and reply.model_extra["scillm"]["service"] == "agent"


def _agent_stream(split: Split, tp: str) -> None:
    stream = split.sdk().chat.completions.create(
        model="agent/up", stream=True, messages=[{"role": "user", "content": "6 * 7?"}],
        extra_headers={"traceparent": tp}, extra_body={"max_iterations": 2})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"


CODEWORLD_BODY = {
    "items": [{"task_id": "sum", "context": {"input": [1, 2, 3], "expected": 6}}],
    "provider": {"args": {"strategies": [{"name": "builtin", "source": GOOD}]}}}


def _codeworld(split: Split, tp: str) -> None:
    reply = split.sdk().chat.completions.create(
        model="codeworld", messages=[{"role": "user", "content": "sum the input"}],
        extra_headers={"traceparent": tp}, extra_body=CODEWORLD_BODY)
    assert reply.choices[0].message.content == "CodeWorld: 1 items, 1 succeeded, 0 failed"


def _certainly(split: Split, tp: str) -> None:
    reply = split.sdk().chat.completions.create(
        model="certainly/smt", messages=[{"role": "user", "content": "check"}],
        extra_headers={"traceparent": tp}, extra_body={"items": [
            {"preamble": "(declare-const y Int)", "statement": "(= y y)"}]})
    assert reply.choices[0].message.content == (
        "Certainly: 1 items, 1 proved, 0 failed, 0 unproved")


def _post(split: Split, path: str, body: dict[str, object], tp: str,
          key: str = MASTER) -> httpx.Response:
    return httpx.post(f"{split.shim.http_url}{path}", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}", "traceparent": tp})


def _bridge_complete(split: Split, tp: str) -> None:
    reply = _post(split, "/bridge/complete",
                  {"messages": [{"role": "user", "content": "sum"}], **CODEWORLD_BODY}, tp)
    assert reply.status_code == 200, reply.text
    assert reply.json()["scillm"]["service"] == "codeworld"


def _agent_run(split: Split, tp: str) -> None:
    reply = _post(split, "/agent/run", {
        "model": "up", "max_iterations": 2,
        "messages": [{"role": "user", "content": "what is 6 * 7?"}]}, tp)
    assert reply.status_code == 200, reply.text
    assert reply.json()["answer"] == ANSWER


def _keys(split: Split, tp: str) -> None:
    made = _post(split, "/key/generate", {"models": ["up"], "duration": "1h"}, tp)
    assert made.status_code == 200, made.text
    key = made.json()["key"]
    info = httpx.get(f"{split.shim.http_url}/key/info", params={"key": key}, timeout=30,
                     headers={"authorization": f"Bearer {MASTER}", "traceparent": tp})
    assert info.status_code == 200, info.text
    assert info.json()["info"]["models"] == ["up"]
    # The key works at the door it was made for, then stops working once deleted.
    assert split.sdk(key).chat.completions.create(
        model="up", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": tp}).choices[0].message.content == ANSWER
    deleted = _post(split, "/key/delete", {"keys": [key]}, tp)
    assert deleted.status_code == 200 and len(deleted.json()["deleted_keys"]) == 1
    with pytest.raises(openai.AuthenticationError):
        split.sdk(key).chat.completions.create(
            model="up", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"traceparent": tp})


@dataclass(frozen=True)
class Door:
    call: Callable[[Split, str], None]
    #: (process, span kind, span name) the door's trace must hold.
    spans: frozenset[tuple[str, str, str]]


DOORS = {
    "chat": Door(_chat, frozenset({_http("/v1/chat/completions"),
                                   *_hop("shim", "completion", "Completion"), *UPSTREAM})),
    "chat-stream": Door(_chat_stream, frozenset({
        _http("/v1/chat/completions"), *_hop("shim", "completion", "CompletionStream"),
        *UPSTREAM})),
    "agent": Door(_agent, frozenset({_http("/v1/chat/completions"),
                                     *_hop("shim", "agent", "AgentRun"), *AGENT_MODEL})),
    "agent-stream": Door(_agent_stream, frozenset({
        _http("/v1/chat/completions"), *_hop("shim", "agent", "AgentRun"), *AGENT_MODEL})),
    "codeworld": Door(_codeworld, frozenset({_http("/v1/chat/completions"),
                                             *_hop("shim", "codeworld", "CodeWorldRun")})),
    "certainly": Door(_certainly, frozenset({_http("/v1/chat/completions"),
                                             *_hop("shim", "prove", "Prove")})),
    "bridge-complete": Door(_bridge_complete, frozenset({
        _http("/bridge/complete"), *_hop("shim", "codeworld", "CodeWorldRun")})),
    "agent-run": Door(_agent_run, frozenset({_http("/agent/run"),
                                             *_hop("shim", "agent", "AgentRun"),
                                             *AGENT_MODEL})),
    "keys": Door(_keys, frozenset({
        _http("/key/generate"), *_hop("shim", "keys", "GenerateKey"),
        *_hop("shim", "keys", "GetKey"), _http("/key/delete"),
        *_hop("shim", "keys", "DeleteKey"), _http("/v1/chat/completions"),
        *_hop("shim", "completion", "Completion"), *UPSTREAM})),
}


@pytest.mark.parametrize("door", list(DOORS))
def test_every_door_through_the_shim_is_one_whole_trace(split: Split, door: str) -> None:
    traceparent, trace_id, caller = new_traceparent()
    DOORS[door].call(split, traceparent)
    wanted = DOORS[door].spans

    def seen(spans: list[Span]) -> set[tuple[str, str, str]]:
        return {(s.service, s.kind, s.name) for s in spans if s.trace_id == trace_id}

    spans = split.receiver.wait_for(
        lambda spans: wanted <= seen(spans) and not broken_links(spans, trace_id, caller))
    assert wanted <= seen(spans), f"missing spans: {sorted(wanted - seen(spans))}"
    assert broken_links(spans, trace_id, caller) == []
    in_trace = [s for s in spans if s.trace_id == trace_id]
    # Every span hangs, through exported parents, from the shim's HTTP span(s).
    roots = {(s.service, s.kind) for s in in_trace if s.parent_span_id == caller}
    assert roots == {("shim", "SERVER")}
    assert {s.service for s in in_trace} >= {"shim"} | {w[0] for w in wanted}


def test_a_call_without_a_key_is_refused_behind_the_shim(split: Split) -> None:
    with pytest.raises(openai.AuthenticationError):
        split.sdk("sk-not-a-key").chat.completions.create(
            model="up", messages=[{"role": "user", "content": "hi"}])
    reply = httpx.post(f"{split.shim.http_url}/v1/chat/completions", timeout=30, json={
        "model": "certainly/smt", "messages": [{"role": "user", "content": "check"}],
        "items": [{"statement": "(= 1 1)"}]})
    assert reply.status_code == 401, reply.text


def test_the_shim_is_ready_when_the_services_it_fronts_are(split: Split) -> None:
    ready = httpx.get(f"{split.shim.http_url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["services"] == {
        "scillm.completion.v1.CompletionService": "SERVING",
        "scillm.prove.v1.ProveService": "SERVING",
        "scillm.codeworld.v1.CodeWorldService": "SERVING",
        "scillm.agent.v1.AgentService": "SERVING"}
    models = split.sdk().models.list()
    assert [m.id for m in models.data] == ["up"]


@pytest.mark.parametrize("given", ["caf\u00e9-1".encode(), b"a\tb", b"id-\xff"])
def test_a_request_id_grpc_cannot_carry_is_replaced_not_a_500(split: Split,
                                                              given: bytes) -> None:
    """HTTP allows a tab or UTF-8 in a header value; gRPC metadata holds printable ASCII
    only. The shim passed the caller's id on as it came, and every call of the split
    layout with such an id was a 500. Now it gets a new id, sent back as always."""
    reply = httpx.post(f"{split.shim.http_url}/v1/chat/completions", timeout=30,
                       headers=[(b"authorization", f"Bearer {MASTER}".encode()),
                                (b"x-request-id", given)],
                       json={"model": "up", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text
    returned = reply.headers["x-request-id"]
    assert returned.isascii() and returned.isprintable() and len(returned) == 32
    kept = httpx.post(f"{split.shim.http_url}/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {MASTER}",
                               "x-request-id": "a plain id"},
                      json={"model": "up", "messages": [{"role": "user", "content": "hi"}]})
    assert kept.status_code == 200 and kept.headers["x-request-id"] == "a plain id"


@pytest.mark.parametrize(("name", "value"), [
    (b"authorization", "Bearer caf\u00e9".encode()), (b"authorization", b"Bearer a\tb"),
    (b"x-api-key", b"\xff\xfe"), (b"authorization", b"Bearer sk-" + b"a" * 20_000)])
def test_a_key_grpc_cannot_carry_is_a_401_not_a_500(split: Split, name: bytes,
                                                    value: bytes) -> None:
    """The shim passes the caller's key on as gRPC metadata: a key with a tab or UTF-8
    failed the call with a 500 "internal error", and one of 20 KB with a 500 naming
    HTTP/2's 431. No key anyone holds looks so: 401."""
    for method, path, body in (("POST", "/v1/chat/completions", {
            "model": "up", "messages": [{"role": "user", "content": "hi"}]}),
            ("GET", "/v1/models", None)):
        reply = httpx.request(method, f"{split.shim.http_url}{path}", timeout=30,
                              headers=[(name, value)], json=body)
        assert reply.status_code == 401, (path, reply.text)
        assert reply.json()["error"]["type"] == "authentication_error"
