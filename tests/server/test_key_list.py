"""Listing virtual keys: LiteLLM's `GET /key/list` and gRPC `ListKeys`, on a real mesh.
Pages of a bounded size, oldest first, key ids and descriptions and never a secret; the
master key only; a bad parameter is a 400 naming it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import grpc
import httpx
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient
from scillm.keys.v1 import keys_pb2

MASTER = "sk-master-list"
ADMIN = {"authorization": f"Bearer {MASTER}"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    tmp = tmp_path_factory.mktemp("key-list")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "echo/*", "litellm_params": {"model": "echo/*"}}],
        "general_settings": {"master_key": MASTER}, "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp, config_path=config, services=("completion",)))
    yield running
    running.stop()


def _generate(mesh: RunningMesh, **body: object) -> dict[str, object]:
    resp = httpx.post(f"{mesh.http_url}/key/generate", json=body, timeout=30, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _list(mesh: RunningMesh, headers: dict[str, str] | None = None,
          **params: object) -> httpx.Response:
    return httpx.get(f"{mesh.http_url}/key/list", params=params,  # type: ignore[arg-type]
                     timeout=30, headers=ADMIN if headers is None else headers)


def _walk(mesh: RunningMesh, size: int, **params: object) -> tuple[list[object], int]:
    """Every page in turn: the keys in order, and the total each page said."""
    seen: list[object] = []
    totals = set()
    page = 1
    while True:
        resp = _list(mesh, page=page, size=size, **params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["current_page"] == page
        assert len(body["keys"]) <= size
        totals.add(body["total_count"])
        assert body["total_pages"] == -(-body["total_count"] // size)
        if not body["keys"]:
            break
        seen += body["keys"]
        page += 1
    assert len(totals) == 1, totals
    return seen, totals.pop()


def test_pages_hold_every_key_once_oldest_first(keyed: RunningMesh) -> None:
    made = [_generate(keyed, key_alias=f"paged-{i}") for i in range(23)]
    ids, total = _walk(keyed, 10)
    assert total == len(ids) and len(set(ids)) == len(ids)
    mine = [i for i in ids if i in {m["key_id"] for m in made}]
    assert mine == [m["key_id"] for m in made]  # oldest first
    full, _ = _walk(keyed, 7, return_full_object="true")
    assert [k["key_id"] for k in full] == ids  # type: ignore[index]
    by_id = {k["key_id"]: k for k in full}  # type: ignore[index]
    assert by_id[made[3]["key_id"]]["key_alias"] == "paged-3"  # type: ignore[index]


def test_the_default_page_and_a_page_past_the_last(keyed: RunningMesh) -> None:
    for _ in range(11):
        _generate(keyed)
    first = _list(keyed).json()
    assert (first["current_page"], len(first["keys"])) == (1, 10)  # LiteLLM's default size
    assert all(isinstance(k, str) for k in first["keys"])  # ids, as LiteLLM's default
    past = _list(keyed, page=10_000, size=100).json()
    assert past["keys"] == [] and past["total_count"] == first["total_count"]


def test_the_alias_filter_finds_the_one_key(keyed: RunningMesh) -> None:
    made = _generate(keyed, key_alias="findme", models=["echo/f"])
    _generate(keyed, key_alias="findme-not")
    body = _list(keyed, key_alias="findme", return_full_object="true").json()
    assert body["total_count"] == 1 and body["total_pages"] == 1
    assert body["keys"][0]["key_id"] == made["key_id"]
    assert body["keys"][0]["models"] == ["echo/f"]
    none = _list(keyed, key_alias="no-such-alias").json()
    assert (none["keys"], none["total_count"], none["total_pages"]) == ([], 0, 0)


@pytest.mark.parametrize(("params", "param"), [
    ({"page": 0}, "page"), ({"page": -1}, "page"), ({"page": "two"}, "page"),
    ({"page": "1.5"}, "page"), ({"page": 2**31}, "page"), ({"page": ""}, "page"),
    ({"size": 0}, "size"), ({"size": 101}, "size"), ({"size": "ten"}, "size"),
    ({"size": 10**30}, "size"),
    ({"return_full_object": "maybe"}, "return_full_object"),
    ({"team_id": "t"}, "team_id"), ({"user_id": "u"}, "user_id"),
    ({"key_hash": "abc"}, "key_hash"), ({"pgae": 2}, "pgae"),
])
def test_a_bad_parameter_is_400_naming_it(keyed: RunningMesh, params: dict[str, object],
                                          param: str) -> None:
    resp = _list(keyed, **params)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_only_the_master_key_lists_keys(keyed: RunningMesh) -> None:
    made = _generate(keyed, models=["echo/x"])
    own = {"authorization": f"Bearer {made['key']}"}
    refused = _list(keyed, own)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["type"] == "permission_error"
    assert _list(keyed, {}).status_code == 401
    assert _list(keyed, {"authorization": "Bearer sk-nope"}).status_code == 401


async def test_grpc_list_keys(keyed: RunningMesh) -> None:
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        made = await client.keys.generate(keys_pb2.GenerateKeyRequest(key_alias="grpc-listed"))
        page = await client.keys.list(key_alias="grpc-listed")
        assert [k.key_id for k in page.keys] == [made.info.key_id]
        assert (page.total_size, page.page, page.page_size) == (1, 1, 10)
        assert page.keys[0] == made.info
        everything = await client.keys.list(page_size=100)
        assert everything.page_size == 100 and everything.total_size >= 1
        for bad, param in (({"page_size": 101}, "page_size"), ({"page_size": -1}, "page_size"),
                           ({"page": -3}, "page")):
            with pytest.raises(RPCError) as info:
                await client.keys.list(**bad)  # type: ignore[arg-type]
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.param == param
    async with ScillmClient(keyed.grpc_target, api_key=made.key) as virtual:
        with pytest.raises(RPCError) as denied:
            await virtual.keys.list()
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_grpcurl_sees_update_and_list_by_reflection(grpcurl: str, keyed: RunningMesh) -> None:
    listed = subprocess.run([grpcurl, "-plaintext", "-max-time", "20", keyed.grpc_target,
                             "list", "scillm.keys.v1.KeyService"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert listed.returncode == 0, listed.stderr
    assert {"scillm.keys.v1.KeyService.UpdateKey",
            "scillm.keys.v1.KeyService.ListKeys"} <= set(listed.stdout.split())
    made = _generate(keyed, key_alias="by-grpcurl")
    called = subprocess.run([grpcurl, "-plaintext", "-max-time", "20", "-H",
                             f"authorization: Bearer {MASTER}", "-d",
                             '{"key_alias": "by-grpcurl"}', keyed.grpc_target,
                             "scillm.keys.v1.KeyService/ListKeys"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert called.returncode == 0, called.stderr
    reply = json.loads(called.stdout)
    assert [k.get("keyId", k.get("key_id")) for k in reply["keys"]] == [made["key_id"]]
    assert str(made["key"]) not in called.stdout
