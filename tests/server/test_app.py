"""The mesh as users meet it: grpcurl, health, reflection, echo completions, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc
from held_upstream import HeldUpstream
from meshutil import (
    RunningMesh,
    ServedProcess,
    mesh_settings,
    start_mesh,
    stop_with_a_stream_in_flight,
)
from otlp_receiver import OtlpReceiver

from scillm.clients import RPCError, ScillmClient
from scillm.completion.v1 import completion_pb2 as pb

SERVICES = [
    "scillm.completion.v1.CompletionService",
    "scillm.prove.v1.ProveService",
    "scillm.codeworld.v1.CodeWorldService",
    "scillm.agent.v1.AgentService",
]


def _grpcurl(grpcurl: str, mesh: RunningMesh, *args: str, data: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
    cmd = [grpcurl, "-plaintext", "-max-time", "20"]
    if data is not None:
        cmd += ["-d", data]
    return subprocess.run([*cmd, mesh.grpc_target, *args], capture_output=True, text=True,
                          timeout=30, check=False)


def test_grpcurl_lists_services_health_and_reflection(grpcurl: str, mesh: RunningMesh) -> None:
    out = _grpcurl(grpcurl, mesh, "list")
    assert out.returncode == 0, out.stderr
    listed = set(out.stdout.split())
    assert set(SERVICES) <= listed
    assert "grpc.health.v1.Health" in listed
    assert "grpc.reflection.v1alpha.ServerReflection" in listed


def test_grpcurl_calls_echo_completion(grpcurl: str, mesh: RunningMesh) -> None:
    body = json.dumps({"model": "echo/x", "messages": [
        {"role": "ROLE_USER", "content": [{"text": "hello from grpcurl"}]}]})
    out = _grpcurl(grpcurl, mesh, "scillm.completion.v1.CompletionService/Completion",
                   data=body)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["choices"][0]["message"]["content"][0]["text"] == "hello from grpcurl"
    assert reply["choices"][0]["finish_reason"] == "FINISH_REASON_STOP"
    assert int(reply["usage"]["completion_tokens"]) == 3
    assert reply["manifest"]["run_id"]


def test_grpcurl_streams_echo(grpcurl: str, mesh: RunningMesh) -> None:
    body = json.dumps({"request": {"model": "echo/x", "messages": [
        {"role": "ROLE_USER", "content": [{"text": "one two three"}]}]}, "includeUsage": True})
    out = _grpcurl(grpcurl, mesh, "scillm.completion.v1.CompletionService/CompletionStream",
                   data=body)
    assert out.returncode == 0, out.stderr
    events = [json.loads(e) for e in out.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert "end" in events[-1]
    text = "".join(c["choices"][0]["delta"].get("content", "")
                   for e in events[:-1] for c in [e["chunk"]] if c.get("choices"))
    assert text.split() == ["one", "two", "three"]
    assert len(events) >= 4


async def test_health_reports_every_service(mesh: RunningMesh) -> None:
    async with grpc.aio.insecure_channel(mesh.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        overall = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert overall.status == health_pb2.HealthCheckResponse.SERVING
        # Every engine is ready here: z3 and coq (Prove), bubblewrap and the compilers
        # (CodeWorld), the sandbox (Agent) are installed by scripts/install.
        for name in SERVICES:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_echo_unary_honours_n_stop_and_max_tokens(mesh: RunningMesh) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        reply = await client.completion.create({
            "model": "echo/test", "n": 2, "max_tokens": 3,
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "a b c d e"}]})
        assert [c.message.content[0].text for c in reply.choices] == ["a b c", "a b c"]
        assert reply.choices[0].finish_reason == pb.FINISH_REASON_LENGTH
        assert reply.usage.completion_tokens > 0
        stopped = await client.completion.create({
            "model": "echo/test", "stop": ["STOP"],
            "messages": [{"role": "user", "content": "keep this STOP not this"}]})
        assert stopped.choices[0].message.content[0].text.strip() == "keep this"
        assert stopped.choices[0].finish_reason == pb.FINISH_REASON_STOP
        assert reply.routing.provider == "echo"


async def test_request_id_is_accepted_and_returned(mesh: RunningMesh) -> None:
    async with grpc.aio.insecure_channel(mesh.grpc_target) as channel:
        call = pb_stub(channel).Completion(
            pb.CompletionRequest(model="echo/x", messages=[
                pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="hi")])]),
            metadata=(("x-request-id", "req-123"),))
        reply = await call
        assert ("x-request-id", "req-123") in list(await call.trailing_metadata())
        assert reply.manifest.request_id == "req-123"
        fresh = pb_stub(channel).Completion(pb.CompletionRequest(model="echo/x", messages=[
            pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="hi")])]))
        await fresh
        ids = [v for k, v in await fresh.trailing_metadata() if k == "x-request-id"]
        assert ids and len(ids[0]) == 32


def pb_stub(channel: grpc.aio.Channel) -> object:
    from scillm.completion.v1 import completion_pb2_grpc

    return completion_pb2_grpc.CompletionServiceStub(channel)


@pytest.mark.parametrize(("request_", "code"), [
    (pb.CompletionRequest(model="nosuch/model", messages=[
        pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="x")])]),
     grpc.StatusCode.NOT_FOUND),
    (pb.CompletionRequest(model="echo/x"), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.CompletionRequest(model="echo/x", messages=[pb.Message(content=[
        pb.ContentPart(text="x")])]), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.CompletionRequest(model="", messages=[
        pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="x")])]),
     grpc.StatusCode.INVALID_ARGUMENT),
    (pb.CompletionRequest(model="echo/x", n=0, messages=[
        pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="x")])]),
     grpc.StatusCode.INVALID_ARGUMENT),
])
async def test_bad_input_gets_canonical_codes(mesh: RunningMesh, request_: pb.CompletionRequest,
                                              code: grpc.StatusCode) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            await client.completion.create(request_, timeout=10)
        assert info.value.code == code
        assert info.value.request_id
        assert "Traceback" not in info.value.message


_HI = [pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="hi")])]


def _struct(fields: dict[str, Any]) -> Struct:
    out = Struct()
    out.update(fields)
    return out


@pytest.mark.parametrize(("fields", "param"), [
    ({"presence_penalty": float("nan")}, "presence_penalty"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"presence_penalty": float("-inf")}, "presence_penalty"),
    ({"temperature": float("nan")}, "temperature"),
    ({"routing": pb.RoutingOptions(num_retries=-1)}, "scillm.num_retries"),
    ({"routing": pb.RoutingOptions(num_retries=1_000_000)}, "scillm.num_retries"),
    ({"extra_body": _struct({"temperature": 2.5})}, "temperature"),
    ({"extra_body": _struct({"temperature": float("nan")})}, "extra_body"),
    ({"extra_body": _struct({"top_p": 7})}, "top_p"),
    ({"extra_body": _struct({"frequency_penalty": "high"})}, "frequency_penalty"),
    ({"extra_body": _struct({"top_logprobs": 99})}, "top_logprobs"),
    ({"extra_body": _struct({"x": [1, {"y": float("inf")}]})}, "extra_body"),
    ({"tools": [pb.Tool(function=pb.FunctionDefinition(
        name="f", parameters=_struct({"default": float("nan")})))]},
     "tools[0].function.parameters"),
])
async def test_a_number_out_of_range_is_refused_by_its_field(
        mesh: RunningMesh, fields: dict[str, Any], param: str) -> None:
    """gRPC carries what JSON cannot (NaN, infinity) and any int32: a NaN penalty went
    upstream, and a call could ask for a million retries of a failing upstream; and its
    `extra_body` Struct carried sampling numbers no range check saw."""
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            await client.completion.create(
                pb.CompletionRequest(model="echo/x", messages=_HI, **fields), timeout=10)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == param


@pytest.mark.parametrize("key", ["scillm", "stream", "stream_options", "n", "max_tokens",
                                 "max_completion_tokens"])
async def test_the_meshs_own_options_are_not_read_from_extra_body(mesh: RunningMesh,
                                                                  key: str) -> None:
    """`extra_body.scillm.fallbacks` reached the engine where the key check reads only
    `routing.fallbacks`: a key limited to one model made it fail on purpose (a tiny
    `timeout_s`) and was answered by any model it named. SciLLM's options go in `routing`
    and a stream is its own RPC; the answers' number and length have fields of their own
    (a key reserves by them); in `extra_body` they are refused, naming the field."""
    fields = {"scillm": {"fallbacks": ["echo/y"], "timeout_s": 0.001},
              "stream": True, "stream_options": {"include_usage": True},
              # what a key's reservation counts, from the typed fields: n = 7 in extra_body
              # went upstream while the key reserved one answer
              "n": 7, "max_tokens": 100_000, "max_completion_tokens": 100_000}
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            await client.completion.create(pb.CompletionRequest(
                model="echo/x", messages=_HI, extra_body=_struct({key: fields[key]})),
                timeout=10)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert info.value.param == f"extra_body.{key}", info.value


async def test_unknown_model_names_close_ones(mesh: RunningMesh) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            await client.completion.create({"model": "ech/x", "messages": [
                {"role": "user", "content": "x"}]})
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert "echo" in info.value.message


async def test_oversized_request_is_resource_exhausted(mesh: RunningMesh) -> None:
    big = "x " * (mesh.mesh.settings.max_request_bytes // 2 + 10)
    async with ScillmClient(mesh.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            await client.completion.create({"model": "echo/x", "messages": [
                {"role": "user", "content": big}]}, timeout=20)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_stream_cancelled_midway_leaves_server_healthy(mesh: RunningMesh) -> None:
    words = " ".join(f"w{i}" for i in range(2000))
    async with ScillmClient(mesh.grpc_target) as client:
        stream = client.completion.stream({"model": "echo/x", "messages": [
            {"role": "user", "content": words}]})
        seen = 0
        async for _event in stream:
            seen += 1
            if seen == 5:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        assert seen == 5
        reply = await client.completion.create({"model": "echo/x", "messages": [
            {"role": "user", "content": "still here"}]})
        assert reply.choices[0].message.content[0].text == "still here"


async def test_a_burst_of_calls_on_one_channel_is_answered_whole(mesh: RunningMesh) -> None:
    """3,000 calls at once on one channel all get their answer: past gRPC's default limit
    of calls waiting for the server to pick them up (1,000), it cancelled the excess
    before any handler ran."""
    async with ScillmClient(mesh.grpc_target) as client:
        await client.completion.list_models()
        outcomes = await asyncio.gather(*(client.completion.list_models(timeout=120)
                                          for _ in range(3000)), return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert not failed, f"{len(failed)} failed, e.g. {failed[0]!r}"


async def test_an_rpc_a_servicer_lacks_is_unimplemented_not_internal(
        mesh: RunningMesh) -> None:
    # grpcio-health-checking's servicer does not implement Health/List: the generated
    # base raises NotImplementedError, which must map to UNIMPLEMENTED.
    async with grpc.aio.insecure_channel(mesh.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(),
                                                           timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_single_service_mode_serves_only_that_service(tmp_path: Path, grpcurl: str) -> None:
    running = start_mesh(mesh_settings(tmp_path, services=("completion",), http_enabled=False))
    try:
        out = _grpcurl(grpcurl, running, "list")
        listed = set(out.stdout.split())
        assert "scillm.completion.v1.CompletionService" in listed
        assert "scillm.prove.v1.ProveService" not in listed
    finally:
        running.stop()


def test_graceful_shutdown_finishes_in_flight_stream(tmp_path: Path) -> None:
    """Stop with a stream in flight: health NOT_SERVING, new calls refused, the stream
    finished inside the (generous) grace (see `stop_with_a_stream_in_flight`)."""
    upstream = HeldUpstream().start()
    config = upstream.config(tmp_path / "models.yaml", echo=True)
    running = start_mesh(mesh_settings(tmp_path, http_enabled=False, grace_period_s=120.0,
                                       config_path=config, services=("completion",)))
    try:
        asyncio.run(stop_with_a_stream_in_flight(
            running.grpc_target, upstream, lambda: asyncio.to_thread(running.stop, 120.0)))
    finally:
        upstream.stop()


@dataclass
class HeldHttpStream:
    """A mesh's OpenAI door streaming a completion of model `held`, whose upstream holds
    it after the first event: `lines` are the `data: ` lines still to come."""

    running: RunningMesh
    upstream: HeldUpstream
    first: str
    lines: Iterator[str]

    def stop_in_thread(self, grace: float) -> threading.Thread:
        stopping = threading.Thread(target=self.running.stop, args=(grace,), daemon=True)
        stopping.start()
        return stopping


@contextlib.contextmanager
def held_http_stream(tmp_path: Path, grace: float, words: list[str]
                     ) -> Iterator[HeldHttpStream]:
    """A `HeldHttpStream` of `words`, on a mesh whose grace is `grace`; the upstream is
    released and stopped on exit."""
    upstream = HeldUpstream().start()
    config = upstream.config(tmp_path / "models.yaml")
    running = start_mesh(mesh_settings(tmp_path, grace_period_s=grace, config_path=config,
                                       services=("completion",)))
    try:
        upstream.hold()
        with httpx.Client(timeout=60) as client, client.stream(
                "POST", f"{running.http_url}/v1/chat/completions", json={
                    "model": "held", "stream": True,
                    "messages": [{"role": "user", "content": " ".join(words)}]}) as reply:
            lines = (line for line in reply.iter_lines() if line.startswith("data: "))
            first = next(lines)
            assert upstream.arrived(1)
            yield HeldHttpStream(running, upstream, first, lines)
    finally:
        upstream.release()
        upstream.stop()


def _until_the_door_refuses(port: int) -> None:
    """Wait until the door at `port` refuses connections: its stop has begun."""
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except OSError:
            return
        assert time.monotonic() < deadline, "the door still takes connections"
        time.sleep(0.05)


def test_graceful_shutdown_finishes_an_http_stream_in_flight(tmp_path: Path) -> None:
    """The OpenAI door's half of the contract: a stream in flight when the stop begins
    runs to `[DONE]` with every word, while the door takes no new connection."""
    words = [f"w{i}" for i in range(50)]
    with held_http_stream(tmp_path, 120.0, words) as held:
        port = held.running.mesh.http_port
        stopping = held.stop_in_thread(120.0)
        _until_the_door_refuses(port)
        held.upstream.release()
        events = [held.first, *held.lines]
    assert events[-1] == "data: [DONE]"
    said = "".join(choice["delta"].get("content") or ""
                   for event in events[:-1] for choice in json.loads(event[6:])["choices"])
    assert said.split() == words
    stopping.join(60)
    assert not stopping.is_alive()


def test_both_doors_stop_together_under_one_grace(tmp_path: Path) -> None:
    """A process serving both doors drained the HTTP door for its grace and only then
    stopped the gRPC server, for a grace of its own: a new gRPC call started during the
    first grace was served, and a stop took up to twice its grace. Both doors stop at once
    now: once the stop begins (the door refuses connections), a new gRPC call is refused."""
    with held_http_stream(tmp_path, 120.0, ["one", "two"]) as held:
        port = held.running.mesh.http_port
        stopping = held.stop_in_thread(120.0)
        _until_the_door_refuses(port)

        async def new_call() -> None:
            async with ScillmClient(held.running.grpc_target) as client:
                await client.completion.create(
                    {"model": "held", "messages": [{"role": "user", "content": "late"}]},
                    timeout=10)

        with pytest.raises(RPCError) as info:
            asyncio.run(new_call())
        assert info.value.code == grpc.StatusCode.UNAVAILABLE, info.value
        held.upstream.release()
        assert list(held.lines)[-1] == "data: [DONE]"  # the stream in flight still ends
    stopping.join(60)
    assert not stopping.is_alive()


def test_an_http_stream_past_the_grace_ends_with_an_error_saying_so(tmp_path: Path) -> None:
    """A stream still held upstream when a (sub-second) grace runs out was cancelled by
    uvicorn: cut without an end, and "Exception in ASGI application" logged. It ends as a
    failure does once a stream has started: an in-band error saying the server is
    shutting down, then `[DONE]`, as a split layout's door already answered."""
    with held_http_stream(tmp_path, 0.5, ["never", "finished"]) as held:
        stopping = held.stop_in_thread(0.5)
        rest = list(held.lines)
    assert rest[-1] == "data: [DONE]", rest
    error = json.loads(rest[-2][6:])["error"]
    assert "shutting down" in error["message"], error
    assert error["type"] == "service_unavailable_error", error
    stopping.join(30)
    assert not stopping.is_alive()


