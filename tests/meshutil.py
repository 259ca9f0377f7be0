"""A real mesh on 127.0.0.1:0, run in its own thread and event loop, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from held_upstream import HeldUpstream

from scillm.clients import ScillmClient
from scillm.completion.v1 import completion_pb2 as pb
from scillm.completion.v1 import completion_pb2_grpc
from scillm.server.app import Mesh
from scillm.server.settings import Settings


@dataclass
class RunningMesh:
    """A mesh serving in a background thread; talk to it over the network."""

    mesh: Mesh
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def grpc_target(self) -> str:
        return self.mesh.grpc_target

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.mesh.http_port}"

    def stop(self, grace: float = 1.0) -> None:
        asyncio.run_coroutine_threadsafe(self.mesh.stop(grace), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def start_mesh(settings: Settings) -> RunningMesh:
    """Start a mesh in a new thread with a uvloop event loop; return when it serves."""
    import uvloop

    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mesh", daemon=True)
    thread.start()
    mesh = Mesh(settings)
    asyncio.run_coroutine_threadsafe(mesh.start(), loop).result(timeout=60)
    return RunningMesh(mesh, loop, thread)


def mesh_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test mesh: free ports, a private run store."""
    base = Settings(grpc_port=0, http_port=0, store_path=tmp_path / "runs.sqlite3",
                    grace_period_s=2.0)
    return replace(base, **overrides)  # type: ignore[arg-type]



class ServedProcess:
    """`scillm serve ARGS` as a child process, its output in a log file; `start` returns
    once it prints its ready line, and knows the ports it bound (pass port 0)."""

    READY = re.compile(r"scillm: gRPC(?: \(TLS\))? on (\S+?)(?:, HTTP on (\S+))? \(")

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self.grpc_target = ""
        self.http_url = ""
        scillm = str(Path(sys.executable).parent / "scillm")
        with log.open("wb") as out:
            self.proc = subprocess.Popen([scillm, "serve", *args], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> ServedProcess:
        deadline = time.monotonic() + timeout
        while True:
            match = self.READY.search(self.log.read_text(errors="replace"))
            if match:
                self.grpc_target, self.http_url = match.group(1), match.group(2) or ""
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"scillm serve ({self.name}) did not start:\n"
                                     + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown); if it is not over within 20 s, SIGKILL to its
        process group (it, sandbox workers, provers) while it still holds the group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


async def refused_code(target: str) -> grpc.StatusCode:
    """The status a new `echo/x` call gets once a stopping server takes no more work.

    Asked again (on a new channel each time) while calls are still answered, i.e. while
    the shutdown has not reached that point yet; fails after 60 s.
    """
    request = pb.CompletionRequest(model="echo/x", messages=[pb.Message(
        role=pb.ROLE_USER, content=[pb.ContentPart(text="late")])])
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        async with grpc.aio.insecure_channel(target) as channel:
            try:
                await completion_pb2_grpc.CompletionServiceStub(channel).Completion(
                    request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        assert asyncio.get_running_loop().time() < deadline, "new calls were never refused"
        await asyncio.sleep(0.05)


async def stop_with_a_stream_in_flight(target: str, upstream: HeldUpstream,
                                       begin_stop: Callable[[], Awaitable[Any]]) -> Any:
    """The graceful-shutdown contract, whatever the machine's speed.

    A stream of model `held` (served by `upstream`) is in flight, held after its first
    chunk, when `begin_stop()` starts the shutdown. Then the health watch turns
    NOT_SERVING, a new call is refused, and only then does the upstream let go: the stream
    must run to its end event with every word. Returns what `begin_stop()` gave.
    """
    words = [f"w{i}" for i in range(50)]
    async with ScillmClient(target) as client, grpc.aio.insecure_channel(target) as side:
        watch = health_pb2_grpc.HealthStub(side).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        upstream.hold()
        stream = client.completion.stream({"model": "held", "messages": [
            {"role": "user", "content": " ".join(words)}]})
        first = await anext(stream)
        assert await asyncio.to_thread(upstream.arrived, 1)
        stopped = asyncio.ensure_future(begin_stop())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # an open watch is in-flight work too
        assert await refused_code(target) == grpc.StatusCode.UNAVAILABLE
        upstream.release()
        rest = [event async for event in stream]
    assert rest[-1].HasField("end")
    said = "".join(c.delta.content for e in [first, *rest] if e.HasField("chunk")
                   for c in e.chunk.choices)
    assert said.split() == words  # the whole stream, after the stop began
    return await stopped
