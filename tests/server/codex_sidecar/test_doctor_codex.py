"""`scillm doctor` on codex-agent deployments: it asks the sidecar's /healthz."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import yaml
from codex_sidecar_util import SidecarProcess

from scillm.server.commands.doctor import Status, collect

NO_OTEL = {"PATH": "/usr/bin:/bin"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_doctor_checks_codex_sidecars(tmp_path: Path) -> None:
    sidecar = await asyncio.to_thread(
        lambda: SidecarProcess(["--mode", "echo"], tmp_path / "echo.out").wait_ready())
    try:
        config = tmp_path / "models.yaml"
        config.write_text(yaml.safe_dump({"model_list": [
            {"model_name": "up", "litellm_params": {"model": "codex-agent/gpt-5",
                                                    "api_base": f"{sidecar.url}/v1"}},
            {"model_name": "down", "litellm_params": {
                "model": "codex-agent/gpt-5", "api_base": f"http://127.0.0.1:{_closed_port()}"}},
            {"model_name": "nowhere", "litellm_params": {"model": "codex-agent/gpt-5"}},
        ]}))
        checks = {c.part: c for c in await collect(config, environ=NO_OTEL)}
    finally:
        await asyncio.to_thread(sidecar.stop)
    assert checks["provider:up"].status is Status.OK
    assert "sidecar in echo mode" in checks["provider:up"].detail
    assert checks["provider:down"].status is Status.FAILED
    assert "GET /healthz failed" in checks["provider:down"].detail
    assert checks["provider:nowhere"].status is Status.FAILED
    assert "CODEX_AGENT_API_BASE" in (checks["provider:nowhere"].hint or "")
