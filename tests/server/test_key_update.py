"""Changing a virtual key: LiteLLM's `POST /key/update` and gRPC `UpdateKey`, on a real
mesh with its SQLite key store. Only the fields sent change, with generate's bounds; the
next call made with the key sees the change; a non-admin, a bad body or an unknown key
changes nothing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import grpc
import httpx
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import RPCError, ScillmClient
from scillm.keys.v1 import keys_pb2
from scillm.server.keys import DuplicateKeyAlias, SQLiteKeyStore

MASTER = "sk-master-update"
ADMIN = {"authorization": f"Bearer {MASTER}"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    tmp = tmp_path_factory.mktemp("key-update")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [
            {"model_name": "echo/*", "litellm_params": {"model": "echo/*"}},
            {"model_name": "priced", "litellm_params": {
                "model": "echo/priced", "input_cost_per_token": 0.5,
                "output_cost_per_token": 1.0}}],
        "general_settings": {"master_key": MASTER},
        "litellm_settings": {"cache": False}}))
    running = start_mesh(mesh_settings(tmp, config_path=config, services=("completion",)))
    yield running
    running.stop()


def _chat(mesh: RunningMesh, key: str, model: str = "echo/x") -> httpx.Response:
    return httpx.post(f"{mesh.http_url}/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": model, "messages": [{"role": "user", "content": "a b"}]})


def _generate(mesh: RunningMesh, **body: object) -> dict[str, object]:
    resp = httpx.post(f"{mesh.http_url}/key/generate", json=body, timeout=30, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _update(mesh: RunningMesh, body: object, headers: dict[str, str] | None = None,
            ) -> httpx.Response:
    return httpx.post(f"{mesh.http_url}/key/update", json=body, timeout=60,
                      headers=ADMIN if headers is None else headers)


def _info(mesh: RunningMesh, key: str) -> dict[str, object]:
    resp = httpx.get(f"{mesh.http_url}/key/info", params={"key": key}, timeout=30,
                     headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["info"])


def _refused(resp: httpx.Response, status: int, param: str | None) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    error = dict(resp.json()["error"])
    assert error["param"] == param, error
    return error


def _store(mesh: RunningMesh) -> Path:
    return mesh.mesh.settings.store_path.with_name("keys.sqlite3")


# ------------------------------------------------------------------ what an update changes


def test_an_update_changes_the_models_the_next_call_may_use(keyed: RunningMesh) -> None:
    made = _generate(keyed, models=["echo/a"], key_alias="models-change")
    key = str(made["key"])
    assert _chat(keyed, key, "echo/a").status_code == 200
    assert _chat(keyed, key, "echo/b").status_code == 403
    resp = _update(keyed, {"key": key, "models": ["echo/b"]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["key"] == made["key_id"] and body["models"] == ["echo/b"]
    assert key not in resp.text  # the secret is not sent back
    assert _chat(keyed, key, "echo/b").status_code == 200
    denied = _chat(keyed, key, "echo/a")
    assert denied.status_code == 403 and "echo/b" in denied.json()["error"]["message"]


def test_only_the_fields_sent_change(keyed: RunningMesh) -> None:
    made = _generate(keyed, models=["echo/x"], key_alias="only-sent", duration="1h",
                     max_budget=9.0, rpm_limit=50, tpm_limit=5000, metadata={"team": "a"})
    key = str(made["key"])
    before = _info(keyed, key)
    for field, value in (("rpm_limit", 7), ("tpm_limit", 70), ("max_budget", 2.5),
                         ("metadata", {"team": "b", "owner": "o"}),
                         ("key_alias", "only-sent-2"), ("models", ["echo/y", "echo/z"])):
        resp = _update(keyed, {"key": key, field: value})
        assert resp.status_code == 200, resp.text
        after = _info(keyed, key)
        assert after[field] == value, (field, after)
        assert {k: v for k, v in after.items() if k != field} == \
            {k: v for k, v in before.items() if k != field}, field
        before = after


def test_a_key_is_named_by_its_secret_or_its_key_id(keyed: RunningMesh) -> None:
    made = _generate(keyed)
    resp = _update(keyed, {"key": made["key_id"], "rpm_limit": 3})
    assert resp.status_code == 200, resp.text
    assert _info(keyed, str(made["key"]))["rpm_limit"] == 3


def test_null_clears_a_field(keyed: RunningMesh) -> None:
    """As in LiteLLM: a field sent as null goes back to none (no limit, no alias, every
    model, no expiry)."""
    made = _generate(keyed, models=["echo/x"], key_alias="to-clear", duration="1h",
                     max_budget=1.0, rpm_limit=5, tpm_limit=50, metadata={"a": "b"})
    key = str(made["key"])
    resp = _update(keyed, {"key": key, "models": None, "key_alias": None, "duration": None,
                           "max_budget": None, "rpm_limit": None, "tpm_limit": None,
                           "metadata": None})
    assert resp.status_code == 200, resp.text
    info = _info(keyed, key)
    assert (info["models"], info["key_alias"], info["expires"], info["max_budget"],
            info["rpm_limit"], info["tpm_limit"], info["metadata"]) == \
        ([], "", None, None, None, None, {})
    assert _chat(keyed, key, "echo/anything").status_code == 200  # every model now


def test_litellms_minus_one_duration_means_no_expiry(keyed: RunningMesh) -> None:
    """LiteLLM's (deprecated) `"duration": "-1"` never expires a key, as `null` does: it
    was a 400, and a LiteLLM caller's update failed."""
    made = _generate(keyed, duration="1h")
    resp = _update(keyed, {"key": str(made["key"]), "duration": "-1"})
    assert resp.status_code == 200, resp.text
    assert _info(keyed, str(made["key"]))["expires"] is None


