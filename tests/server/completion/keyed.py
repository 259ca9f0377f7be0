"""A keyed mesh, and its virtual keys as a test makes and reads them through its OpenAI
door."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from meshutil import RunningMesh, mesh_settings, start_mesh

__all__ = ["key_spend", "keyed_mesh", "new_key"]


@contextlib.contextmanager
def keyed_mesh(tmp_path: Path, master: str, upstream_url: str, model: str,
               prices: tuple[float, float], services: tuple[str, ...] = ("completion",),
               ) -> Iterator[RunningMesh]:
    """A mesh serving `services` (Completion) with master key `master`, and one model,
    `model`, from the OpenAI-compatible server at `upstream_url` (its `/v1`), at `prices`
    (per prompt token, per completion token); the response cache off."""
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": model, "litellm_params": {
            "model": f"openai/{model}", "api_base": f"{upstream_url}/v1", "api_key": "x",
            "input_cost_per_token": prices[0], "output_cost_per_token": prices[1]}}],
        "general_settings": {"master_key": master},
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, services=services))
    try:
        yield running
    finally:
        running.stop()


def new_key(mesh: RunningMesh, master: str, **body: object) -> str:
    """A new virtual key made with the master key (`body`: its limits)."""
    made = httpx.post(f"{mesh.http_url}/key/generate", json=body, timeout=30,
                      headers={"authorization": f"Bearer {master}"})
    assert made.status_code == 200, made.text
    return str(made.json()["key"])


async def key_spend(mesh: RunningMesh, master: str, key: str, *, at_least: float = 0.0,
                    within: float = 20.0, settle: float = 0.0) -> float:
    """The key's spend once it is at least `at_least` (the mesh charges some calls a moment
    after their caller left) or after `within` seconds; read again `settle` seconds later,
    for a second charge to show."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=30) as client:
        async def read() -> float:
            info = await client.get(f"{mesh.http_url}/key/info", params={"key": key},
                                    headers={"authorization": f"Bearer {master}"})
            return float(info.json()["info"]["spend"])

        while True:  # polled: the charge is the mesh's, no event of ours to wait on
            spend = await read()
            if spend >= at_least or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        if settle:
            await asyncio.sleep(settle)
            spend = await read()
    return spend