def test_a_unary_call_past_the_grace_gets_openais_body(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    """A call still waiting upstream when the grace ran out was a plain-text 500
    "Internal Server Error" (uvicorn cancelled it): a 503 with OpenAI's body now."""
    upstream = HeldUpstream().start()
    config = upstream.config(tmp_path / "models.yaml")
    running = start_mesh(mesh_settings(tmp_path, grace_period_s=0.5, config_path=config,
                                       services=("completion",)))
    try:
        upstream.hold()
        replies: list[httpx.Response] = []
        call = threading.Thread(target=lambda: replies.append(httpx.post(
            f"{running.http_url}/v1/chat/completions", timeout=60,
            json={"model": "held", "messages": [{"role": "user", "content": "hi"}]})))
        call.start()
        assert upstream.arrived(1)
        running.stop(0.5)
        call.join(30)
    finally:
        upstream.release()
        upstream.stop()
    (reply,) = replies
    assert reply.status_code == 503, reply.text
    assert "shutting down" in reply.json()["error"]["message"], reply.text
    assert not [r for r in caplog.records if "Exception in ASGI" in r.getMessage()]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_door_alone_ends_its_calls_past_the_grace_as_failures(tmp_path: Path,
                                                                stream: bool) -> None:
    """A door whose services are in another process (`--service none`) had nothing to end
    its calls at the grace's end: uvicorn cancelled them, a unary call became a bare
    "500 Internal Server Error" and a stream was cut without its end. Each ends as a
    failure does: a 503 with OpenAI's body, or an in-band error and `[DONE]`."""
    upstream = HeldUpstream().start()
    config = upstream.config(tmp_path / "models.yaml")
    backend = start_mesh(mesh_settings(tmp_path / "backend", config_path=config,
                                       services=("completion",), http_enabled=False))
    door = start_mesh(mesh_settings(tmp_path / "door", services=(), grace_period_s=0.5,
                                    completion_target=backend.grpc_target))
    try:
        upstream.hold()
        body = {"model": "held", "stream": stream,
                "messages": [{"role": "user", "content": "never finished"}]}
        replies: list[tuple[int, str]] = []

        def call() -> None:
            with httpx.Client(timeout=60) as client, client.stream(
                    "POST", f"{door.http_url}/v1/chat/completions", json=body) as reply:
                replies.append((reply.status_code, reply.read().decode()))

        caller = threading.Thread(target=call)
        caller.start()
        assert upstream.arrived(1)
        door.stop(0.5)
        caller.join(30)
        assert not caller.is_alive()
    finally:
        upstream.release()
        backend.stop()
        upstream.stop()
    ((status, text),) = replies
    if not stream:
        assert status == 503, text
        assert "shutting down" in json.loads(text)["error"]["message"], text
        return
    lines = [line for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]", text
    error = json.loads(lines[-2][6:])["error"]
    assert "shutting down" in error["message"], error
    assert error["type"] == "service_unavailable_error", error


@pytest.mark.parametrize("alone", [False, True], ids=["with-its-services", "alone"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_traced_door_ends_its_calls_past_the_grace_as_failures(
        tmp_path: Path, stream: bool, alone: bool) -> None:
    """With tracing on, a door dials its gRPC server (its own, or, alone, its services'
    process) rather than the in-process channel: its stream past the grace was cut without
    its end, and, alone, a unary call was a bare 500 (OpenTelemetry's interceptor, outside
    the stopper's, held the call until it ended, so the stop never saw it). A real `scillm
    serve` with an OTLP endpoint, stopped by SIGTERM with `--grace 0.5`."""
    upstream = HeldUpstream().start()
    config = upstream.config(tmp_path / "models.yaml")
    backend = start_mesh(mesh_settings(tmp_path / "backend", config_path=config,
                                       services=("completion",), http_enabled=False)) \
        if alone else None
    layout = ["--service", "none", "--completion-target", backend.grpc_target] \
        if backend is not None else ["--service", "completion"]
    with OtlpReceiver() as receiver:
        served = ServedProcess("traced", [
            *layout, "--grpc-port", "0", "--http-port", "0", "--grace", "0.5"], {
            **os.environ, "SCILLM_CONFIG_PATH": str(config),
            "SCILLM_STORE_PATH": str(tmp_path / "runs.sqlite3"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true"}, tmp_path / "traced.log")
        try:
            served.wait_ready()
            upstream.hold()
            replies: list[tuple[int, str]] = []

            def call() -> None:
                with httpx.Client(timeout=60) as client, client.stream(
                        "POST", f"{served.http_url}/v1/chat/completions", json={
                            "model": "held", "stream": stream, "messages": [
                                {"role": "user", "content": "never finished"}]}) as reply:
                    replies.append((reply.status_code, reply.read().decode()))

            caller = threading.Thread(target=call)
            caller.start()
            assert upstream.arrived(1)
            served.proc.terminate()
            caller.join(30)
            assert not caller.is_alive()
            assert served.proc.wait(30) == 0, served.log.read_text()[-3000:]
        finally:
            served.stop()
            if backend is not None:
                backend.stop()
            upstream.release()
            upstream.stop()
    ((status, text),) = replies
    if stream:
        rest = [line for line in text.splitlines() if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]", rest
        error = json.loads(rest[-2][6:])["error"]
    else:
        assert status == 503, text
        error = json.loads(text)["error"]
    assert "shutting down" in error["message"], error
    assert error["type"] == "service_unavailable_error", error


def test_metrics_port_beside_grpc(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    running = start_mesh(mesh_settings(tmp_path, services=("completion",), http_enabled=False,
                                       metrics_port=port))
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "scillm_rpc_latency_seconds" in body
    finally:
        running.stop()


def test_connections_that_never_send_a_whole_request_are_let_go(tmp_path: Path) -> None:
    """A caller holding 200 connections with half a request head each (slowloris) holds
    none of them past `http_read_timeout_s`: each gets 408 and is closed; a real request
    meanwhile is answered."""
    running = start_mesh(mesh_settings(tmp_path, services=("completion",),
                                       http_read_timeout_s=0.5))
    port = running.mesh.http_port
    held = []
    try:
        for _ in range(200):
            conn = socket.create_connection(("127.0.0.1", port), timeout=30)
            conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
            held.append(conn)
        answered = httpx.post(f"{running.http_url}/v1/chat/completions", timeout=30, json={
            "model": "echo/x", "messages": [{"role": "user", "content": "still here"}]})
        assert answered.status_code == 200, answered.text
        replies = []
        for conn in held:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            replies.append(data)
    finally:
        for conn in held:
            conn.close()
        running.stop()
    assert all(r.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for r in replies)


def test_the_http_read_timeout_must_be_positive(tmp_path: Path) -> None:
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="http_read_timeout_s must be > 0"):
            mesh_settings(tmp_path, http_read_timeout_s=bad).validate()