def test_duration_sets_a_new_expiry_from_now(keyed: RunningMesh) -> None:
    made = _generate(keyed, duration="1h")
    key = str(made["key"])
    start = time.time()
    resp = _update(keyed, {"key": key, "duration": "30d"})
    assert resp.status_code == 200, resp.text
    expires = datetime.fromisoformat(str(resp.json()["expires"]).replace("Z", "+00:00"))
    assert start + 30 * 86400 - 5 <= expires.timestamp() <= time.time() + 30 * 86400 + 5


def test_an_expired_key_comes_back_with_a_new_duration(keyed: RunningMesh) -> None:
    made = _generate(keyed, duration=1)
    key = str(made["key"])
    time.sleep(1.2)
    assert _chat(keyed, key).status_code == 403
    assert _update(keyed, {"key": key, "duration": "1h"}).status_code == 200
    assert _chat(keyed, key).status_code == 200


def test_a_budget_raised_revives_a_key_and_its_spend_stays(keyed: RunningMesh) -> None:
    key = str(_generate(keyed, models=["priced"], max_budget=3.0)["key"])
    assert _chat(keyed, key, "priced").status_code == 200  # spends 3.0
    assert _chat(keyed, key, "priced").status_code == 403
    resp = _update(keyed, {"key": key, "max_budget": 6.0})
    assert resp.status_code == 200, resp.text
    assert resp.json()["spend"] == pytest.approx(3.0)
    assert _chat(keyed, key, "priced").status_code == 200
    assert _chat(keyed, key, "priced").status_code == 403  # 6.0 spent
    assert _info(keyed, key)["spend"] == pytest.approx(6.0)


def test_a_rate_limit_lowered_holds_for_the_next_call(keyed: RunningMesh) -> None:
    key = str(_generate(keyed, rpm_limit=100)["key"])
    assert [_chat(keyed, key).status_code for _ in range(2)] == [200, 200]
    assert _update(keyed, {"key": key, "rpm_limit": 2}).status_code == 200
    limited = _chat(keyed, key)
    assert limited.status_code == 429, limited.text


