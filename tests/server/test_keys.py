"""Keys through both doors: master key, virtual keys with models, expiry, budget and
rate limits; 401/403/429 with OpenAI's body and Retry-After; management in LiteLLM's shape."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from fakeclock import Clock
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
from scillm.server.keys._windows import WINDOW_S
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


async def test_calls_in_flight_reserve_their_estimates_until_released(tmp_path: Path) -> None:
    """Without a server: a call's estimate is reserved at the model's prices, a call is
    admitted only if it fits beside the key's other reservations (alone: while the key is
    under its limits), and a refused call reserves nothing."""
    auth = Authenticator("m", SQLiteKeyStore(tmp_path / "k.sqlite3"), {"p": (0.5, 1.0)})
    _, record = await auth.store.create(max_budget=10.0, tpm_limit=100)
    key = Principal(False, record)
    alone = await auth.authorize(key, model="p", estimate=(4, 30))  # 32.0: over, but alone
    assert alone is not None and auth.in_flight(record.key_hash) == (1, 32.0, 34)
    with pytest.raises(KeyRateLimited) as info:  # 2 + 32 > 10
        await auth.authorize(key, model="p", estimate=(4, 0))
    assert "in flight" in str(info.value) and info.value.retry_after_s > 0
    assert auth.in_flight(record.key_hash) == (1, 32.0, 34)  # the refused one let go
    with pytest.raises(KeyRateLimited):  # a service's model call counts them too
        await auth.admit_model_call(key, "p")
    alone.release()
    alone.release()  # twice is once
    assert auth.in_flight(record.key_hash) == (0, 0.0, 0)
    first = await auth.authorize(key, model="p", estimate=(2, 4))  # 5.0 and 6 tokens
    second = await auth.authorize(key, model="p", estimate=(2, 4))  # 10.0 fits exactly
    assert first is not None and second is not None
    with pytest.raises(KeyRateLimited):
        await auth.authorize(key, model="p", estimate=(0, 1))
    await auth.admit_model_call(key, "p")  # reserves nothing: 10.0 of 10 is room enough
    await auth.account(key, "p", 2, 4)  # the first ends: charged, then released
    first.release()
    with pytest.raises(KeyRateLimited):  # spent 5.0 (read afresh) and 5.0 reserved
        await auth.authorize(key, model="p", estimate=(0, 1))
    second.release()
    # Tokens per minute: 6 used; reservations of 90 fit beside them, 95 do not.
    _, tpm = await auth.store.create(tpm_limit=100)
    limited = Principal(False, tpm)
    await auth.account(limited, "p", 6, 0)
    held = await auth.authorize(limited, model="p", estimate=(0, 45))
    also = await auth.authorize(limited, model="p", estimate=(0, 45))
    with pytest.raises(KeyRateLimited):
        await auth.authorize(limited, model="p", estimate=(0, 5))
    assert held is not None and also is not None
    held.release()
    also.release()
    # A key with neither limit reserves nothing.
    _, free = await auth.store.create()
    assert await auth.authorize(Principal(False, free), model="p", estimate=(9, 9)) is None
    assert auth.in_flight(tpm.key_hash) == auth.in_flight(free.key_hash) == (0, 0.0, 0)


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


async def _stored_entries(url: str) -> dict[bytes, int]:
    """Per rate-window key in the Redis at `url`, the entries it holds."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    stored = {}
    async for name in client.scan_iter("scillm:rate*"):
        kind = (await client.type(name)).decode()
        stored[name] = int(await (client.zcard(name) if kind == "zset" else
                                  client.hlen(name) if kind == "hash" else
                                  client.exists(name)))
    await client.aclose()
    return stored


async def test_a_redis_window_holds_a_bucket_a_second_however_busy(redis_port: int) -> None:
    """A window in Redis holds at most a bucket per second of its minute, whatever the
    traffic: it held a sorted-set member per request, which its Lua script read and summed
    on every request (119 ms a request, Redis blocked meanwhile, at 50,000 a minute)."""
    url = f"redis://127.0.0.1:{redis_port}/2"
    windows = RedisWindows(url)
    for _ in range(2000):
        assert await windows.take("k", "requests", 10_000) is None
        await windows.add("k", "tokens", 5)
    assert (await windows.total("k", "requests"))[0] == 2000
    assert (await windows.total("k", "tokens"))[0] == 10_000
    assert not windows.outage.down  # counted in Redis
    await windows.close()
    stored = await _stored_entries(url)
    assert len(stored) == 2 and all(n <= WINDOW_S + 1 for n in stored.values()), stored


