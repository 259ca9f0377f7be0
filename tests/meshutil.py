"""A real mesh on 127.0.0.1:0, run in its own thread and event loop, for tests."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, replace
from pathlib import Path

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


