"""The server interceptor's bookkeeping on a real grpc.aio server (127.0.0.1:0): the RPC
metrics by method, model and status code, the in-flight gauge, and which field of each
service's request names the model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvloop
from grpc_health.v1 import health_pb2
from meshutil import mesh_settings, start_mesh

from scillm.agent.v1 import agent_pb2
from scillm.codeworld.v1 import codeworld_pb2
from scillm.completion.v1 import completion_pb2 as pb
from scillm.prove.v1 import prove_pb2
from scillm.server.errors import StatusError
from scillm.server.interceptors import CallContext
from scillm.server.metrics import MAX_MODEL_LABELS, OTHER_MODEL, Metrics
from scillm.server.request_facts import model_of
from scillm.server.settings import Settings

SERVICE = "scillm.completion.v1.CompletionService"
METHOD = "CompletionService/Completion"


def _sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def _serving(completion: Any, metrics: Metrics) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server behind CallContext whose Completion is `completion`."""
    server = grpc.aio.server(interceptors=[CallContext(Settings(), {}, metrics)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Completion": grpc.unary_unary_rpc_method_handler(
            completion, request_deserializer=pb.CompletionRequest.FromString,
            response_serializer=pb.CompletionResponse.SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _completion_call(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(f"/{SERVICE}/Completion",
                               request_serializer=pb.CompletionRequest.SerializeToString,
                               response_deserializer=pb.CompletionResponse.FromString)


def test_every_rpc_is_counted_by_model_and_code_and_leaves_the_in_flight_gauge() -> None:
    metrics = Metrics()
    seen_in_flight: list[float | None] = []

    async def completion(request: pb.CompletionRequest, context: Any) -> pb.CompletionResponse:
        seen_in_flight.append(_sample(metrics, "scillm_rpc_in_flight", {"method": METHOD}))
        if request.model == "bad":
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "no such thing", param="model")
        await asyncio.sleep(0)  # a handler that yields to the loop, as real ones do
        return pb.CompletionResponse(model=request.model)

    async def go() -> list[grpc.StatusCode]:
        server, port = await _serving(completion, metrics)
        codes = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = _completion_call(channel)
                for model in ("m1", "m1", "m1", "bad"):
                    try:
                        await call(pb.CompletionRequest(model=model), timeout=30)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as err:
                        codes.append(err.code())
        finally:
            await server.stop(None)
        return codes

    codes = uvloop.run(go())
    assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.INVALID_ARGUMENT]
    requests = "scillm_rpc_requests_total"
    assert _sample(metrics, requests, {"method": METHOD, "model": "m1", "code": "OK"}) == 3
    assert _sample(metrics, requests, {"method": METHOD, "model": "bad",
                                       "code": "INVALID_ARGUMENT"}) == 1
    assert _sample(metrics, "scillm_rpc_latency_seconds_count",
                   {"method": METHOD, "model": "m1"}) == 3
    assert seen_in_flight == [1, 1, 1, 1]  # each call counted while it ran, one at a time
    assert _sample(metrics, "scillm_rpc_in_flight", {"method": METHOD}) == 0


@pytest.mark.parametrize(("request_", "model"), [
    (pb.CompletionRequest(model="a"), "a"),
    (pb.CompletionStreamRequest(request=pb.CompletionRequest(model="b")), "b"),
    (prove_pb2.ProveRequest(formalize=prove_pb2.FormalizeOptions(model="c")), "c"),
    (codeworld_pb2.CodeWorldRunRequest(mcts=codeworld_pb2.MctsSettings(model="d")), "d"),
    (agent_pb2.AgentStepRequest(config=agent_pb2.AgentConfig(model="e")), "e"),
    (agent_pb2.AgentRunRequest(config=agent_pb2.AgentConfig(model="f")), "f"),
    (pb.CompletionRequest(), ""),
    (prove_pb2.ProveRequest(), ""),
    (health_pb2.HealthCheckRequest(service="x"), ""),
    (object(), ""),
], ids=lambda v: type(v).__name__ if not isinstance(v, str) else repr(v))
def test_model_of_reads_where_each_service_keeps_the_model(request_: Any, model: str) -> None:
    assert model_of(request_) == model
    assert model_of(request_) == model  # the second time from what the first worked out


def test_a_caller_choosing_model_names_cannot_grow_the_metrics_without_end(
        tmp_path: Path) -> None:
    """Through the OpenAI door of a mesh of its own (the cap is per process: on the shared
    mesh it would turn later tests' labels into "other"), with no key: made-up names are
    labelled up to MAX_MODEL_LABELS, later ones as "other", and a configured name always."""
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"model_list": [
        {"model_name": "fixed", "litellm_params": {"model": "echo/fixed"}},
        {"model_name": "echo/*", "litellm_params": {"model": "echo/*"}}]}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, services=("completion",)))
    try:
        with httpx.Client(base_url=running.http_url, timeout=30) as client:
            for i in range(MAX_MODEL_LABELS + 40):
                reply = client.post("/v1/chat/completions", json={
                    "model": f"made-up-{i}", "messages": [{"role": "user", "content": "x"}]})
                assert reply.status_code == 404
            for model in ("fixed", "echo/late"):
                assert client.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": "x"}]}
                ).status_code == 200
            exposition = client.get("/metrics").text
    finally:
        running.stop()
    models = {line.split('model="', 1)[1].split('"', 1)[0]
              for line in exposition.splitlines()
              if line.startswith("scillm_rpc_requests_total{")}
    assert {m for m in models if m.startswith("made-up-")} == {
        f"made-up-{i}" for i in range(MAX_MODEL_LABELS)}
    assert models - {f"made-up-{i}" for i in range(MAX_MODEL_LABELS)} == {"fixed", OTHER_MODEL}