async def test_a_redis_window_counts_as_one_in_memory(redis_port: int) -> None:
    """Under a moving clock, over 150 s of 4 requests a second against a limit of 200 a
    minute, a window in Redis answers request for request as the windows of one process,
    and holds no more than a bucket a second."""
    clock = Clock(1_700_000_000.0)
    url = f"redis://127.0.0.1:{redis_port}/3"
    windows, memory = RedisWindows(url, clock=clock), MemoryWindows(clock)
    refused = 0
    for step in range(600):
        clock.now += 0.25
        leaves = await windows.take("k", "requests", 200)
        assert leaves == await memory.take("k", "requests", 200)
        refused += leaves is not None
        await windows.add("k", "tokens", 5)
        await memory.add("k", "tokens", 5)
        if step % 50 == 0:
            for kind in ("requests", "tokens"):
                assert await windows.total("k", kind) == await memory.total("k", kind)
    assert not windows.outage.down
    assert 0 < refused < 600 and (await windows.total("k", "requests"))[0] <= 200
    await windows.close()
    stored = await _stored_entries(url)
    assert len(stored) == 2 and all(n <= WINDOW_S + 1 for n in stored.values()), stored


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


def _stored_keys(mesh: RunningMesh) -> int:
    store = mesh.mesh.settings.store_path.with_name("keys.sqlite3")
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM keys").fetchone()[0])


