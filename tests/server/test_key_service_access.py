"""A key limited to some models uses Prove and CodeWorld only when its models name them.

A review's key with `"models": ["cheap"]` ran code in CodeWorld's sandbox and obligations
through Prove (a plain run names no model, so no model was checked), while its
`/v1/models` listed `cheap` alone. A key's models now name the services too, as the door
names them: `certainly` (or any `certainly/...`) for Prove, `codeworld` (or any
`codeworld/...`) for CodeWorld. A key with no models list may use everything, as before.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.codeworld.v1 import codeworld_pb2, codeworld_pb2_grpc
from scillm.prove.v1 import prove_pb2, prove_pb2_grpc

MASTER = "sk-master-service-access"
SUM = "def solve(task, context):\n    return sum(context['input'])\n"
CODEWORLD = {"model": "codeworld", "messages": [{"role": "user", "content": "sum"}],
             "items": [{"task_id": "a", "context": {"input": [1, 2], "expected": 3}}],
             "provider": {"args": {"strategies": [{"name": "sum", "source": SUM}]}}}
PROVE = {"model": "certainly/smt", "messages": [{"role": "user", "content": "check"}],
         "items": [{"item_id": "inc", "preamble": "(declare-const x Int)",
                    "statement": "(> (+ x 1) x)"}]}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    tmp: Path = tmp_path_factory.mktemp("service-access")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "cheap", "litellm_params": {"model": "echo/cheap"}}],
        "general_settings": {"master_key": MASTER}, "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp, config_path=config,
                                       services=("completion", "prove", "codeworld")))
    try:
        yield running
    finally:
        running.stop()


def _key(mesh: RunningMesh, **body: Any) -> str:
    made = httpx.post(f"{mesh.http_url}/key/generate", json=body, timeout=30,
                      headers={"authorization": f"Bearer {MASTER}"})
    assert made.status_code == 200, made.text
    return str(made.json()["key"])


def _post(mesh: RunningMesh, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{mesh.http_url}/v1/chat/completions", json=body, timeout=120,
                      headers={"authorization": f"Bearer {key}"})


def test_a_key_limited_to_other_models_may_not_run_prove_or_codeworld(
        mesh: RunningMesh) -> None:
    key = _key(mesh, models=["cheap"])
    for body, service in ((CODEWORLD, "codeworld"), (PROVE, "certainly")):
        refused = _post(mesh, key, body)
        assert refused.status_code == 403, refused.text
        assert service in refused.json()["error"]["message"], refused.text
    assert _post(mesh, key, {"model": "cheap", "messages": [
        {"role": "user", "content": "hi"}]}).status_code == 200

    async def grpc_calls() -> list[grpc.StatusCode]:
        metadata = (("authorization", f"Bearer {key}"),)
        codes = []
        async with grpc.aio.insecure_channel(mesh.grpc_target) as channel:
            for call in (
                    _first(prove_pb2_grpc.ProveServiceStub(channel).Prove(
                        prove_pb2.ProveRequest(items=[prove_pb2.Obligation(
                            item_id="inc", backend=prove_pb2.BACKEND_SMT,
                            preamble="(declare-const x Int)", statement="(> (+ x 1) x)")]),
                        metadata=metadata, timeout=60)),
                    _first(codeworld_pb2_grpc.CodeWorldServiceStub(channel).CodeWorldRun(
                        codeworld_pb2.CodeWorldRunRequest(), metadata=metadata,
                        timeout=60))):
                try:
                    await call
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code())
        return codes

    assert asyncio.run(grpc_calls()) == [grpc.StatusCode.PERMISSION_DENIED] * 2


async def _first(stream: Any) -> None:
    async for _ in stream:
        return


@pytest.mark.parametrize("models", [["cheap", "codeworld", "certainly"],
                                    ["codeworld/mcts", "certainly/smt"],
                                    # the door's other name for Prove: a key naming it was
                                    # refused Prove ("may not use certainly")
                                    ["codeworld", "lean4/mathlib"]])
def test_a_key_whose_models_name_the_services_may_run_them(mesh: RunningMesh,
                                                           models: list[str]) -> None:
    key = _key(mesh, models=models)
    for body in (CODEWORLD, PROVE):
        reply = _post(mesh, key, body)
        assert reply.status_code == 200, reply.text


def test_a_key_with_no_models_list_may_run_everything(mesh: RunningMesh) -> None:
    key = _key(mesh)
    for body in (CODEWORLD, PROVE):
        assert _post(mesh, key, body).status_code == 200