def test_fields_that_only_describe_are_accepted_beside_a_change(keyed: RunningMesh) -> None:
    key = str(_generate(keyed)["key"])
    resp = _update(keyed, {"key": key, "team_id": "t", "user_id": "u", "tpm_limit": 10})
    assert resp.status_code == 200, resp.text
    assert resp.json()["tpm_limit"] == 10


# ------------------------------------------------------------ who may update, and what not


def test_a_virtual_key_may_not_update_itself_or_another(keyed: RunningMesh) -> None:
    """A key raising its own budget or widening its own models is the attack: 403, and
    nothing changes; no key at all is 401."""
    mine = _generate(keyed, models=["echo/x"], max_budget=1.0)
    other = _generate(keyed, models=["echo/x"])
    own = {"authorization": f"Bearer {mine['key']}"}
    for target in (mine["key"], mine["key_id"], other["key"]):
        resp = _update(keyed, {"key": target, "max_budget": 1000, "models": None}, own)
        assert resp.status_code == 403, resp.text
    assert _update(keyed, {"key": mine["key"], "models": None}, {}).status_code == 401
    assert _info(keyed, str(mine["key"]))["models"] == ["echo/x"]
    assert _info(keyed, str(mine["key"]))["max_budget"] == 1.0


def test_an_unknown_or_deleted_key_is_404_as_key_info_says(keyed: RunningMesh) -> None:
    unknown_info = httpx.get(f"{keyed.http_url}/key/info", params={"key": "sk-nope"},
                             timeout=30, headers=ADMIN)
    assert unknown_info.status_code == 404
    shape = {k: v for k, v in unknown_info.json()["error"].items() if k != "message"}
    for key in ("sk-nope", "0123456789abcdef"):
        resp = _update(keyed, {"key": key, "rpm_limit": 1})
        assert resp.status_code == 404, resp.text
        assert {k: v for k, v in resp.json()["error"].items() if k != "message"} == shape
    made = _generate(keyed, key_alias="deleted-then-updated")
    httpx.post(f"{keyed.http_url}/key/delete", json={"keys": [made["key"]]}, timeout=30,
               headers=ADMIN).raise_for_status()
    resp = _update(keyed, {"key": made["key"], "models": None, "key_alias": "back"})
    assert resp.status_code == 404, resp.text
    assert _chat(keyed, str(made["key"])).status_code == 401  # still gone
    with sqlite3.connect(f"file:{_store(keyed)}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM keys WHERE key_id = ?",
                          (made["key_id"],)).fetchone() == (0,)


@pytest.mark.parametrize(("body", "param"), [
    ({}, "key"),
    ({"rpm_limit": 5}, "key"),
    ({"key": ""}, "key"),
    ({"key": 5, "rpm_limit": 5}, "key"),
    ({"key": ["sk-a"], "rpm_limit": 5}, "key"),
    ({"key": "KEY"}, None),  # nothing to change
    ({"key": "KEY", "team_id": "t"}, None),  # only fields that are not kept
    ({"key": "KEY", "models": "all"}, "models"),
    ({"key": "KEY", "models": [1]}, "models"),
    ({"key": "KEY", "models": ["echo/x", ""]}, "models[1]"),
    ({"key": "KEY", "max_budget": "5"}, "max_budget"),
    ({"key": "KEY", "max_budget": -1}, "max_budget"),
    ({"key": "KEY", "max_budget": 0}, "max_budget"),
    ({"key": "KEY", "rpm_limit": 1.5}, "rpm_limit"),
    ({"key": "KEY", "rpm_limit": True}, "rpm_limit"),
    ({"key": "KEY", "tpm_limit": 0}, "tpm_limit"),
    ({"key": "KEY", "tpm_limit": 2**63}, "tpm_limit"),
    ({"key": "KEY", "key_alias": 5}, "key_alias"),
    ({"key": "KEY", "key_alias": "a" * 257}, "key_alias"),
    ({"key": "KEY", "metadata": []}, "metadata"),
    ({"key": "KEY", "metadata": "x"}, "metadata"),
    ({"key": "KEY", "duration": "soon"}, "duration"),
    ({"key": "KEY", "duration": -5}, "duration"),
    ({"key": "KEY", "duration": "500000w"}, "duration"),
    ({"key": "KEY", "max_buget": 5}, "max_buget"),
    ({"key": "KEY", "spend": 0}, "spend"),  # LiteLLM resets spend so: not silently kept
    ({"key": "KEY", "budget_duration": "30d"}, "budget_duration"),
    ({"key": "KEY", "max_parallel_requests": 2}, "max_parallel_requests"),
    ({"key": "KEY", "metadata": {f"k{i}": "v" for i in range(65)}}, "metadata"),
    ({"key": "KEY", "metadata": {"k": "v" * (16 * 1024)}}, "metadata"),
    ({"key": "KEY", "models": [f"m{i}" for i in range(1025)]}, "models"),
])
def test_a_bad_update_is_400_and_changes_nothing(keyed: RunningMesh, body: dict[str, object],
                                                 param: str | None) -> None:
    made = _generate(keyed, models=["echo/x"], rpm_limit=9, metadata={"a": "b"})
    before = _info(keyed, str(made["key"]))
    sent = {k: (made["key"] if v == "KEY" else v) for k, v in body.items()}
    error = _refused(_update(keyed, sent), 400, param)
    assert error["type"] == "invalid_request_error", error
    if param is None:
        assert "nothing to change" in str(error["message"]), error
    assert _info(keyed, str(made["key"])) == before


