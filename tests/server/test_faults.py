"""Process faults with real `scillm serve` processes: a replica killed with SIGKILL under
load (clients go on through the others), and SIGTERM letting an in-flight stream finish.

The upstream is the test's own (`held_upstream`): it holds its answers until the test
releases them, so the faults land while calls are surely in flight, however slow the
machine, and no timing decides the outcome."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest
from held_upstream import HeldUpstream
from meshutil import stop_with_a_stream_in_flight

from scillm.clients import ScillmClient
from scillm.completion.v1 import completion_pb2 as pb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replica(tmp: Path, config: Path) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "scillm"), "serve", "--service", "completion",
         "--grpc-port", str(port), "--no-http", "--grace", "120", "--config", str(config)],
        env={**os.environ, "SCILLM_STORE_PATH": str(tmp / f"{port}.sqlite3")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "scillm: gRPC on" in line:
            return proc, port
    raise AssertionError("replica did not start")


@pytest.fixture
def upstream() -> Iterator[HeldUpstream]:
    running = HeldUpstream().start()
    yield running
    running.stop()


@pytest.fixture
def replicas(tmp_path: Path, upstream: HeldUpstream,
             ) -> Iterator[list[tuple[subprocess.Popen[str], int]]]:
    """Two Completion replicas whose model `held` is the test's upstream (and `echo/*`)."""
    config = upstream.config(tmp_path / "models.yaml", echo=True)
    started = [_replica(tmp_path, config) for _ in range(2)]
    yield started
    for proc, _ in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _ask(client: ScillmClient, i: int) -> Awaitable[pb.CompletionResponse]:
    return client.completion.create({"model": "held", "messages": [
        {"role": "user", "content": f"request {i}"}]}, timeout=60)


async def test_a_killed_replica_loses_no_request(
        replicas: list[tuple[subprocess.Popen[str], int]], upstream: HeldUpstream) -> None:
    """160 calls held by the upstream across both replicas (so surely in flight) when one
    replica is SIGKILLed: the channel retries that replica's calls on the other, and every
    call is answered."""
    target = ",".join(f"127.0.0.1:{port}" for _, port in replicas)
    async with ScillmClient(target) as client:
        first = await asyncio.gather(*(_ask(client, i) for i in range(40)))
        upstream.hold()
        second_batch = asyncio.gather(*(_ask(client, i) for i in range(40, 200)))
        assert await asyncio.to_thread(upstream.arrived, 160), "calls did not arrive"
        replicas[0][0].send_signal(signal.SIGKILL)
        replicas[0][0].wait(timeout=30)
        upstream.release()
        second = await second_batch
    said = [reply.choices[0].message.content[0].text for reply in first + second]
    assert said == [f"request {i}" for i in range(200)]
    assert upstream.requests > 200  # the killed replica's calls reached the upstream again


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
async def test_sigterm_lets_an_in_flight_stream_finish(
        replicas: list[tuple[subprocess.Popen[str], int]], upstream: HeldUpstream,
        signum: signal.Signals) -> None:
    """SIGTERM with a stream in flight: health NOT_SERVING, new calls refused, the stream
    finished, and the process exits 0 inside its 120 s grace (see
    `stop_with_a_stream_in_flight`). SIGHUP (its terminal closed, or a `kill -HUP` meant
    as a reload) stops it the same way: it killed the process on the spot, in-flight
    calls and all."""
    proc, port = replicas[0]

    def terminate() -> int:
        proc.send_signal(signum)
        return proc.wait(timeout=150)

    assert await stop_with_a_stream_in_flight(
        f"127.0.0.1:{port}", upstream, lambda: asyncio.to_thread(terminate)) == 0
