"""Client batch helpers and model preflight against a real mesh: `parallel_as_completed`,
a per-batch `Budget`, and `ModelCatalog` over gRPC ListModels and GET /v1/models.

The mesh's `gpt-4o` is a scripted OpenAI-compatible upstream on loopback that holds any
request whose text contains "wait" until the test releases it, so "results as they
finish" is shown by order, never by timing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import pytest
import yaml
from meshutil import RunningMesh, mesh_settings, start_mesh
from scripted_upstream import ScriptedUpstream

from scillm.clients import (
    BatchResult,
    Budget,
    BudgetExceeded,
    InvalidRequestError,
    ModelCatalog,
    ModelListError,
    ModelNotAvailable,
    RPCError,
    ScillmClient,
    parallel_acompletions,
    parallel_as_completed,
    resolve_model,
)


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningMesh,
                                                                       ScriptedUpstream]]:
    root = tmp_path_factory.mktemp("batch")
    upstream = ScriptedUpstream([{"content": "fine"}], hold=lambda request: "wait" in str(
        request["messages"][-1]["content"])).start()
    base = upstream.url
    config = root / "models.yaml"
    config.write_text(yaml.safe_dump({"model_list": [
        {"model_name": "gpt-4o", "litellm_params": {"model": "openai/gpt-4o",
                                                    "api_base": base}},
        {"model_name": "openai/gpt-4o-mini", "litellm_params": {"model": "openai/gpt-4o-mini",
                                                                "api_base": base}},
        {"model_name": "azure/gpt-4o-mini", "litellm_params": {"model": "openai/gpt-4o-mini",
                                                               "api_base": base}},
        {"model_name": "echo/*", "litellm_params": {"model": "echo/*"}},
    ], "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(root, config_path=config))
    try:
        yield running, upstream
    finally:
        upstream.release()
        running.stop()
        upstream.stop()


def _req(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


# --------------------------------------------------------------------------- as completed


async def test_results_come_as_they_finish(gated: tuple[RunningMesh, ScriptedUpstream]) -> None:
    running, upstream = gated
    requests = [_req("gpt-4o", "wait for me"), _req("gpt-4o", "quick one"),
                _req("nosuch/model", "fails")]
    async with aclosing(parallel_as_completed(requests, concurrency=3,
                                              target=running.grpc_target)) as results:
        first, second = await anext(results), await anext(results)
        assert {first.index, second.index} == {1, 2}  # the held request is still going
        done = {r.index: r for r in (first, second)}
        assert done[1].content == "fine" and done[1].ok
        assert isinstance(done[2].error, RPCError) and not done[2].ok
        upstream.release()
        last = await anext(results)
        assert last.index == 0 and last.content == "fine"
        assert last.response is not None
        assert last.response["scillm"]["routing"]["provider"] == "openai"
        with pytest.raises(StopAsyncIteration):
            await anext(results)


async def test_a_token_budget_stops_sending(mesh: RunningMesh) -> None:
    budget = Budget(max_tokens=10)
    requests = [_req("echo/x", "a b c") for _ in range(5)]  # 3 + 3 tokens each
    results = [r async for r in parallel_as_completed(requests, concurrency=1, budget=budget,
                                                      target=mesh.grpc_target)]
    assert [r.index for r in results if r.ok] == [0, 1]
    skipped = [r for r in results if r.skipped]
    assert [r.index for r in skipped] == budget.skipped == [2, 3, 4]
    assert all(isinstance(r.error, BudgetExceeded) for r in skipped)
    assert budget.spent_tokens == 12 and budget.exhausted


async def test_a_cost_budget_needs_prices_and_stops_sending(mesh: RunningMesh) -> None:
    budget = Budget(max_cost_usd=0.02, prices={"echo/x": (0.001, 0.002)})  # $0.009 each
    requests = [_req("echo/x", "a b c") for _ in range(5)]
    out = await parallel_acompletions(requests, concurrency=1, budget=budget,
                                      target=mesh.grpc_target)
    assert [type(r).__name__ for r in out] == ["dict"] * 3 + ["BudgetExceeded"] * 2
    assert budget.skipped == [3, 4] and budget.spent_cost_usd == pytest.approx(0.027)
    with pytest.raises(InvalidRequestError, match="needs prices for echo/y"):
        await parallel_acompletions([_req("echo/y", "x")], target=mesh.grpc_target,
                                    budget=Budget(max_cost_usd=1.0, prices={}))


async def test_preflight_resolves_each_model_before_sending(
        gated: tuple[RunningMesh, ScriptedUpstream]) -> None:
    running, upstream = gated
    sent_before = len(upstream.requests)
    async with ScillmClient(running.grpc_target) as client:
        catalog = ModelCatalog(client)
        results: list[BatchResult] = [r async for r in parallel_as_completed(
            [_req("gpt4o", "loose name"), _req("GPT-4o", "upper case"), _req("gpt5", "no")],
            client=client, preflight=catalog)]
    by_index = {r.index: r for r in results}
    for i in (0, 1):
        resolved = by_index[i].resolved
        assert resolved is not None
        assert (resolved.model, resolved.how) == ("gpt-4o", "alias")
        assert by_index[i].ok
    assert str(by_index[0].resolved) == "'gpt4o' resolved to 'gpt-4o' (alias)"
    assert isinstance(by_index[2].error, ModelNotAvailable) and not by_index[2].ok
    assert "did you mean" in str(by_index[2].error)
    sent = [r["model"] for r in upstream.requests[sent_before:]]
    assert sent == ["gpt-4o", "gpt-4o"]  # "gpt5" was never sent
    assert catalog.fetches == 1  # one list for the whole batch


# --------------------------------------------------------------------------- preflight


@pytest.mark.parametrize(("requested", "model", "how"), [
    ("gpt-4o", "gpt-4o", "exact"),
    ("gpt4o", "gpt-4o", "alias"),
    ("GPT_4O", "gpt-4o", "alias"),
    ("openai-gpt-4o-mini", "openai/gpt-4o-mini", "alias"),
    ("echo/anything", "echo/anything", "wildcard"),
])
def test_resolve_model(requested: str, model: str, how: str) -> None:
    names = ["gpt-4o", "openai/gpt-4o-mini", "azure/gpt-4o-mini", "echo/*"]
    found = resolve_model(requested, names)
    assert (found.requested, found.model, found.how) == (requested, model, how)


def test_resolve_model_refuses_ambiguity_and_unknown_names() -> None:
    names = ["gpt-4o", "openai/gpt-4o-mini", "azure/gpt-4o-mini"]
    with pytest.raises(ModelNotAvailable, match="ambiguous") as caught:
        resolve_model("gpt4omini", names)
    assert caught.value.candidates == ["openai/gpt-4o-mini", "azure/gpt-4o-mini"]
    with pytest.raises(ModelNotAvailable) as unknown:
        resolve_model("gpt-4", names)
    assert unknown.value.suggestions[0] == "gpt-4o"


async def test_the_catalog_is_cached_over_grpc_and_http(
        gated: tuple[RunningMesh, ScriptedUpstream]) -> None:
    running, _ = gated
    now = [0.0]
    async with ScillmClient(running.grpc_target) as client:
        catalog = ModelCatalog(client, ttl_s=60, clock=lambda: now[0])
        assert (await catalog.resolve("gpt4o")).model == "gpt-4o"
        assert (await catalog.resolve("gpt-4o")).how == "exact"
        assert catalog.fetches == 1
        now[0] = 61.0
        await catalog.resolve("gpt-4o")
        assert catalog.fetches == 2
        with pytest.raises(ModelNotAvailable):  # an unknown name refetches the list once
            await catalog.resolve("gpt5")
        assert catalog.fetches == 3
    http = ModelCatalog(base_url=f"{running.http_url}/v1")
    assert (await http.resolve("gpt4o")).model == "gpt-4o"
    assert "echo/*" in await http.names()
    with pytest.raises(ModelListError):
        await ModelCatalog(base_url="http://127.0.0.1:9/v1").names()
    with pytest.raises(ValueError):
        ModelCatalog()
