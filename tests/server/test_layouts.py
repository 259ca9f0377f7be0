"""Layouts: a process reaches each service where its settings say, so any split serves
every door. Meshes here run in threads (no tracing: the in-process channel is in play);
five real processes with tracing are in tests/test_split_layout.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from meshutil import RunningMesh, ServedProcess, mesh_settings, start_mesh

from scillm.clients import ScillmClient
from scillm.prove.v1 import prove_pb2, prove_pb2_grpc
from scillm.server.manifests import open_run_store
from scillm.server.settings import Settings

ECHO = [{"role": "user", "content": "one two three"}]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningMesh,
                                                                       RunningMesh]]:
    """Completion alone (gRPC only), and a shim-only process pointing at it."""
    tmp = tmp_path_factory.mktemp("layout")
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    completion = start_mesh(mesh_settings(tmp / "a", services=("completion",),
                                          http_enabled=False))
    try:
        shim = start_mesh(mesh_settings(tmp / "b", services=(),
                                        completion_target=completion.grpc_target))
        try:
            yield completion, shim
        finally:
            shim.stop()
    finally:
        completion.stop()


def test_a_shim_only_process_serves_completions_from_elsewhere(
        split: tuple[RunningMesh, RunningMesh]) -> None:
    _, shim = split
    sdk = openai.OpenAI(base_url=f"{shim.http_url}/v1", api_key="unused", max_retries=0)
    reply = sdk.chat.completions.create(model="echo/x", messages=ECHO)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "one two three"
    stream = sdk.chat.completions.create(model="echo/x", messages=ECHO,  # type: ignore[arg-type]
                                         stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        "one two three"
    assert "echo/*" in [m.id for m in sdk.models.list().data]
    ready = httpx.get(f"{shim.http_url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["services"] == {"scillm.completion.v1.CompletionService": "SERVING"}


def test_a_door_whose_service_is_nowhere_says_which_setting_reaches_it(
        split: tuple[RunningMesh, RunningMesh]) -> None:
    _, shim = split
    for model, setting in (("codeworld", "SCILLM_CODEWORLD_TARGET"),
                           ("certainly/smt", "SCILLM_PROVE_TARGET"),
                           ("agent/echo/x", "SCILLM_AGENT_TARGET")):
        reply = httpx.post(f"{shim.http_url}/v1/chat/completions", timeout=30, json={
            "model": model, "messages": ECHO, "items": [{"statement": "(= 1 1)"}],
            "provider": {"args": {"strategies": [{"name": "s", "source": "x = 1"}]}}})
        assert reply.status_code == 501, reply.text
        message = reply.json()["error"]["message"]
        assert setting in message and "not served by this process" in message, message


def test_a_grpc_caller_of_an_absent_service_is_told_where_it_lives(
        split: tuple[RunningMesh, RunningMesh]) -> None:
    completion, _ = split

    async def call() -> list[grpc.aio.AioRpcError]:
        errors = []
        async with grpc.aio.insecure_channel(completion.grpc_target) as channel:
            stub = prove_pb2_grpc.ProveServiceStub(channel)
            for attempt in (stub.ListBackends(prove_pb2.ListBackendsRequest(), timeout=10),
                            _drain(stub.Prove(prove_pb2.ProveRequest(), timeout=10))):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await attempt
                errors.append(info.value)
        return errors

    import asyncio

    for error in asyncio.run(call()):
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "scillm.prove.v1.ProveService is not served by this process (it serves " \
               "completion)" in (error.details() or "")
        assert "SCILLM_PROVE_TARGET" in (error.details() or "")


def test_a_shim_says_where_the_services_and_keys_it_fronts_live(
        split: tuple[RunningMesh, RunningMesh]) -> None:
    """The shim fronts Completion at its target: a gRPC call to the shim's port was told
    to set the target that was already set; and its KeyService made keys in its own store,
    which no service checking a key read (each such key was a 401 everywhere)."""
    from scillm.completion.v1 import completion_pb2, completion_pb2_grpc
    from scillm.keys.v1 import keys_pb2, keys_pb2_grpc

    completion, shim = split

    async def call() -> list[grpc.aio.AioRpcError]:
        errors = []
        async with grpc.aio.insecure_channel(shim.grpc_target) as channel:
            for attempt in (
                    completion_pb2_grpc.CompletionServiceStub(channel).ListModels(
                        completion_pb2.ListModelsRequest(), timeout=10),
                    keys_pb2_grpc.KeyServiceStub(channel).GenerateKey(
                        keys_pb2.GenerateKeyRequest(), timeout=10)):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await attempt
                errors.append(info.value)
        return errors

    import asyncio

    listed, keys = asyncio.run(call())
    assert listed.code() == grpc.StatusCode.UNIMPLEMENTED
    assert f"served at {completion.grpc_target}" in (listed.details() or ""), listed.details()
    assert keys.code() == grpc.StatusCode.UNIMPLEMENTED
    assert completion.grpc_target in (keys.details() or ""), keys.details()
    assert "SCILLM_STORE_URL" in (keys.details() or "")


async def _drain(call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
    async for _ in call:
        pass


def test_each_service_gets_the_channel_its_target_says(
        split: tuple[RunningMesh, RunningMesh], mesh: RunningMesh) -> None:
    _, shim = split
    client = shim.mesh.shim_client
    assert client is not None and shim.mesh.local_channel is not None
    # Completion and the keys (which follow it) are dialed; the rest is this process.
    assert client.channels["completion"] is client.channels["keys"]
    assert client.channels["completion"] is not shim.mesh.local_channel
    for service in ("prove", "codeworld", "agent"):
        assert client.channels[service] is shim.mesh.local_channel
    # One process with everything keeps the in-process fast path for every service.
    whole = mesh.mesh.shim_client
    assert whole is not None
    assert all(c is mesh.mesh.local_channel for c in whole.channels.values())


def test_client_targets_are_checked_and_shared() -> None:
    with pytest.raises(ValueError, match="unknown service"):
        ScillmClient("127.0.0.1:1", targets={"completions": "127.0.0.1:2"})

    async def build() -> ScillmClient:
        return ScillmClient("127.0.0.1:1", targets={"prove": "127.0.0.1:2",
                                                    "agent": " 127.0.0.1:2 ", "keys": ""})

    import asyncio

    async def check() -> None:
        client = await build()
        try:
            assert client.channels["prove"] is client.channels["agent"]
            assert client.channels["prove"] is not client.channel
            assert client.channels["keys"] is client.channel
        finally:
            await client.close()

    asyncio.run(check())


def test_settings_of_a_split() -> None:
    settings = Settings.from_env({"SCILLM_SERVICES": "none",
                                  "SCILLM_COMPLETION_TARGET": "dns:///completion:50051",
                                  "SCILLM_PROVE_TARGET": "10.0.0.1:50051,10.0.0.2:50051"})
    assert settings.services == ()
    assert settings.targets() == {"completion": "dns:///completion:50051",
                                  "prove": "10.0.0.1:50051,10.0.0.2:50051",
                                  "codeworld": "", "agent": "", "keys":
                                  "dns:///completion:50051"}
    assert Settings(keys_target="k:1", completion_target="c:1").targets()["keys"] == "k:1"
    for bad in ("completion", "host:", "a:1,b", "a:99999"):
        with pytest.raises(ValueError, match="agent_target"):
            Settings.from_env({}, agent_target=bad)
    with pytest.raises(ValueError, match="nothing to serve"):
        Settings.from_env({}, services=(), http_enabled=False)


def test_serve_refuses_a_bad_layout(tmp_path: Path) -> None:
    import subprocess
    import sys

    scillm = str(Path(sys.executable).parent / "scillm")
    for args, said in ((["--service", "none", "--service", "prove"], "cannot be combined"),
                       (["--service", "none", "--no-http"], "nothing to serve"),
                       (["--completion-target", "nowhere"], "completion_target")):
        out = subprocess.run([scillm, "serve", *args], capture_output=True, text=True,
                             timeout=60, check=False)
        assert out.returncode == 2 and said in out.stderr, (args, out.stderr)


def _stored_completions(store: Path) -> int:
    runs = open_run_store(store)
    try:
        return len(runs.list(service="completion", limit=-1))
    finally:
        runs.close()


def test_a_completion_target_list_is_balanced_round_robin_and_a_dns_name_is_dialed(
        tmp_path: Path) -> None:
    """README: SCILLM_COMPLETION_TARGET may be `host:port`, a comma list, or
    `dns:///name:port`, balanced round-robin. Two real completion processes behind one
    shim-only process: every one of 10 calls is served, by each backend in turn; a shim
    whose target is `dns:///localhost:<port>` reaches that process."""
    started: list[ServedProcess] = []

    def serve(name: str, *args: str, **env: str) -> ServedProcess:
        (tmp_path / name).mkdir()
        proc = ServedProcess(name, ["--grpc-port", "0", *args], {
            **os.environ, "SCILLM_STORE_PATH": str(tmp_path / name / "runs.sqlite3"),
            "SCILLM_STORE_COMPLETIONS": "true", **env}, tmp_path / f"{name}.log")
        started.append(proc)
        return proc.wait_ready()

    try:
        backends = [serve(name, "--service", "completion", "--no-http") for name in "ab"]
        listed = serve("shim", "--service", "none", "--http-port", "0",
                       SCILLM_COMPLETION_TARGET=",".join(b.grpc_target for b in backends))
        sdk = openai.OpenAI(base_url=f"{listed.http_url}/v1", api_key="unused",
                            max_retries=0)
        stores = [tmp_path / name / "runs.sqlite3" for name in "ab"]

        def call() -> None:
            reply = sdk.chat.completions.create(model="echo/x", messages=ECHO)  # type: ignore[arg-type]
            assert reply.choices[0].message.content == "one two three"

        def served(total: int) -> list[int]:
            """Calls stored by each backend, once `total` are (a manifest is stored as
            its call ends), or after 30 s."""
            deadline = time.monotonic() + 30
            while sum(counts := [_stored_completions(s) for s in stores]) < total \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            return counts

        # round_robin uses a backend once its connection is ready: the first calls may
        # all go to whichever connected first. Then calls go to each in turn.
        made = 0
        while min(served(made)) == 0 and made < 100:
            call()
            made += 1
        before = served(made)
        assert min(before) > 0, before
        for _ in range(10):
            call()
        after = served(made + 10)
        split = [n - m for n, m in zip(after, before, strict=True)]
        assert sum(split) == 10 and min(split) >= 4, split

        port = backends[0].grpc_target.rsplit(":", 1)[1]
        named = serve("dns", "--service", "none", "--http-port", "0",
                      SCILLM_COMPLETION_TARGET=f"dns:///localhost:{port}")
        before = _stored_completions(stores[0])
        dns_sdk = openai.OpenAI(base_url=f"{named.http_url}/v1", api_key="unused",
                                max_retries=0)
        reply = dns_sdk.chat.completions.create(model="echo/x", messages=ECHO)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == "one two three"
        deadline = time.monotonic() + 30
        while _stored_completions(stores[0]) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _stored_completions(stores[0]) == before + 1
    finally:
        for proc in started:
            proc.stop()
