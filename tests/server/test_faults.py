"""Process faults with real `scillm serve` processes: a replica killed with SIGKILL under
load (clients go on through the others), and SIGTERM letting an in-flight stream finish."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scillm.clients import ScillmClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replica(tmp: Path) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "scillm"), "serve", "--service", "completion",
         "--grpc-port", str(port), "--no-http", "--grace", "5"],
        env={**os.environ, "SCILLM_STORE_PATH": str(tmp / f"{port}.sqlite3")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "scillm: gRPC on" in line:
            return proc, port
    raise AssertionError("replica did not start")


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[str], int]]]:
    started = [_replica(tmp_path) for _ in range(2)]
    yield started
    for proc, _ in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def test_a_killed_replica_loses_no_request(
        replicas: list[tuple[subprocess.Popen[str], int]]) -> None:
    target = ",".join(f"127.0.0.1:{port}" for _, port in replicas)
    async with ScillmClient(target) as client:
        async def ask(i: int) -> str:
            reply = await client.completion.create({"model": "echo/x", "messages": [
                {"role": "user", "content": f"request {i}"}],
                "scillm": {"cache": {"bypass": True, "no_store": True}}}, timeout=20)
            return reply.choices[0].message.content[0].text

        first = await asyncio.gather(*(ask(i) for i in range(40)))
        second_batch = asyncio.gather(*(ask(i) for i in range(40, 200)))
        await asyncio.sleep(0.005)  # the kill lands while the second batch is in flight
        replicas[0][0].send_signal(signal.SIGKILL)
        second = await second_batch
    assert first + second == [f"request {i}" for i in range(200)]


async def test_sigterm_lets_an_in_flight_stream_finish(
        replicas: list[tuple[subprocess.Popen[str], int]]) -> None:
    proc, port = replicas[0]
    words = " ".join(f"w{i}" for i in range(30_000))  # held by flow control while we read
    async with ScillmClient(f"127.0.0.1:{port}") as client:
        stream = client.completion.stream({"model": "echo/x", "messages": [
            {"role": "user", "content": words}]})
        assert (await anext(stream)).HasField("chunk")
        proc.send_signal(signal.SIGTERM)
        rest = [event async for event in stream]
    assert rest[-1].HasField("end")
    assert sum(len(c.delta.content.split()) for e in rest if e.HasField("chunk")
               for c in e.chunk.choices) == 30_000
    assert proc.wait(timeout=15) == 0
