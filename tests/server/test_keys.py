"""Keys through both doors: master key, virtual keys with models, expiry, budget and
rate limits; 401/403/429 with OpenAI's body and Retry-After; management in LiteLLM's shape."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient
from scillm.keys.v1 import keys_pb2
from scillm.server.errors import Unavailable
from scillm.server.keys import (
    Authenticator,
    MemoryWindows,
    Principal,
    RedisWindows,
    SQLiteKeyStore,
)
from scillm.server.keys.errors import BudgetExceeded, Forbidden, KeyRateLimited

MASTER = "sk-master-test"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    tmp = tmp_path_factory.mktemp("keys")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [
            {"model_name": "echo/*", "litellm_params": {"model": "echo/*"}},
            {"model_name": "priced", "litellm_params": {
                "model": "echo/priced", "input_cost_per_token": 0.5,
                "output_cost_per_token": 1.0}}],
        "general_settings": {"master_key": MASTER},
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp, config_path=config,
                                       services=("completion", "codeworld")))
    yield running
    running.stop()


def _chat(mesh: RunningMesh, key: str | None, model: str = "echo/x") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{mesh.http_url}/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "a b"}]})


def _generate(mesh: RunningMesh, **body: object) -> dict[str, object]:
    resp = httpx.post(f"{mesh.http_url}/key/generate", json=body, timeout=30,
                      headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_no_key_and_a_wrong_key_are_401(keyed: RunningMesh) -> None:
    for key in (None, "sk-not-a-key"):
        resp = _chat(keyed, key)
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["type"] == "authentication_error"
    assert _chat(keyed, MASTER).status_code == 200
    assert httpx.get(f"{keyed.http_url}/healthz").status_code == 200  # health stays open


async def test_grpc_reads_the_authorization_metadata(keyed: RunningMesh) -> None:
    async with ScillmClient(keyed.grpc_target) as anonymous:
        with pytest.raises(RPCError) as info:
            await anonymous.completion.create({"model": "echo/x", "messages": [
                {"role": "user", "content": "x"}]})
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        reply = await client.completion.create({"model": "echo/x", "messages": [
            {"role": "user", "content": "x"}]})
        assert reply.choices[0].message.content[0].text == "x"
        generated = await client.keys.generate(keys_pb2.GenerateKeyRequest(models=["echo/x"]))
    async with ScillmClient(keyed.grpc_target, api_key=generated.key) as virtual:
        await virtual.completion.create({"model": "echo/x", "messages": [
            {"role": "user", "content": "x"}]})
        assert (await virtual.keys.get("")).key_id == generated.info.key_id  # itself
        with pytest.raises(RPCError) as denied:
            await virtual.keys.delete([generated.key])
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_virtual_key_models_and_management(keyed: RunningMesh) -> None:
    made = _generate(keyed, models=["echo/allowed"], key_alias="team-a", duration="1h",
                     metadata={"team": "a"})
    key = str(made["key"])
    assert key.startswith("sk-") and made["key_alias"] == "team-a" and made["expires"]
    assert _chat(keyed, key, "echo/allowed").status_code == 200
    denied = _chat(keyed, key, "echo/other")
    assert denied.status_code == 403 and "echo/allowed" in denied.json()["error"]["message"]
    sdk = openai.OpenAI(base_url=f"{keyed.http_url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="echo/other", messages=[{"role": "user",
                                                                   "content": "x"}])
    info = httpx.get(f"{keyed.http_url}/key/info", params={"key": key}, timeout=30,
                     headers={"authorization": f"Bearer {MASTER}"}).json()
    assert info["info"]["models"] == ["echo/allowed"] and info["info"]["metadata"] == {
        "team": "a"}
    assert key not in json.dumps(info)  # the secret is never returned again
    not_master = httpx.post(f"{keyed.http_url}/key/generate", json={}, timeout=30,
                            headers={"authorization": f"Bearer {key}"})
    assert not_master.status_code == 403
    deleted = httpx.post(f"{keyed.http_url}/key/delete", json={"keys": [key]}, timeout=30,
                         headers={"authorization": f"Bearer {MASTER}"})
    assert deleted.json() == {"deleted_keys": [info["info"]["key_id"]]}
    assert _chat(keyed, key, "echo/allowed").status_code == 401


def test_keys_are_stored_hashed(keyed: RunningMesh) -> None:
    """README: virtual keys are stored hashed. The store file beside the run store holds
    the sha256 of the secret, never the secret, and the key works by that hash."""
    key = str(_generate(keyed, key_alias="hashed")["key"])
    assert _chat(keyed, key).status_code == 200
    digest = hashlib.sha256(key.encode()).hexdigest()
    store = keyed.mesh.settings.store_path.with_name("keys.sqlite3")
    files = [p for p in store.parent.iterdir() if p.name.startswith("keys.sqlite3")]
    stored = b"".join(p.read_bytes() for p in files)
    assert store in files and digest.encode() in stored
    assert key.encode() not in stored and key.removeprefix("sk-").encode() not in stored
    info = httpx.get(f"{keyed.http_url}/key/info", params={"key": key}, timeout=30,
                     headers={"authorization": f"Bearer {MASTER}"}).json()
    assert info["info"]["key_id"] == digest[:16]


def test_rate_limit_is_429_with_retry_after(keyed: RunningMesh) -> None:
    key = str(_generate(keyed, rpm_limit=2)["key"])
    assert [_chat(keyed, key).status_code for _ in range(2)] == [200, 200]
    limited = _chat(keyed, key)
    assert limited.status_code == 429, limited.text
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"


def test_budget_from_token_prices(keyed: RunningMesh) -> None:
    key = str(_generate(keyed, max_budget=3.0)["key"])
    # 2 prompt words * 0.5 + 2 completion words * 1.0 = 3.0 per call
    assert _chat(keyed, key, "priced").status_code == 200
    over = _chat(keyed, key, "priced")
    assert over.status_code == 403 and "budget" in over.json()["error"]["message"]
    info = httpx.get(f"{keyed.http_url}/key/info", params={"key": key}, timeout=30,
                     headers={"authorization": f"Bearer {MASTER}"}).json()
    assert info["info"]["spend"] == pytest.approx(3.0)


def test_other_doors_need_a_key_too(keyed: RunningMesh) -> None:
    body = {"model": "codeworld", "messages": [{"role": "user", "content": "x"}],
            "items": [{"task_id": "a", "context": {"input": [1], "expected": 1}}],
            "strategies": [{"name": "s", "source": "def solve(t, c):\n    return 1\n"}]}
    anonymous = httpx.post(f"{keyed.http_url}/v1/chat/completions", json=body, timeout=60)
    assert anonymous.status_code == 401
    ok = httpx.post(f"{keyed.http_url}/v1/chat/completions", json=body, timeout=60,
                    headers={"authorization": f"Bearer {MASTER}"})
    assert ok.status_code == 200, ok.text


def test_bad_generate_bodies(keyed: RunningMesh) -> None:
    for body, param in (({"duration": "soon"}, "duration"), ({"rpm_limit": -1}, "rpm_limit"),
                        ({"models": "all"}, "models"), ({"key_alias": 5}, "key_alias")):
        resp = httpx.post(f"{keyed.http_url}/key/generate", json=body, timeout=30,
                          headers={"authorization": f"Bearer {MASTER}"})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param


@pytest.mark.parametrize(("body", "param"), [
    ({"rpm_limit": 1.5}, "rpm_limit"),  # was floored to 1
    ({"tpm_limit": 1000.25}, "tpm_limit"),
    ({"key": "sk-my-own-key"}, "key"),  # was ignored: another key came back
    ({"budget_duration": "30d"}, "budget_duration"),  # was ignored: no reset, ever
    ({"max_parallel_requests": 2}, "max_parallel_requests"),
    ({"model_max_budget": {"echo/x": 1}}, "model_max_budget"),
])
def test_what_a_key_cannot_honour_is_refused_not_ignored(keyed: RunningMesh,
                                                         body: dict[str, object],
                                                         param: str) -> None:
    """LiteLLM's fields that limit or name a key, which SciLLM's keys do not implement,
    were ignored: the caller believed in a monthly budget reset, a parallel-request cap
    or a key value of their choosing that did not exist. Each is a 400 naming it; a
    fractional rate limit is too, not floored. Fields that only describe (team_id,
    user_id, tags) are still accepted."""
    resp = httpx.post(f"{keyed.http_url}/key/generate", json=body, timeout=30,
                      headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    described = httpx.post(f"{keyed.http_url}/key/generate", timeout=30,
                           json={"team_id": "t", "user_id": "u", "tags": ["a"], "key": None},
                           headers={"authorization": f"Bearer {MASTER}"})
    assert described.status_code == 200, described.text


def test_a_virtual_key_reads_its_own_spend_and_limits_only(keyed: RunningMesh) -> None:
    """As in LiteLLM, a key may read its own /key/info (its spend, its budget left), also
    once over budget and without using a request of its rpm; any other key's info, and
    every other key operation, still needs the master key."""
    mine = _generate(keyed, models=["priced"], max_budget=1.0, rpm_limit=1)
    other = _generate(keyed, models=["echo/x"])
    key, key_id = str(mine["key"]), str(mine["key_id"])
    assert _chat(keyed, key, "priced").status_code == 200  # spends 3.0: over its budget
    own = {"authorization": f"Bearer {key}"}
    for query in ("", f"?key={key}", f"?key={key_id}"):
        info = httpx.get(f"{keyed.http_url}/key/info{query}", headers=own, timeout=30)
        assert info.status_code == 200, (query, info.text)
        assert info.json()["info"]["key_id"] == key_id
        assert info.json()["info"]["spend"] == pytest.approx(3.0)
    for query in (f"?key={other['key']}", f"?key={other['key_id']}"):
        refused = httpx.get(f"{keyed.http_url}/key/info{query}", headers=own, timeout=30)
        assert refused.status_code == 403, refused.text
    assert httpx.post(f"{keyed.http_url}/key/generate", json={}, headers=own,
                      timeout=30).status_code == 403
    # One model: a key's own is described, another is refused as a call to it would be.
    fresh = {"authorization": f"Bearer {_generate(keyed, models=['priced'])['key']}"}
    assert httpx.get(f"{keyed.http_url}/v1/models/priced", headers=fresh,
                     timeout=30).json()["id"] == "priced"
    assert httpx.get(f"{keyed.http_url}/v1/models/echo/x", headers=fresh,
                     timeout=30).status_code == 403
    limited = _generate(keyed, models=["echo/x"], rpm_limit=1)
    mine_only = {"authorization": f"Bearer {limited['key']}"}
    for _ in range(3):  # reading itself takes nothing from its requests per minute
        assert httpx.get(f"{keyed.http_url}/key/info", headers=mine_only,
                         timeout=30).status_code == 200
    assert _chat(keyed, str(limited["key"])).status_code == 200


def test_a_delete_naming_an_unknown_key_deletes_nothing(keyed: RunningMesh) -> None:
    """[known, unknown] deleted the known key and answered 404 "no such key": the caller
    was told the call failed while a key had gone. Now nothing is deleted unless every
    key is known; a key named twice is one key."""
    master = {"authorization": f"Bearer {MASTER}"}
    key = str(_generate(keyed, models=["echo/x"])["key"])
    refused = httpx.post(f"{keyed.http_url}/key/delete", json={"keys": [key, "sk-nope"]},
                         timeout=30, headers=master)
    assert refused.status_code == 404 and "sk-nop" in refused.json()["error"]["message"]
    assert _chat(keyed, key).status_code == 200  # still there
    twice = httpx.post(f"{keyed.http_url}/key/delete", json={"keys": [key, key]}, timeout=30,
                       headers=master)
    assert twice.status_code == 200, twice.text
    assert len(twice.json()["deleted_keys"]) == 1
    assert _chat(keyed, key).status_code == 401


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_budget": float("nan")}, "max_budget"),  # was INTERNAL: the store's NOT NULL
    ({"max_budget": float("inf")}, "max_budget"),
    ({"key_alias": "a" * 257}, "key_alias"),
    ({"models": ["echo/x", ""]}, "models[1]"),
    ({"models": ["m" * 257]}, "models[0]"),
])
async def test_a_key_of_no_meaning_is_refused_over_grpc(keyed: RunningMesh,
                                                        fields: dict[str, object],
                                                        param: str) -> None:
    """gRPC carries a NaN or infinite budget (JSON cannot), and names of any length."""
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        with pytest.raises(RPCError) as info:
            await client.keys.generate(keys_pb2.GenerateKeyRequest(**fields))  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == param


async def test_authenticator_rules_without_a_server(tmp_path: Path) -> None:
    clock = [1000.0]
    auth = Authenticator("m", SQLiteKeyStore(tmp_path / "k.sqlite3"), {"p": (1.0, 1.0)},
                         MemoryWindows(clock=lambda: clock[0]))
    _, expired = await auth.store.create(expires_at=time.time() - 1)
    with pytest.raises(Forbidden):
        await auth.authorize(Principal(False, expired))
    _, limited = await auth.store.create(tpm_limit=10)
    principal = Principal(False, limited)
    await auth.authorize(principal)
    await auth.account(principal, "p", 6, 6)
    with pytest.raises(KeyRateLimited) as info:
        await auth.authorize(principal)
    assert 0 < info.value.retry_after_s <= 60
    clock[0] += 61  # the window moved on
    await auth.authorize(principal)
    _, budgeted = await auth.store.create(max_budget=1.0)
    await auth.account(Principal(False, budgeted), "p", 1, 0)
    with pytest.raises(BudgetExceeded):
        await auth.authorize(Principal(False, await auth.store.find(budgeted.key_id)))


async def test_replicas_share_rate_windows_in_redis(tmp_path: Path, redis_port: int) -> None:
    store = SQLiteKeyStore(tmp_path / "k.sqlite3")
    _, record = await store.create(rpm_limit=3)
    url = f"redis://127.0.0.1:{redis_port}/0"
    replicas = [Authenticator("m", store, windows=RedisWindows(url)) for _ in range(2)]
    principal = Principal(False, record)
    await replicas[0].authorize(principal)
    await replicas[1].authorize(principal)
    await replicas[0].authorize(principal)
    with pytest.raises(KeyRateLimited) as info:
        await replicas[1].authorize(principal)  # the fourth request, counted across both
    assert 0 < info.value.retry_after_s <= 60
    for auth in replicas:
        assert isinstance(auth.windows, RedisWindows)
        await auth.windows.close()


async def test_a_shared_rpm_limit_holds_for_concurrent_requests(tmp_path: Path,
                                                              redis_port: int) -> None:
    """Twenty requests at once, over two replicas sharing the window: exactly the limit
    gets through (counting and checking are one step in Redis)."""
    store = SQLiteKeyStore(tmp_path / "k.sqlite3")
    _, record = await store.create(rpm_limit=5)
    url = f"redis://127.0.0.1:{redis_port}/1"
    replicas = [Authenticator("m", store, windows=RedisWindows(url)) for _ in range(2)]
    principal = Principal(False, record)
    outcomes = await asyncio.gather(*(replicas[i % 2].authorize(principal) for i in range(20)),
                                    return_exceptions=True)
    assert sum(o is None for o in outcomes) == 5
    assert all(isinstance(o, KeyRateLimited) for o in outcomes if o is not None)
    for auth in replicas:
        assert isinstance(auth.windows, RedisWindows)
        await auth.windows.close()


async def test_concurrent_streams_per_key_are_limited(tmp_path: Path) -> None:
    running = start_mesh(mesh_settings(tmp_path, services=("completion",), http_enabled=False,
                                       master_key=MASTER, max_streams_per_key=2))
    # Held open by flow control: an echo answer holds at most 4,096 words, and 16 choices
    # of them make a stream of some 4 MB.
    words = " ".join(f"w{i:08d}" for i in range(4096))
    try:
        async with ScillmClient(running.grpc_target, api_key=MASTER) as client:
            request = {"model": "echo/x", "n": 16,
                       "messages": [{"role": "user", "content": words}]}
            open_streams = [client.completion.stream(request) for _ in range(2)]
            for stream in open_streams:
                assert (await anext(stream)).HasField("chunk")
            with pytest.raises(RPCError) as info:
                await anext(client.completion.stream(request))
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.retry_after_s is not None
            for stream in open_streams:
                await stream.aclose()  # type: ignore[attr-defined]
            await asyncio.sleep(0.2)
            again = client.completion.stream(request)
            assert (await anext(again)).HasField("chunk")  # a slot is free again
            await again.aclose()  # type: ignore[attr-defined]
    finally:
        running.stop()


def test_a_key_limited_to_some_models_lists_only_those(keyed: RunningMesh) -> None:
    """As LiteLLM's proxy does: /v1/models shows a key the models it may call (a name the
    mesh does not serve is left out), and the master key every configured name."""
    key = str(_generate(keyed, models=["echo/x", "priced", "nosuch"])["key"])

    def listed(token: str) -> list[str]:
        reply = httpx.get(f"{keyed.http_url}/v1/models", timeout=30,
                          headers={"authorization": f"Bearer {token}"})
        assert reply.status_code == 200, reply.text
        return [m["id"] for m in reply.json()["data"]]

    assert listed(key) == ["echo/x", "priced"]
    assert listed(MASTER) == ["priced", "echo/*"]


def test_metadata_values_that_are_not_text_are_kept_as_json(keyed: RunningMesh) -> None:
    """LiteLLM's metadata holds any JSON; the key's holds text: a nested value was kept as
    Python's repr ("{'b': 1}"), now as its JSON."""
    made = _generate(keyed, metadata={"team": "a", "limits": {"b": 1}, "tags": ["x"]})
    assert made["metadata"] == {"team": "a", "limits": '{"b": 1}', "tags": '["x"]'}