@pytest.mark.parametrize("field", ["max_budget", "rpm_limit", "tpm_limit"])
@pytest.mark.parametrize("zero", [0, 0.0])
def test_a_limit_of_zero_is_refused_not_read_as_no_limit(keyed: RunningMesh, field: str,
                                                         zero: float) -> None:
    """`{"max_budget": 0}` made a key with no budget at all, where LiteLLM's blocks every
    call. The proto cannot tell 0 from unset, so the door refuses an explicit 0, naming
    the field and how to have no limit; null (or leaving it out) is no limit."""
    before = _stored_keys(keyed)
    resp = httpx.post(f"{keyed.http_url}/key/generate", json={field: zero}, timeout=30,
                      headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == field and "leave it out" in error["message"], error
    assert _stored_keys(keyed) == before
    unlimited = _generate(keyed, **{field: None})
    assert unlimited[field] is None


@pytest.mark.parametrize(("body", "hint"), [
    ({"max_buget": 0.01, "rpm": 1}, "did you mean 'max_budget'"),
    ({"rpm_limt": 1}, "did you mean 'rpm_limit'"),
    ({"modles": ["echo/x"]}, "did you mean 'models'"),
    ({"frobnicate": True}, ""),
])
def test_an_unknown_field_is_refused_naming_it(keyed: RunningMesh, body: dict[str, object],
                                               hint: str) -> None:
    """A misspelt limit (`max_buget`, `rpm`) was dropped: the key came back with no limit
    at all. A field no LiteLLM key has is a 400 naming it, with the closest known one."""
    before = _stored_keys(keyed)
    resp = httpx.post(f"{keyed.http_url}/key/generate", json=body, timeout=30,
                      headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == next(iter(body)), error
    assert all(f"'{name}'" in error["message"] for name in body), error  # each is named
    assert hint in error["message"], error
    assert _stored_keys(keyed) == before


@pytest.mark.parametrize("body", [
    {"soft_budget": 1}, {"budget_limits": [{"budget_duration": "1d", "max_budget": 1}]},
    {"spend": 5}, {"budget_id": "b"}, {"rpm_limit_type": "guaranteed_throughput"},
    {"tpm_limit_type": "dynamic"}, {"key_type": "read_only"}, {"model_tpm_limit": {"a": 1}},
    {"model_rpm_limit": {"a": 1}}, {"object_permission": {"vector_stores": ["v"]}},
    {"allowed_passthrough_routes": ["/x"]}, {"budget_fallbacks": {"a": ["b"]}},
    {"auto_rotate": True}, {"router_settings": {"num_retries": 1}},
])
def test_litellms_limits_a_key_does_not_have_are_refused(keyed: RunningMesh,
                                                         body: dict[str, object]) -> None:
    """LiteLLM's fields that limit a key (a spend to start from, budget windows, limit
    types, route or object permissions) are refused by name: ignored, they left a key
    unlimited that the operator meant to limit."""
    resp = httpx.post(f"{keyed.http_url}/key/generate", json=body, timeout=30,
                      headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == next(iter(body))


def test_litellms_fields_that_set_nothing_or_only_describe_are_accepted(
        keyed: RunningMesh) -> None:
    """A LiteLLM client sends its defaults (`spend: 0`, empty lists and objects, false)
    and descriptive fields; none of them limits a key, and each is accepted."""
    made = _generate(keyed, team_id="t", user_id="u", agent_id="a", organization_id="o",
                     project_id="p", tags=["x"], send_invite_email=False, spend=0,
                     model_max_budget={}, aliases={}, config={}, permissions={},
                     allowed_cache_controls=[], allowed_routes=[], blocked=False,
                     auto_rotate=False, key=None, soft_budget=None, guardrails=None)
    assert made["max_budget"] is None and made["rpm_limit"] is None


@pytest.mark.parametrize("duration", ["500000w", 300_000_000_000, "3650000d"])
def test_an_expiry_past_year_9999_is_refused_before_the_key_is_made(
        keyed: RunningMesh, duration: object) -> None:
    """An expiry past what a Timestamp holds (9999-12-31) was a 500 after the key was
    stored: a key made whose secret nobody was given. Now a 400 naming `duration`, and
    nothing stored."""
    before = _stored_keys(keyed)
    resp = httpx.post(f"{keyed.http_url}/key/generate", json={"duration": duration},
                      timeout=30, headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "duration"
    assert "9999" in resp.json()["error"]["message"]
    assert _stored_keys(keyed) == before
    assert _generate(keyed, duration="400000w")["expires"]  # 7,600 years: still a date


async def test_an_expiry_past_year_9999_is_refused_over_grpc_too(keyed: RunningMesh) -> None:
    before = _stored_keys(keyed)
    request = keys_pb2.GenerateKeyRequest()
    request.duration.FromSeconds(300_000_000_000)
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        with pytest.raises(RPCError) as info:
            await client.keys.generate(request)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == "duration"
    assert _stored_keys(keyed) == before


@pytest.mark.parametrize("field", ["rpm_limit", "tpm_limit"])
def test_a_rate_limit_near_2_63_is_kept_exactly(keyed: RunningMesh, field: str) -> None:
    """A limit within 512 of 2**63 went through float() and came out as 2**63, past
    int64: a 500. Whole numbers stay exact; past int64 is a 400."""
    for value in (2**63 - 1, 2**63 - 100, 2**53 + 1):
        assert _generate(keyed, **{field: value})[field] == value
    for value in (2**63, 2**64 + 1):
        resp = httpx.post(f"{keyed.http_url}/key/generate", json={field: value}, timeout=30,
                          headers={"authorization": f"Bearer {MASTER}"})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == field


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_a_key_reads_itself_whatever_the_schemes_case(keyed: RunningMesh,
                                                      scheme: str) -> None:
    """`authorization: bearer sk-...` reached every route but /key/info, which stripped
    only "Bearer " and looked up "bearer sk-...": a 403."""
    made = _generate(keyed, models=["echo/x"])
    headers = {"authorization": f"{scheme} {made['key']}"}
    assert _chat(keyed, f"{made['key']}").status_code == 200
    info = httpx.get(f"{keyed.http_url}/key/info", headers=headers, timeout=30)
    assert info.status_code == 200, info.text
    assert info.json()["info"]["key_id"] == made["key_id"]


# ------------------------------------------------------------- aliases and bounded records


def _refused(resp: httpx.Response, status: int, param: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    error = dict(resp.json()["error"])
    assert error["param"] == param, error
    return error


def test_a_key_alias_names_one_key(keyed: RunningMesh) -> None:
    """Two keys could have one alias, so an operator managing keys by alias could not tell
    them apart. As in LiteLLM, an alias another key has is refused (409 naming
    `key_alias` and the key that has it) and nothing is stored; no alias (absent, null or
    empty) is no alias, which any number of keys share; a deleted key's alias is free."""
    master = {"authorization": f"Bearer {MASTER}"}
    first = _generate(keyed, key_alias="team-unique", models=["echo/x"])
    before = _stored_keys(keyed)
    again = httpx.post(f"{keyed.http_url}/key/generate", json={"key_alias": "team-unique"},
                       timeout=30, headers=master)
    error = _refused(again, 409, "key_alias")
    assert error["type"] == "conflict_error" and error["code"] == "DuplicateKeyAlias"
    assert "'team-unique'" in str(error["message"]) and str(first["key_id"]) in str(
        error["message"])
    assert _stored_keys(keyed) == before
    for body in ({}, {"key_alias": None}, {"key_alias": ""}, {}, {"key_alias": ""}):
        assert _generate(keyed, **body)["key_alias"] == ""
    assert _generate(keyed, key_alias="Team-Unique")["key_alias"] == "Team-Unique"  # another
    httpx.post(f"{keyed.http_url}/key/delete", json={"keys": [first["key"]]}, timeout=30,
               headers=master).raise_for_status()
    assert _generate(keyed, key_alias="team-unique")["key_alias"] == "team-unique"


async def test_a_key_alias_names_one_key_over_grpc_even_when_asked_at_once(
        keyed: RunningMesh) -> None:
    """Over gRPC the taken alias is ALREADY_EXISTS naming `key_alias`, as a stored run id
    asked for again is; of many generates of one new alias at once exactly one wins."""
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        made = await asyncio.gather(*(
            client.keys.generate(keys_pb2.GenerateKeyRequest(key_alias="at-once"))
            for _ in range(8)), return_exceptions=True)
    won = [m for m in made if isinstance(m, keys_pb2.GenerateKeyResponse)]
    lost = [m for m in made if not isinstance(m, keys_pb2.GenerateKeyResponse)]
    assert len(won) == 1, made
    for refused in lost:
        assert isinstance(refused, RPCError), refused
        assert refused.code == grpc.StatusCode.ALREADY_EXISTS and refused.param == "key_alias"
        assert won[0].info.key_id in refused.message


def test_the_key_store_itself_refuses_a_second_key_with_an_alias(keyed: RunningMesh) -> None:
    """The alias is unique in the database (a partial unique index), not only checked
    before an insert: a process that checked, then inserted, could lose a race to another."""
    made = _generate(keyed, key_alias="in-the-database")
    store = keyed.mesh.settings.store_path.with_name("keys.sqlite3")
    with sqlite3.connect(store) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO keys SELECT 'h', 'i', key_alias, models, expires_at, "
                   "max_budget, spend, rpm_limit, tpm_limit, metadata, created_at FROM keys "
                   "WHERE key_id = ?", (made["key_id"],))


@pytest.mark.parametrize(("body", "param", "said"), [
    ({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata", "64 entries"),
    ({"metadata": {"notes": "x" * (16 * 1024 - 4)}}, "metadata", "16384 bytes"),
    ({"metadata": {f"k{i}": "x" * 1000 for i in range(5000)}}, "metadata", "64 entries"),
    ({"metadata": {"é": "é" * 8192}}, "metadata", "16384 bytes"),  # bytes, not chars
    ({"models": [f"echo/m{i}" for i in range(1025)]}, "models", "1024 models"),
])
def test_a_keys_metadata_and_models_are_bounded(keyed: RunningMesh, body: dict[str, object],
                                                param: str, said: str) -> None:
    """A master key could store megabytes of metadata (or 100,000 model names) in one key,
    which every call authenticated by it then loads: past 64 metadata entries, 16 KiB of
    metadata or 1024 models a generate is a 400 naming the field, and nothing is stored."""
    before = _stored_keys(keyed)
    resp = httpx.post(f"{keyed.http_url}/key/generate", json=body, timeout=60,
                      headers={"authorization": f"Bearer {MASTER}"})
    error = _refused(resp, 400, param)
    assert error["type"] == "invalid_request_error" and said in str(error["message"]), error
    assert _stored_keys(keyed) == before


def test_metadata_and_models_up_to_the_bounds_are_kept(keyed: RunningMesh) -> None:
    entries = {f"k{i:02}": "v" for i in range(64)}
    assert _generate(keyed, metadata=entries)["metadata"] == entries
    full = {"notes": "x" * (16 * 1024 - 5)}  # 5 + 16379 bytes: exactly 16 KiB
    assert _generate(keyed, metadata=full)["metadata"] == full
    models = [f"echo/m{i}" for i in range(1024)]
    assert _generate(keyed, models=models)["models"] == models


@pytest.mark.parametrize(("fields", "param"), [
    ({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata"),
    ({"metadata": {"k": "v" * (16 * 1024)}}, "metadata"),
    ({"models": [f"m{i}" for i in range(1025)]}, "models"),
])
async def test_a_keys_metadata_and_models_are_bounded_over_grpc_too(
        keyed: RunningMesh, fields: dict[str, object], param: str) -> None:
    before = _stored_keys(keyed)
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        with pytest.raises(RPCError) as info:
            await client.keys.generate(keys_pb2.GenerateKeyRequest(**fields))  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == param
    assert _stored_keys(keyed) == before