@pytest.mark.parametrize("raw", [b"[]", b'"sk-x"', b"null", b"{", b""])
def test_a_body_that_is_no_object_is_400(keyed: RunningMesh, raw: bytes) -> None:
    resp = httpx.post(f"{keyed.http_url}/key/update", content=raw, timeout=30,
                      headers={**ADMIN, "content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_an_alias_another_key_has_is_409_naming_it(keyed: RunningMesh) -> None:
    holder = _generate(keyed, key_alias="held-alias")
    other = _generate(keyed, key_alias="other-alias")
    error = _refused(_update(keyed, {"key": other["key"], "key_alias": "held-alias",
                                     "rpm_limit": 3}), 409, "key_alias")
    assert error["code"] == "DuplicateKeyAlias" and error["type"] == "conflict_error"
    assert str(holder["key_id"]) in str(error["message"])
    info = _info(keyed, str(other["key"]))
    assert (info["key_alias"], info["rpm_limit"]) == ("other-alias", None)  # nothing changed
    # Its own alias again is no conflict; a freed alias may be taken.
    assert _update(keyed, {"key": holder["key"], "key_alias": "held-alias"}).status_code == 200
    httpx.post(f"{keyed.http_url}/key/delete", json={"keys": [holder["key"]]}, timeout=30,
               headers=ADMIN).raise_for_status()
    assert _update(keyed, {"key": other["key"], "key_alias": "held-alias"}).status_code == 200


# -------------------------------------------------------- keys stored past today's bounds


def _stored_past_bounds(mesh: RunningMesh, *, metadata: dict[str, str] | None = None,
                        models: list[str] | None = None) -> str:
    """A key as a store from before the bounds could hold it, written straight to the
    file; its secret."""
    secret = f"sk-old-{time.time_ns()}"
    import hashlib

    digest = hashlib.sha256(secret.encode()).hexdigest()
    with sqlite3.connect(_store(mesh)) as db:
        db.execute("INSERT INTO keys VALUES (?, ?, '', ?, NULL, 0, 0, 0, 0, ?, ?)",
                   (digest, digest[:16], json.dumps(models or []),
                    json.dumps(metadata or {}), time.time()))
    return secret


def test_an_update_of_a_key_stored_past_the_bounds_must_bring_it_within(
        keyed: RunningMesh) -> None:
    """A key stored with 100 metadata entries (before metadata was bounded): an update
    leaving its metadata as it is would store a key past the bounds again, so it is
    refused, naming the field and saying to send it; one that sends it within the bounds
    goes through."""
    secret = _stored_past_bounds(keyed, metadata={f"k{i}": "v" for i in range(100)})
    error = _refused(_update(keyed, {"key": secret, "rpm_limit": 5}), 400, "metadata")
    assert "(it has 100)" in str(error["message"]), error
    assert "send metadata" in str(error["message"]), error
    assert _info(keyed, secret)["rpm_limit"] is None
    resp = _update(keyed, {"key": secret, "rpm_limit": 5, "metadata": {"kept": "one"}})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["metadata"], resp.json()["rpm_limit"]) == ({"kept": "one"}, 5)
    many = _stored_past_bounds(keyed, models=[f"echo/m{i}" for i in range(1100)])
    error = _refused(_update(keyed, {"key": many, "max_budget": 2}), 400, "models")
    assert "(it lists 1100)" in str(error["message"]), error
    assert _update(keyed, {"key": many, "models": None}).status_code == 200
    assert _chat(keyed, many, "echo/any").status_code == 200


# ----------------------------------------------------------------------------- over gRPC


def _mask(*paths: str) -> dict[str, object]:
    return {"update_mask": {"paths": list(paths)}}


async def test_grpc_update_applies_the_fields_its_mask_names(keyed: RunningMesh) -> None:
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        made = await client.keys.generate(keys_pb2.GenerateKeyRequest(
            models=["echo/x"], rpm_limit=4, max_budget=2.0, metadata={"a": "b"}))
        # models set in the message but not named in the mask: not applied.
        info = await client.keys.update(keys_pb2.UpdateKeyRequest(
            key=made.key, models=["echo/q"], rpm_limit=0, max_budget=0,
            **_mask("rpm_limit", "max_budget")))  # type: ignore[arg-type]
        assert list(info.models) == ["echo/x"] and dict(info.metadata) == {"a": "b"}
        assert (info.rpm_limit, info.max_budget) == (0, 0)  # cleared: no limit
        again = await client.keys.get(made.info.key_id)
        assert again == info


@pytest.mark.parametrize(("fields", "param"), [
    ({}, "update_mask"),  # nothing named
    (_mask("spend"), "update_mask"),
    (_mask("key"), "update_mask"),
    (_mask("rpm_limit", "frobnicate"), "update_mask"),
    ({"max_budget": float("nan"), **_mask("max_budget")}, "max_budget"),
    ({"max_budget": float("inf"), **_mask("max_budget")}, "max_budget"),
    ({"rpm_limit": -1, **_mask("rpm_limit")}, "rpm_limit"),
    ({"models": ["echo/x", ""], **_mask("models")}, "models[1]"),
    ({"key_alias": "a" * 257, **_mask("key_alias")}, "key_alias"),
    ({"duration": {"seconds": -1}, **_mask("duration")}, "duration"),
    ({"duration": {"seconds": 315_576_000_000}, **_mask("duration")}, "duration"),
    ({"metadata": {f"k{i}": "v" for i in range(65)}, **_mask("metadata")}, "metadata"),
])
async def test_a_bad_grpc_update_is_invalid_argument(keyed: RunningMesh,
                                                     fields: dict[str, object],
                                                     param: str) -> None:
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        made = await client.keys.generate(keys_pb2.GenerateKeyRequest(rpm_limit=9))
        with pytest.raises(RPCError) as info:
            await client.keys.update(keys_pb2.UpdateKeyRequest(key=made.key, **fields))  # type: ignore[arg-type]
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
        assert info.value.param == param
        assert await client.keys.get(made.key) == made.info


async def test_grpc_update_needs_the_master_key(keyed: RunningMesh) -> None:
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        made = await client.keys.generate(keys_pb2.GenerateKeyRequest(models=["echo/x"]))
    async with ScillmClient(keyed.grpc_target, api_key=made.key) as virtual:
        with pytest.raises(RPCError) as denied:
            await virtual.keys.update(keys_pb2.UpdateKeyRequest(
                key=made.key, **_mask("models")))  # type: ignore[arg-type]
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        assert list((await client.keys.get(made.key)).models) == ["echo/x"]
        with pytest.raises(RPCError) as missing:
            await client.keys.update(keys_pb2.UpdateKeyRequest(
                key="sk-nope", rpm_limit=1, **_mask("rpm_limit")))  # type: ignore[arg-type]
        assert missing.value.code == grpc.StatusCode.NOT_FOUND


async def test_of_updates_racing_to_one_alias_one_wins(keyed: RunningMesh) -> None:
    """Eight keys each asked at once to take one new alias: exactly one has it, the others
    are ALREADY_EXISTS naming the winner, and keep their own alias."""
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        made = [await client.keys.generate(keys_pb2.GenerateKeyRequest(key_alias=f"race-{i}"))
                for i in range(8)]
        answers = await asyncio.gather(*(client.keys.update(keys_pb2.UpdateKeyRequest(
            key=m.key, key_alias="race-won", **_mask("key_alias")))  # type: ignore[arg-type]
            for m in made), return_exceptions=True)
        won = [a for a in answers if isinstance(a, keys_pb2.VirtualKey)]
        assert len(won) == 1, answers
        for m, answer in zip(made, answers, strict=True):
            if answer is won[0]:
                continue
            assert isinstance(answer, RPCError), answer
            assert answer.code == grpc.StatusCode.ALREADY_EXISTS
            assert answer.param == "key_alias" and won[0].key_id in answer.message
            assert (await client.keys.get(m.key)).key_alias == m.info.key_alias


# ------------------------------------------------------------------ the store on its own


async def test_two_stores_on_one_file_cannot_both_take_an_alias(tmp_path: Path) -> None:
    """As processes sharing keys.sqlite3 (`--workers`): updates from both, at once, to one
    alias: one store's update wins, the other's is DuplicateKeyAlias."""
    stores = [SQLiteKeyStore(tmp_path / "keys.sqlite3") for _ in range(2)]
    records = [(await s.create(key_alias=f"own-{i}"))[1] for i, s in enumerate(stores)]
    results = await asyncio.gather(*(
        s.update(r.key_hash, key_alias="shared") for s, r in zip(stores, records, strict=True)),
        return_exceptions=True)
    assert sum(isinstance(r, DuplicateKeyAlias) for r in results) == 1, results
    assert sum(getattr(r, "key_alias", None) == "shared" for r in results) == 1, results


async def test_an_update_leaves_the_stored_spend(tmp_path: Path) -> None:
    """The store's update writes the fields it is given and no others: the spend calls
    have added stays (a key re-made with its new fields would start at 0 again); a key
    that is not there is None."""
    store = SQLiteKeyStore(tmp_path / "keys.sqlite3")
    _, record = await store.create(max_budget=10.0)
    await store.add_spend(record.key_hash, 4.0)
    updated = await store.update(record.key_hash, max_budget=20.0)
    assert updated is not None and (updated.spend, updated.max_budget) == (4.0, 20.0)
    assert await store.update("no-such-hash", rpm_limit=1) is None


def test_two_processes_on_one_store_see_an_update_at_once(tmp_path: Path) -> None:
    """Workers share keys.sqlite3 and read it on every call: an update made through one
    holds for the next call through the other."""
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "echo/*", "litellm_params": {"model": "echo/*"}}],
        "general_settings": {"master_key": MASTER}, "litellm_settings": {"cache": False}}))
    meshes = [start_mesh(mesh_settings(tmp_path, config_path=config, services=("completion",)))
              for _ in range(2)]
    try:
        a, b = meshes
        key = str(_generate(a, models=["echo/a"])["key"])
        assert _chat(b, key, "echo/a").status_code == 200
        assert _update(a, {"key": key, "models": ["echo/b"]}).status_code == 200
        assert _chat(b, key, "echo/a").status_code == 403
        assert _chat(b, key, "echo/b").status_code == 200
    finally:
        for m in meshes:
            m.stop()