def test_a_key_store_that_is_no_database_stops_the_start_naming_it(tmp_path: Path) -> None:
    """keys.sqlite3 holding something else stopped `scillm serve` with "file is not a
    database", naming no file."""
    from scillm.server.keys import KeyStoreError, SQLiteKeyStore

    path = tmp_path / "keys.sqlite3"
    path.write_text("not keys\n")
    with pytest.raises(KeyStoreError) as info:
        SQLiteKeyStore(path)
    assert str(path) in str(info.value) and "not a database" in str(info.value)
    assert path.read_text() == "not keys\n"


async def test_a_key_store_that_cannot_write_is_unavailable(tmp_path: Path) -> None:
    """On a full disk, making a key or charging a call failed with an INTERNAL error (a
    traceback per call): the key store is unavailable, as a run store in that state."""
    from scillm.server.keys import KeyStoreUnavailable, SQLiteKeyStore

    store = SQLiteKeyStore(tmp_path / "keys.sqlite3")
    store._db.execute("PRAGMA max_page_count = 4")
    made = 0
    with pytest.raises(KeyStoreUnavailable) as full:
        for i in range(10_000):
            await store.create(key_alias=f"k{i}" + "x" * 200, models=("echo/x",))
            made += 1
    assert made > 0 and "keys.sqlite3" in str(full.value) and "full" in str(full.value)
    assert isinstance(full.value, Unavailable)  # UNAVAILABLE, as any store that cannot work
