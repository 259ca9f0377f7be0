"""`POST /v1/embeddings` end to end: the real openai SDK (its default base64 and "float")
against the OpenAI door of a real mesh, the mesh's gRPC client, and a loopback upstream
speaking OpenAI's embeddings wire format (a 429 with Retry-After, a 500 and a fallback, a
reply of the wrong shape), careless and hostile bodies, and a virtual key paying."""

from __future__ import annotations

import base64
import json
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from completion_upstream import (
    LARGE_DIMENSIONS,
    Upstream,
    embedding_vector,
    embeddings,
    embeddings_reply,
    large_embeddings,
    large_vector_base64,
    status,
    zero_embeddings,
)
from keyed import key_spend, keyed_mesh, new_key
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient, SyncScillmClient
from scillm.completion.v1 import completion_pb2 as pb
from scillm.server.completion._echo import DIMENSIONS, MAX_VALUES, echo_vector
from scillm.server.completion._embeddings import MAX_VALUES as MAX_REPLY_VALUES
from scillm.server.manifests import open_run_store


def _sdk(url: str, key: str = "none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def _echo(text: str, size: int = DIMENSIONS) -> list[float]:
    return echo_vector(text, size).tolist()


async def test_the_default_mesh_serves_echo_embeddings_to_the_openai_sdk(
        mesh: RunningMesh) -> None:
    """The embedded defaults (no config, no keys) embed with `echo/...`: the SDK's default
    (it asks for base64 and decodes it) and "float" give the same, exact vectors."""
    sdk = _sdk(mesh.http_url)
    default = await sdk.embeddings.create(model="echo/embed", input=["paper one", "two"])
    floats = await sdk.embeddings.create(model="echo/embed", input=["paper one", "two"],
                                         encoding_format="float")
    one = await sdk.embeddings.create(model="echo/embed", input="paper one", dimensions=5)
    await sdk.close()
    for reply in (default, floats):
        assert [d.embedding for d in reply.data] == [_echo("paper one"), _echo("two")]
        assert [d.index for d in reply.data] == [0, 1]
        assert reply.model == "echo/embed" and reply.object == "list"
        assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (3, 3)
    assert one.data[0].embedding == _echo("paper one", 5)


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings"])
def test_the_wire_shape_request_id_and_run(mesh: RunningMesh, path: str) -> None:
    reply = httpx.post(f"{mesh.http_url}{path}", timeout=30,
                       headers={"x-request-id": "embed-req-1"},
                       json={"model": "echo/e", "input": [[1, 2, 3]],
                             "encoding_format": "base64"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-request-id"] == "embed-req-1"
    body = reply.json()
    assert set(body) == {"object", "data", "model", "usage", "scillm"}
    assert body["object"] == "list" and body["model"] == "echo/e"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    [item] = body["data"]
    assert set(item) == {"object", "index", "embedding"} and item["object"] == "embedding"
    assert isinstance(item["embedding"], str)  # base64 of little-endian float32s
    assert body["scillm"]["routing"]["provider"] == "echo" and body["scillm"]["run_id"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "echo/e", "input": ""}, "input[0]"),
    ({"model": "echo/e", "input": []}, "input"),
    ({"model": "echo/e", "input": ["a", ""]}, "input[1]"),
    ({"model": "echo/e", "input": [[]]}, "input[0]"),
    ({"model": "echo/e", "input": ["a"] * 2049}, "input"),
    ({"model": "echo/e", "input": ["a", 3]}, "input[1]"),
    ({"model": "echo/e", "input": [1.5]}, "input[0]"),
    ({"model": "echo/e", "input": [None]}, "input[0]"),
    ({"model": "echo/e", "input": [True]}, "input[0]"),
    ({"model": "echo/e", "input": [[1, -1]]}, "input[0][1]"),
    ({"model": "echo/e", "input": [[2**64]]}, "input[0][0]"),
    ({"model": "echo/e", "input": [{"text": "a"}]}, "input[0]"),
    ({"model": "echo/e", "input": 5}, "input"),
    ({"model": "echo/e", "input": "\ud800"}, None),  # JSON no UTF-8 can hold
    ({"model": "echo/e"}, "input"),
    ({"input": "a"}, "model"),
    ({"model": "echo/e", "input": "a", "dimensions": 0}, "dimensions"),
    ({"model": "echo/e", "input": "a", "dimensions": -4}, "dimensions"),
    ({"model": "echo/e", "input": "a", "dimensions": "8"}, "dimensions"),
    ({"model": "echo/e", "input": "a", "dimensions": 2.5}, "dimensions"),
    ({"model": "echo/e", "input": "a", "encoding_format": "hex"}, "encoding_format"),
    # Unhashable: a 500 with a traceback (the SDK retried it twice).
    ({"model": "echo/e", "input": "a", "encoding_format": []}, "encoding_format"),
    ({"model": "echo/e", "input": "a", "encoding_format": {}}, "encoding_format"),
    ({"model": "echo/e", "input": "a", "scillm": {"cache": {"bypass": True}}}, "scillm"),
    ({"model": "echo/e", "input": "a", "caching": True}, "caching"),
    # Past echo's MAX_VALUES numbers (inputs x dimensions): 2048 x 3,072 held the loop 6 s.
    ({"model": "echo/e", "input": ["a"] * 2048, "dimensions": 3072,
      "encoding_format": "base64"}, "dimensions"),
    ({"model": "echo/e", "input": ["a"] * 1025, "dimensions": 1024,
      "encoding_format": "base64"}, "dimensions"),
])
def test_careless_and_hostile_bodies_are_openai_400s(mesh: RunningMesh, body: dict[str, Any],
                                                     param: str | None) -> None:
    reply = httpx.post(f"{mesh.http_url}/v1/embeddings", timeout=30,
                       content=json.dumps(body).encode(),
                       headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert "Traceback" not in reply.text and reply.headers["x-request-id"]


def test_echo_serves_up_to_max_values_numbers_exactly(mesh: RunningMesh) -> None:
    """At the cap (1024 inputs of 1,024 numbers) the echo answers, every vector exact in
    both encodings; one input more is the 400 naming `dimensions` above."""
    texts = [f"paper {i}" for i in range(MAX_VALUES // 1024)]
    for fmt in ("base64", "float"):
        reply = httpx.post(f"{mesh.http_url}/v1/embeddings", timeout=60, json={
            "model": "echo/e", "input": texts, "dimensions": 1024, "encoding_format": fmt})
        assert reply.status_code == 200, reply.text[:300]
        data = reply.json()["data"]
        assert [d["index"] for d in data] == list(range(len(texts)))
        want = [echo_vector(t, 1024) for t in texts]
        if fmt == "base64":
            assert [d["embedding"] for d in data] == [
                base64.b64encode(v.tobytes()).decode() for v in want]
        else:
            assert [d["embedding"] for d in data] == [v.tolist() for v in want]


def test_an_unknown_model_and_a_body_that_is_no_object(mesh: RunningMesh) -> None:
    unknown = httpx.post(f"{mesh.http_url}/v1/embeddings", timeout=30,
                         json={"model": "no-such-embedder", "input": "a"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    for raw in (b"[1, 2]", b"{not json"):
        reply = httpx.post(f"{mesh.http_url}/v1/embeddings", content=raw, timeout=30)
        assert reply.status_code == 400 and reply.json()["error"]["type"] == \
            "invalid_request_error"


async def test_the_grpc_client_embeds_and_refuses_what_the_contract_does(
        mesh: RunningMesh) -> None:
    async with ScillmClient(mesh.grpc_target) as client:
        reply = await client.completion.embed({"model": "echo/g", "input": ["a b", "c"]})
        assert [list(d.embedding) for d in reply.data] == [_echo("a b"), _echo("c")]
        assert reply.usage.prompt_tokens == 3 and reply.manifest.run_id
        assert reply.routing.provider == "echo" and reply.routing.attempts == 1
        for bad in (pb.EmbeddingRequest(model="echo/g", input=[pb.EmbeddingInput(text="a")],
                                        encoding_format=9),  # type: ignore[arg-type]
                    pb.EmbeddingRequest(model="echo/g", input=[
                        pb.EmbeddingInput(text="a"), pb.EmbeddingInput(
                            tokens=pb.TokenIds(ids=[1]))]),
                    pb.EmbeddingRequest(input=[pb.EmbeddingInput(text="a")])):
            with pytest.raises(RPCError) as caught:
                await client.completion.embed(bad)
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with SyncScillmClient(mesh.grpc_target) as sync:
        assert list(sync.embed({"model": "echo/g", "input": "c"}).data[0].embedding) == \
            _echo("c")


@pytest.fixture
def door(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    """A mesh whose models are at the loopback upstream: `flaky` (429 with Retry-After,
    then well), `down` (500, falling back to `backup`), `garbage` (a reply that is no
    embeddings list), and `claude` (Anthropic: no embeddings); a 16 KiB body limit."""
    upstream.plan("flaky", status(429, {"retry-after": "1"}), embeddings)
    upstream.plan("down", status(500))
    upstream.plan("backup", embeddings)
    upstream.plan("garbage", embeddings_reply({"object": "list", "data": "oops"}))
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": f"{upstream.url}/v1", "api_key": "x"}}
            for name in ("flaky", "down", "backup", "garbage")] + [
            {"model_name": "claude", "litellm_params": {
                "model": "anthropic/claude-x", "api_base": upstream.url, "api_key": "x"}}],
        "router_settings": {"num_retries": 1, "fallbacks": [{"down": ["backup"]}]}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config, store_completions=True,
                                       max_request_bytes=16 * 1024))
    yield running
    running.stop()


async def test_retry_after_fallback_and_a_bad_upstream_through_the_door(
        door: RunningMesh, upstream: Upstream) -> None:
    sdk = _sdk(door.http_url)
    raw = await sdk.embeddings.with_raw_response.create(model="flaky", input=["x", "yz"])
    flaky = raw.parse()
    routing = json.loads(raw.http_response.text)["scillm"]["routing"]
    assert [d.embedding for d in flaky.data] == [embedding_vector("x"), embedding_vector("yz")]
    assert upstream.calls("flaky") == 2
    assert routing["attempts"] == 2 and routing["last_retry_after_ms"] == 1000.0
    assert routing["total_sleep_ms"] >= 1000.0  # the Retry-After was honoured

    fell = await sdk.embeddings.with_raw_response.create(model="down", input="x",
                                                         encoding_format="float")
    assert fell.parse().data[0].embedding == embedding_vector("x")
    routing = json.loads(fell.http_response.text)["scillm"]["routing"]
    assert (routing["fallback_used"], routing["fallback_model"]) == (True, "backup")

    with pytest.raises(openai.APIStatusError) as bad:
        await sdk.embeddings.create(model="garbage", input="x")
    assert bad.value.status_code == 502
    assert bad.value.body["type"] == "upstream_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="serves no embeddings"):
        await sdk.embeddings.create(model="claude", input="x")
    # And the mesh serves on, keeping the run as it keeps a completion's.
    again = await sdk.embeddings.with_raw_response.create(
        model="backup", input="still", extra_headers={"x-request-id": "embed-req-1"})
    assert again.parse().data[0].embedding == embedding_vector("still")
    assert again.headers["x-request-id"] == "embed-req-1"
    run_id = json.loads(again.http_response.text)["scillm"]["run_id"]
    stored = open_run_store(door.mesh.settings.store_path).get(run_id)
    assert stored is not None and stored.manifest.request_id == "embed-req-1"
    assert (stored.manifest.model, stored.manifest.provider) == ("backup", "openai")
    assert isinstance(stored.request, pb.EmbeddingRequest)
    assert isinstance(stored.result, pb.EmbeddingResponse) and stored.result.data
    await sdk.close()


def test_the_doors_size_limit_applies(door: RunningMesh) -> None:
    reply = httpx.post(f"{door.http_url}/v1/embeddings", timeout=30,
                       json={"model": "backup", "input": ["x" * 1000] * 20})
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"


MASTER = "sk-master-embeddings"


async def test_a_key_pays_for_its_embeddings(tmp_path: Path, upstream: Upstream) -> None:
    """Charged the upstream's prompt tokens at the model's input price; a key limited to
    other models may not embed with this one; a key past its budget is refused."""
    upstream.plan("vec", embeddings)
    with keyed_mesh(tmp_path, MASTER, upstream.url, "vec", prices=(0.5, 1000.0)) as mesh:
        key = new_key(mesh, MASTER, max_budget=100.0)
        sdk = _sdk(mesh.http_url, key)
        reply = await sdk.embeddings.create(model="vec", input=["a", "b", "c"])
        assert reply.usage.prompt_tokens == 12
        assert await key_spend(mesh, MASTER, key, at_least=6.0) == 6.0  # 12 tokens at 0.5
        await sdk.close()
        other = _sdk(mesh.http_url, new_key(mesh, MASTER, models=["elsewhere"]))
        with pytest.raises(openai.PermissionDeniedError):
            await other.embeddings.create(model="vec", input="a")
        await other.close()
        poor = new_key(mesh, MASTER, max_budget=1.0)
        spender = _sdk(mesh.http_url, poor)
        await spender.embeddings.create(model="vec", input="a")  # 4 tokens: 2.0 spent
        assert await key_spend(mesh, MASTER, poor, at_least=2.0) == 2.0
        with pytest.raises(openai.PermissionDeniedError, match="budget"):
            await spender.embeddings.create(model="vec", input="a")
        await spender.close()
        assert upstream.calls("vec") == 2  # the refused calls reached no upstream


async def test_a_key_limited_to_a_model_cannot_fall_back_through_extra_body(
        tmp_path: Path, upstream: Upstream) -> None:
    """`extra_body.scillm.fallbacks` reached the engine unchecked (the key check reads
    `routing`): a key limited to `vec` was answered by `other`. As for chat, `scillm` in
    `extra_body` is refused, naming it; in `routing` it is checked against the key."""
    upstream.plan("vec", embeddings)
    with keyed_mesh(tmp_path, MASTER, upstream.url, "vec", prices=(0.5, 1000.0)) as mesh:
        key = new_key(mesh, MASTER, models=["vec"])
        request = pb.EmbeddingRequest(model="vec", input=[pb.EmbeddingInput(text="a")])
        request.extra_body.update({"scillm": {"fallbacks": ["other"]}})
        async with ScillmClient(mesh.grpc_target, api_key=key) as client:
            with pytest.raises(RPCError) as info:
                await client.completion.embed(request)
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.param == "extra_body.scillm", info.value
            routed = pb.EmbeddingRequest(model="vec", input=[pb.EmbeddingInput(text="a")])
            routed.routing.fallbacks.append("other")
            with pytest.raises(RPCError) as info:
                await client.completion.embed(routed)
            assert info.value.code == grpc.StatusCode.PERMISSION_DENIED, info.value
    assert upstream.calls("vec") == 0


#: Four vectors of 64 MiB of float32s in all, and 4 bytes more: past a gRPC reply's 64 MiB.
_PAST_GRPC = 4 * (16 * 1024 * 1024 // 4 + 1)


@pytest.fixture
def big(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    """A mesh (the default body limit, no retries) whose `large` is at an upstream writing
    big batches as OpenAI does, and `zeros` at one answering more numbers than one gRPC
    reply of the mesh can carry (as floats: it has no base64)."""
    upstream.plan("large", large_embeddings)
    upstream.plan("zeros", zero_embeddings(_PAST_GRPC // 4))
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": f"{upstream.url}/v1", "api_key": "x"}}
            for name in ("large", "zeros")],
        "router_settings": {"num_retries": 0}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config))
    yield running
    running.stop()


async def test_openais_largest_batch_is_served_whole(big: RunningMesh,
                                                     upstream: Upstream) -> None:
    """2048 inputs of 3,072 numbers (text-embedding-3-large's batch, which OpenAI serves):
    as floats the upstream's reply is ~85 MB, past the transport's 64 MiB, and was a 502
    ReplyTooLarge. The mesh asks for base64 (~33 MB) and answers every vector exactly;
    `dimensions` reaches the upstream as asked."""
    texts = [f"p{i}" for i in range(2048)]
    async with httpx.AsyncClient(timeout=120) as client:
        reply = await client.post(f"{big.http_url}/v1/embeddings", json={
            "model": "large", "input": texts, "dimensions": LARGE_DIMENSIONS,
            "encoding_format": "base64"})
        assert reply.status_code == 200, reply.text[:300]
        asked = upstream.requests[-1][2]
        assert (asked["encoding_format"], asked["dimensions"]) == ("base64",
                                                                   LARGE_DIMENSIONS)
        data = reply.json()["data"]
        del reply
        assert [d["index"] for d in data] == list(range(2048))
        assert all(d["embedding"] == large_vector_base64(i) for i, d in enumerate(data))
        del data
        # Floats at the door too (smaller vectors: 2048 x 3,072 floats are 134 MB of JSON).
        reply = await client.post(f"{big.http_url}/v1/embeddings", json={
            "model": "large", "input": texts, "dimensions": 16})
        assert reply.status_code == 200, reply.text[:300]
        floats = [d["embedding"] for d in reply.json()["data"]]
    assert floats == [_unpacked(large_vector_base64(i, 16)) for i in range(2048)]


def _unpacked(b64: str) -> list[float]:
    packed = array("f")
    packed.frombytes(base64.b64decode(b64))
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()


async def test_a_reply_past_what_grpc_carries_is_the_upstreams_502_naming_its_size(
        big: RunningMesh, upstream: Upstream, tmp_path: Path) -> None:
    """More numbers than one gRPC reply of the mesh can carry (64 MiB) were read, then
    the mesh failed to send them: RESOURCE_EXHAUSTED "Sent message larger than max",
    which a door answers 429 as if the caller were over a quota. It is an upstream's
    failure (UNAVAILABLE, reason UpstreamError; 502 at a door) naming the size."""
    total = _PAST_GRPC
    assert total > MAX_REPLY_VALUES
    async with ScillmClient(big.grpc_target) as client:
        with pytest.raises(RPCError) as caught:
            await client.completion.embed({"model": "zeros", "input": ["a", "b", "c", "d"]})
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE, caught.value
    assert caught.value.reason == "UpstreamError"
    assert f"{total:,} numbers" in caught.value.message
    # A door in its own process (the split layout) reaches the mesh over gRPC too.
    (tmp_path / "door").mkdir()
    door = start_mesh(mesh_settings(tmp_path / "door", services=(),
                                    completion_target=big.grpc_target))
    try:
        async with httpx.AsyncClient(timeout=120) as http:
            reply = await http.post(f"{door.http_url}/v1/embeddings", json={
                "model": "zeros", "input": ["a", "b", "c", "d"], "encoding_format": "base64"})
    finally:
        door.stop()
    assert reply.status_code == 502, reply.text[:300]
    error = reply.json()["error"]
    assert error["type"] == "upstream_error" and f"{total:,} numbers" in error["message"]
    assert upstream.calls("zeros") == 2
