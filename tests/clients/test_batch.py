"""Client batch helpers and model preflight against a real mesh: `parallel_as_completed`,
a per-batch `Budget`, and `ModelCatalog` over gRPC ListModels and GET /v1/models.

The mesh's `gpt-4o` is an OpenAI-compatible upstream on loopback that holds any request
whose text contains "wait" until the test opens its gate, so "results as they finish" is
shown by order, never by timing."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import pytest
import yaml
from meshutil import RunningMesh, mesh_settings, start_mesh

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


class GatedUpstream:
    """OpenAI's `chat.completion` on 127.0.0.1:0, echoing the last user message; a request
    whose text contains "wait" is held until `open_gate()`. Usage is 3 + 3 tokens."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.gate = asyncio.Event()
        self.models: list[str] = []
        self.port = 0

    def start(self) -> GatedUpstream:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(10)
        self.port = server.sockets[0].getsockname()[1]
        return self

    def open_gate(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.set)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                request = json.loads(await reader.readexactly(length))
                self.models.append(request["model"])
                text = request["messages"][-1]["content"]
                if "wait" in text:
                    await self.gate.wait()
                body = json.dumps({
                    "id": "up", "object": "chat.completion", "created": 1,
                    "model": request["model"], "choices": [{
                        "index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3,
                              "total_tokens": 6}}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningMesh,
                                                                       GatedUpstream]]:
    root = tmp_path_factory.mktemp("batch")
    upstream = GatedUpstream().start()
    base = f"http://127.0.0.1:{upstream.port}/v1"
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
        upstream.open_gate()
        running.stop()
        upstream.stop()


def _req(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


# --------------------------------------------------------------------------- as completed


async def test_results_come_as_they_finish(gated: tuple[RunningMesh, GatedUpstream]) -> None:
    running, upstream = gated
    requests = [_req("gpt-4o", "wait for me"), _req("gpt-4o", "quick one"),
                _req("nosuch/model", "fails")]
    async with aclosing(parallel_as_completed(requests, concurrency=3,
                                              target=running.grpc_target)) as results:
        first, second = await anext(results), await anext(results)
        assert {first.index, second.index} == {1, 2}  # the held request is still going
        done = {r.index: r for r in (first, second)}
        assert done[1].content == "quick one" and done[1].ok
        assert isinstance(done[2].error, RPCError) and not done[2].ok
        upstream.open_gate()
        last = await anext(results)
        assert last.index == 0 and last.content == "wait for me"
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
        gated: tuple[RunningMesh, GatedUpstream]) -> None:
    running, upstream = gated
    sent_before = len(upstream.models)
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
    assert upstream.models[sent_before:] == ["gpt-4o", "gpt-4o"]  # "gpt5" was never sent
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
        gated: tuple[RunningMesh, GatedUpstream]) -> None:
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
