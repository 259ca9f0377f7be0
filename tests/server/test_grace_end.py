"""A call still running when its replica's grace ends fails; no channel retries it
(server/grace_end.py).

Two Completion replicas share one upstream that holds its answers (`held_upstream`), and a
client balances over both (its service config retries UNAVAILABLE). A completion is held
upstream while the replica serving it stops with a short grace: its caller must get the
failure, saying the server is shutting down, and the upstream must have been asked once.
Before, the server ended the call UNAVAILABLE, the channel retried it on the other
replica, and the upstream answered it a second time: twice the cost for one request. A
call the stopping replica refuses before its handler runs is still retried
(`meshutil.refused_code`, tests/server/test_faults.py).

No timing decides the outcome: the upstream is released only once the stop has returned
and the upstream has seen the cut call's request go, and then the first call either has
failed or, retried, is answered.

The replica counts the cut call, and its server span says it ended, with the status its
caller got (ABORTED), not as a caller who left.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from held_upstream import HeldUpstream
from meshutil import RunningMesh, ServedProcess, mesh_settings, start_mesh
from otlp_receiver import OtlpReceiver

from scillm.clients import RPCError, ScillmClient

ECHO = {"model": "echo/x", "messages": [{"role": "user", "content": "one two three"}]}
HELD = {"model": "held", "messages": [{"role": "user", "content": "only once"}]}
METHOD = "CompletionService/Completion"


@dataclass
class Replicas:
    upstream: HeldUpstream
    meshes: list[RunningMesh]
    tmp: Path

    @property
    def target(self) -> str:
        return ",".join(running.grpc_target for running in self.meshes)

    async def stop_the_one_serving(self) -> RunningMesh:
        """Once the upstream holds one call: stop the replica serving it, grace 0.5 s; the
        replica."""
        assert await asyncio.to_thread(self.upstream.arrived, 1), "the call never arrived"
        serving = [running for running in self.meshes if _in_flight(running)]
        assert len(serving) == 1 and self.upstream.requests == 1
        await asyncio.to_thread(serving[0].stop, 0.5)
        return serving[0]


@pytest.fixture(params=["native", "grpcio"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicas]:
    """Two Completion replicas on the server the parameter names; model `held` is the
    test's upstream, which holds its answers."""
    upstream = HeldUpstream().start()
    config = upstream.config(tmp_path / "models.yaml", echo=True)
    meshes: list[RunningMesh] = []
    for name in ("a", "b"):
        meshes.append(start_mesh(mesh_settings(
            tmp_path / name, services=("completion",), config_path=config,
            http_enabled=False, grpc_server=request.param)))
    upstream.hold()
    yield Replicas(upstream, meshes, tmp_path)
    upstream.release()
    for running in meshes:
        if running.thread.is_alive():
            running.stop()
    upstream.stop()


def _in_flight(running: RunningMesh) -> float:
    return running.mesh.metrics.registry.get_sample_value(
        "scillm_rpc_in_flight", {"method": METHOD}) or 0.0


def _finished(running: RunningMesh, code: str) -> float:
    """How many `held` calls the replica counted as finished with `code`."""
    return running.mesh.metrics.registry.get_sample_value(
        "scillm_rpc_requests_total", {"method": METHOD, "model": "held", "code": code}) or 0.0


async def test_a_call_cut_at_the_grace_end_is_not_retried_on_another_replica(
        replicas: Replicas) -> None:
    async with ScillmClient(replicas.target) as client:
        ask = asyncio.ensure_future(client.completion.create(
            HELD, timeout=60, request_id="cut-once-1"))
        await replicas.stop_the_one_serving()
        # Before the release: a connection closed after it may be answered first (the
        # stop ends the call's upstream request, but the upstream sees it a moment later).
        assert await asyncio.to_thread(replicas.upstream.abandoned, 1), \
            "the upstream request outlived the call"
        replicas.upstream.release()
        with pytest.raises(RPCError) as info:
            await ask
        # The other replica serves on.
        answer = await client.completion.create(ECHO, timeout=20)
    assert replicas.upstream.requests == 1, "the upstream was asked again for the call"
    assert info.value.code == grpc.StatusCode.ABORTED, info.value
    assert "shutting down" in info.value.message
    assert info.value.reason == "ServerShuttingDown"
    assert info.value.request_id == "cut-once-1"
    assert answer.choices[0].message.content[0].text == "one two three"


async def test_the_cut_call_is_counted_with_the_status_its_caller_got(
        replicas: Replicas) -> None:
    """The replica's metrics counted the cut call CANCELLED (its handler was cancelled),
    though its caller got ABORTED: a rolling restart read as callers hanging up."""
    async with ScillmClient(replicas.target) as client:
        ask = asyncio.ensure_future(client.completion.create(HELD, timeout=60))
        stopped = await replicas.stop_the_one_serving()
        replicas.upstream.release()
        with pytest.raises(RPCError) as info:
            await ask
    assert info.value.code == grpc.StatusCode.ABORTED, info.value
    counted = {code: _finished(stopped, code) for code in ("ABORTED", "CANCELLED", "OK")}
    assert counted == {"ABORTED": 1, "CANCELLED": 0, "OK": 0}, counted
    assert _in_flight(stopped) == 0


