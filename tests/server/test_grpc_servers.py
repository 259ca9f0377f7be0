"""The gRPC door on each of its servers (`Settings.grpc_server`): pygrpc-native's, the
default, and grpc.aio's (also what TLS runs on). A caller must not be able to tell them
apart: replies and request ids, mapped errors with their details, services this process
does not serve, streams, deadlines, size limits, reflection through the real grpcurl,
and a client given a list of replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from held_upstream import HeldUpstream
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient, openai_wire
from scillm.completion.v1 import completion_pb2_grpc
from scillm.server.settings import Settings

ECHO = {"model": "echo/x", "messages": [{"role": "user", "content": "one two three"}]}
LIMIT = 64 * 1024


@dataclass
class Door:
    server: str
    mesh: RunningMesh
    upstream: HeldUpstream

    @property
    def target(self) -> str:
        return self.mesh.grpc_target


@pytest.fixture(scope="module", params=["native", "grpcio"])
def door(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    """A Completion mesh on the server named by the parameter; model `held` is an upstream
    that holds its answers while the test says so."""
    upstream = HeldUpstream().start()
    tmp = tmp_path_factory.mktemp(request.param)
    config = tmp / "models.yaml"
    config.write_text(json.dumps({"model_list": [
        {"model_name": "held", "litellm_params": {
            "model": "openai/held", "api_base": upstream.url, "api_key": "x"}},
        {"model_name": "echo/*", "litellm_params": {"model": "echo/*"}}]}))
    running = start_mesh(mesh_settings(tmp, services=("completion",), config_path=config,
                                       grpc_server=request.param, max_request_bytes=LIMIT))
    yield Door(request.param, running, upstream)
    running.stop()
    upstream.stop()


def test_the_server_is_the_one_configured(door: Door) -> None:
    import pygrpc_native.aio

    server = door.mesh.mesh._server
    assert isinstance(server, pygrpc_native.aio.Server) == (door.server == "native")
    assert isinstance(server, grpc.aio.Server)


async def test_a_reply_carries_the_callers_request_id(door: Door) -> None:
    async with grpc.aio.insecure_channel(door.target) as channel:
        call = completion_pb2_grpc.CompletionServiceStub(channel).Completion(
            openai_wire.request_to_proto(ECHO), timeout=20,
            metadata=(("x-request-id", "caller-chosen-1"),))
        reply = await call
        trailers = dict(await call.trailing_metadata() or ())
    assert reply.choices[0].message.content[0].text == "one two three"
    assert reply.manifest.request_id == "caller-chosen-1"
    assert trailers["x-request-id"] == "caller-chosen-1"


async def test_a_manifest_names_the_versions_of_the_parts_that_served_it(door: Door) -> None:
    from importlib import metadata
    from platform import python_version

    async with ScillmClient(door.target) as client:
        reply = await client.completion.create(ECHO, timeout=20)
    installed = {dist: metadata.version(dist)
                 for dist in ("scillm", "grpcio", "pygrpc-native", "protobuf")}
    assert dict(reply.manifest.versions) == {"python": python_version(), **installed}


async def test_a_mapped_error_has_its_code_details_and_request_id(door: Door) -> None:
    async with ScillmClient(door.target) as client:
        with pytest.raises(RPCError) as info:
            await client.completion.create({**ECHO, "model": "nope"}, timeout=20,
                                           request_id="caller-chosen-2")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.reason == "ModelNotFound"
    assert info.value.param == "model"
    assert info.value.request_id == "caller-chosen-2"
    assert "nope" in info.value.message


async def test_a_service_not_served_here_says_where_it_lives(door: Door) -> None:
    async with grpc.aio.insecure_channel(door.target) as channel:
        prove = channel.unary_unary("/scillm.prove.v1.ProveService/Prove")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await prove(b"", timeout=20)
        unknown = channel.unary_unary("/no.such.v1.Service/Method")
        with pytest.raises(grpc.aio.AioRpcError) as nothing:
            await unknown(b"", timeout=20)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "scillm serve --service prove" in (info.value.details() or "")
    assert nothing.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_stream_arrives_in_order_and_ends(door: Door) -> None:
    async with ScillmClient(door.target) as client:
        events = [event async for event in client.completion.stream(ECHO, timeout=20)]
    *chunks, end = events
    said = "".join(choice.delta.content for event in chunks for choice in event.chunk.choices)
    assert said.split() == ["one", "two", "three"]
    assert end.HasField("end") and end.end.manifest.run_id


@contextlib.asynccontextmanager
async def held(door: Door) -> AsyncIterator[ScillmClient]:
    """A client of the door while the upstream holds its answers (released on exit)."""
    door.upstream.hold()
    try:
        async with ScillmClient(door.target) as client:
            yield client
    finally:
        door.upstream.release()


async def _arrived(door: Door) -> None:
    assert await asyncio.to_thread(door.upstream.arrived, 1), "the call never arrived"


async def _abandoned(door: Door, count: int) -> None:
    assert await asyncio.to_thread(door.upstream.abandoned, count, 30), \
        "the upstream request outlived its caller"


async def test_a_deadline_ends_a_held_call(door: Door) -> None:
    async with held(door) as client:
        ask = asyncio.ensure_future(client.completion.create(
            {**ECHO, "model": "held"}, timeout=1.0))
        await _arrived(door)
        with pytest.raises(RPCError) as info:
            await ask
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_caller_who_leaves_ends_the_upstream_call(door: Door) -> None:
    """Cancelling a call on the door cancels its handler, which closes the upstream
    request: a caller who leaves does not keep paying for tokens."""
    before = door.upstream.abandoned_so_far
    async with held(door) as client:
        ask = asyncio.ensure_future(client.completion.create(
            {**ECHO, "model": "held"}, timeout=60))
        await _arrived(door)
        ask.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ask
        await _abandoned(door, before + 1)


async def test_a_caller_who_leaves_a_stream_ends_the_upstream_stream(door: Door) -> None:
    before = door.upstream.abandoned_so_far
    async with held(door) as client:
        events = client.completion.stream({**ECHO, "model": "held"}, timeout=60)
        first = await anext(events)
        assert first.chunk.choices[0].delta.content == "one"
        await events.aclose()
        await _abandoned(door, before + 1)


async def test_a_request_over_the_limit_is_refused(door: Door) -> None:
    big = {**ECHO, "messages": [{"role": "user", "content": "x" * (2 * LIMIT)}]}
    async with ScillmClient(door.target) as client:
        with pytest.raises(RPCError) as info:
            await client.completion.create(big, timeout=20)
        small = await client.completion.create(ECHO, timeout=20)  # the connection lives on
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert small.choices[0].message.content[0].text == "one two three"


async def test_a_request_that_does_not_parse_is_the_callers_error(
        door: Door, caplog: pytest.LogCaptureFixture) -> None:
    """Bytes that are no CompletionRequest (a string field of invalid UTF-8, a truncated
    field) were INTERNAL "Exception deserializing request!", and each logged a traceback
    on the server: a caller could fill the log by sending garbage. They are the caller's
    error, answered INVALID_ARGUMENT naming the message type, logged by no traceback."""
    garbage = {"invalid UTF-8": b"\x0a\x02\xff\xfe", "truncated": b"\x0a\x10ab"}
    async with grpc.aio.insecure_channel(door.target) as channel:
        for path in ("Completion", "CompletionStream"):
            for name, raw in garbage.items():
                call = (channel.unary_unary if path == "Completion" else channel.unary_stream)(
                    f"/scillm.completion.v1.CompletionService/{path}")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    reply = call(raw, timeout=20, metadata=(("x-request-id", "garbage-1"),))
                    if path == "Completion":
                        await reply
                    else:
                        [_ async for _ in reply]
                error = info.value
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, name, error)
                kind = "CompletionRequest" if path == "Completion" else "CompletionStreamRequest"
                assert f"'scillm.completion.v1.{kind}'" in (error.details() or "")
                assert ("x-request-id", "garbage-1") in tuple(error.trailing_metadata() or ())
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    async with ScillmClient(door.target) as client:  # the connection and server live on
        answer = await client.completion.create(ECHO, timeout=20)
    assert answer.choices[0].message.content[0].text == "one two three"


@pytest.mark.parametrize(("field", "param"), [
    ("role", "messages[0].role"), ("tool_choice", "tool_choice.mode"),
    ("response_format", "response_format.type")])
async def test_an_enum_value_this_server_does_not_know_is_refused(
        door: Door, field: str, param: str) -> None:
    """A role, tool-choice mode or response format this server does not know (a newer
    client's) was read as the default (a user message, auto, text), silently."""
    from scillm.completion.v1 import completion_pb2 as pb

    request = openai_wire.request_to_proto(ECHO)
    if field == "role":
        request.messages[0].role = 42  # type: ignore[assignment]
    elif field == "tool_choice":
        request.tool_choice.mode = 42  # type: ignore[assignment]
    else:
        request.response_format.type = 42  # type: ignore[assignment]
    assert isinstance(request, pb.CompletionRequest)
    async with ScillmClient(door.target) as client:
        with pytest.raises(RPCError) as info:
            await client.completion.create(request, timeout=20)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == param and "42" in info.value.message


async def test_a_list_of_replicas_is_one_target(door: Door) -> None:
    """`ScillmClient("a,b")` balances over both. gRPC's C core would send the whole list
    as the :authority, which the native server's HTTP/2 refuses as malformed: the client
    names the first address instead."""
    async with ScillmClient(f"{door.target},{door.target}") as client:
        replies = await asyncio.gather(*(client.completion.create(
            {**ECHO, "messages": [{"role": "user", "content": f"call {i}"}]}, timeout=20)
            for i in range(8)))
    assert [r.choices[0].message.content[0].text for r in replies] == \
        [f"call {i}" for i in range(8)]


def test_reflection_through_grpcurl(door: Door, grpcurl: str) -> None:
    out = subprocess.run([grpcurl, "-plaintext", "-max-time", "20", door.target, "list"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    listed = set(out.stdout.split())
    assert {"scillm.completion.v1.CompletionService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= listed
    described = subprocess.run(
        [grpcurl, "-plaintext", "-max-time", "20", door.target, "describe",
         "scillm.completion.v1.CompletionService"],
        capture_output=True, text=True, timeout=30, check=False)
    assert "rpc Completion" in described.stdout, described.stderr


def test_an_unknown_server_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="native, grpcio"):
        Settings.from_env({"SCILLM_GRPC_SERVER": "fastest"})
    assert Settings.from_env({}).grpc_server == "native"
    scillm = str(Path(sys.executable).parent / "scillm")
    for args, env, said in (
            (["--grpc-server", "fastest"], {}, "invalid choice: 'fastest'"),
            ([], {"SCILLM_GRPC_SERVER": "fastest"}, "grpc_server must be one of native, grpcio")):
        out = subprocess.run([scillm, "serve", "--grpc-port", "0", "--no-http", *args],
                             env={**os.environ, **env}, capture_output=True, text=True,
                             timeout=60, check=False)
        assert out.returncode == 2
        assert said in out.stderr and "Traceback" not in out.stderr


def test_the_native_server_runs_the_http2_threads_it_is_given(tmp_path: Path) -> None:
    def io_threads() -> int:
        return sum((task / "comm").read_text().strip() == "grpc-native-io"
                   for task in Path("/proc/self/task").iterdir())

    assert Settings.from_env({}).grpc_io_threads == 1
    before = io_threads()
    running = start_mesh(mesh_settings(tmp_path, services=("completion",), grpc_io_threads=3))
    try:
        assert io_threads() == before + 3
    finally:
        running.stop()


def test_a_bad_thread_count_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"grpc_io_threads must be 1\.\.64, got 0"):
        Settings.from_env({"SCILLM_GRPC_IO_THREADS": "0"})
    scillm = str(Path(sys.executable).parent / "scillm")
    for value, said in (("0", "grpc_io_threads must be 1..64, got 0"),
                        ("two", "SCILLM_GRPC_IO_THREADS must be an integer, not 'two'")):
        out = subprocess.run([scillm, "serve", "--grpc-port", "0", "--no-http"],
                             env={**os.environ, "SCILLM_GRPC_IO_THREADS": value},
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 2
        assert said in out.stderr and "Traceback" not in out.stderr