def test_an_unexpected_failure_names_no_internals() -> None:
    """A handler's unexpected exception was answered INTERNAL with the exception's class
    as the ErrorInfo reason (the door's `code`: "TypeError", "_WrappedReferencingError"),
    naming the mesh's insides to any caller. It is "INTERNAL" now, and the door's 500
    carries no code, as its own unexpected failures do; the log keeps the traceback."""
    from scillm.bridges.openai.errors import from_exception
    from scillm.clients import RPCError

    async def completion(request: pb.CompletionRequest, context: Any) -> pb.CompletionResponse:
        raise KeyError("the secret detail")

    async def go() -> RPCError:
        server, port = await _serving(completion, Metrics())
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = _completion_call(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(pb.CompletionRequest(model="m"), timeout=10,
                               metadata=(("x-request-id", "rid-1"),))
                return RPCError.from_aio(info.value)
        finally:
            await server.stop(None)

    error = uvloop.run(go())
    assert error.code == grpc.StatusCode.INTERNAL and error.request_id == "rid-1"
    assert error.reason == "INTERNAL" and "secret" not in error.message
    status, body, _ = from_exception(error)
    assert status == 500 and body["error"]["code"] is None
    assert body["error"]["message"] == "internal error (request id rid-1)"


def test_a_model_name_of_megabytes_is_refused_and_labelled_other(tmp_path: Path) -> None:
    """A wildcard (`echo/*`) serves any name: one of megabytes was served, memoised by the
    router (4,096 names), and kept as a metrics label and in the metrics' own caches, so
    a caller could pin gigabytes. A model name is at most 256 characters (as a key's
    model names are); longer is a 400 naming `model`, labelled `other`."""
    running = start_mesh(mesh_settings(tmp_path, services=("completion",)))
    try:
        long_name = "echo/" + "x" * 20_000  # (a URL holds 64 KiB: the door takes 8 MiB)
        with httpx.Client(timeout=30) as http:
            chat = http.post(f"{running.http_url}/v1/chat/completions", json={
                "model": long_name, "messages": [{"role": "user", "content": "hi"}]})
            one = http.get(f"{running.http_url}/v1/models/{long_name}")
            assert chat.status_code == 400 and chat.json()["error"]["param"] == "model"
            assert "256" in chat.json()["error"]["message"]
            assert one.status_code == 400, one.text
            metrics = http.get(f"{running.http_url}/metrics").text
        assert long_name not in metrics and "x" * 300 not in metrics
        assert 'model="other"' in metrics
    finally:
        running.stop()