async def test_a_door_answers_a_call_its_service_cut_with_a_503(replicas: Replicas) -> None:
    """A door whose Completion is in other processes gets the cut call's failure, and
    answers it as it answers its own calls cut at a grace's end: a 503 with OpenAI's body.
    """
    door = start_mesh(mesh_settings(replicas.tmp / "door", services=(),
                                    completion_target=replicas.target))
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            ask = asyncio.ensure_future(http.post(
                f"{door.http_url}/v1/chat/completions", json=HELD))
            await replicas.stop_the_one_serving()
            replicas.upstream.release()
            reply = await ask
    finally:
        door.stop()
    assert replicas.upstream.requests == 1, "the upstream was asked again for the call"
    assert reply.status_code == 503, reply.text
    error = reply.json()["error"]
    assert error["type"] == "service_unavailable_error", error
    assert "shutting down" in error["message"], error


def _traced_replica(tmp_path: Path, receiver: OtlpReceiver, server: str, config: Path,
                    *args: str) -> ServedProcess:
    """`scillm serve --service completion` on `server`'s gRPC server, exporting its spans
    to `receiver` (not yet started)."""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_SERVICE_NAME": "replica",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "SCILLM_STORE_PATH": str(tmp_path / "runs.sqlite3")}
    return ServedProcess("replica", [
        "--service", "completion", "--grpc-port", "0", "--no-http", "--grpc-server", server,
        "--config", str(config), *args], env, tmp_path / "replica.log")


@pytest.mark.parametrize("server", ["native", "grpcio"])
async def test_the_cut_calls_server_span_says_aborted(tmp_path: Path, server: str) -> None:
    """The replica's server span of the cut call said it had succeeded (status code 0: its
    handler was cancelled, and nothing told the span otherwise; on grpcio's server the
    stop's abort reached it once it had ended, logging warnings). A traced replica, stopped
    (SIGTERM) with a call held upstream, exports it with the status its caller got."""
    upstream = HeldUpstream().start()
    config = upstream.config(tmp_path / "models.yaml")
    with OtlpReceiver() as receiver:
        replica = _traced_replica(tmp_path, receiver, server, config, "--grace", "0.5")
        try:
            replica.wait_ready()
            upstream.hold()
            async with ScillmClient(replica.grpc_target) as client:
                ask = asyncio.ensure_future(client.completion.create(HELD, timeout=60))
                assert await asyncio.to_thread(upstream.arrived, 1), "the call never arrived"
                await asyncio.to_thread(replica.stop)
                with pytest.raises(RPCError) as info:
                    await ask
            spans = await asyncio.to_thread(receiver.wait_for, lambda spans: any(
                s.kind == "SERVER" and s.name.endswith(METHOD) for s in spans))
        finally:
            replica.stop()
            upstream.release()
            upstream.stop()
    assert info.value.code == grpc.StatusCode.ABORTED, info.value
    (span,) = [s for s in spans if s.kind == "SERVER" and s.name.endswith(METHOD)]
    assert span.attributes["rpc.grpc.status_code"] == str(grpc.StatusCode.ABORTED.value[0]), span
    # Nothing told the span after it ended (grpcio's stop aborted the call through it).
    assert "ended span" not in replica.log.read_text(errors="replace")


@pytest.mark.parametrize("server", ["native", "grpcio"])
async def test_a_cancelled_calls_server_span_says_cancelled(tmp_path: Path, server: str) -> None:
    """A call its caller cancelled (a caller hanging up, an SDK's timeout) was exported as
    a server span that succeeded (status code 0): the handler was cancelled and nothing
    told the span. It says CANCELLED now, as the mesh's metrics count it."""
    upstream = HeldUpstream().start()
    config = upstream.config(tmp_path / "models.yaml")
    with OtlpReceiver() as receiver:
        replica = _traced_replica(tmp_path, receiver, server, config)
        try:
            replica.wait_ready()
            upstream.hold()
            async with ScillmClient(replica.grpc_target) as client:
                ask = asyncio.ensure_future(client.completion.create(HELD, timeout=60))
                assert await asyncio.to_thread(upstream.arrived, 1), "the call never arrived"
                ask.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await ask
            spans = await asyncio.to_thread(receiver.wait_for, lambda spans: any(
                s.kind == "SERVER" and s.name.endswith(METHOD) for s in spans))
        finally:
            upstream.release()
            replica.stop()
            upstream.stop()
    (span,) = [s for s in spans if s.kind == "SERVER" and s.name.endswith(METHOD)]
    assert span.attributes["rpc.grpc.status_code"] == \
        str(grpc.StatusCode.CANCELLED.value[0]), span
