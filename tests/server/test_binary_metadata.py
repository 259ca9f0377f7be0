"""Binary gRPC metadata (`-bin` keys: a trace context, a client's own) beside the key.

Authentication decoded every metadata value as UTF-8 before looking at its name: a binary
value that is not UTF-8 (`x-trace-bin: /w==` from grpcurl) failed every call INTERNAL,
with a traceback in the log, before any key was read. Only the key's own entries are read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.keys.v1 import keys_pb2, keys_pb2_grpc
from scillm.server.keys import token_from_metadata

MASTER = "sk-master-binary-metadata"


def test_the_token_is_read_past_binary_values() -> None:
    binary = ("x-trace-bin", b"\xff\x00\xfe")
    assert token_from_metadata([binary, ("authorization", f"Bearer {MASTER}")]) == MASTER
    assert token_from_metadata([binary, ("x-api-key", MASTER)]) == MASTER
    assert token_from_metadata([binary]) is None


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    tmp: Path = tmp_path_factory.mktemp("binary-metadata")
    running = start_mesh(mesh_settings(tmp, master_key=MASTER, services=("completion",)))
    try:
        yield running
    finally:
        running.stop()


def test_a_call_with_binary_metadata_is_answered_as_its_key_says(mesh: RunningMesh) -> None:
    async def call(*metadata: tuple[str, str | bytes]) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(mesh.grpc_target) as channel:
            try:
                await keys_pb2_grpc.KeyServiceStub(channel).ListKeys(
                    keys_pb2.ListKeysRequest(), metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    binary = ("x-trace-bin", b"\xff\x00\xfe")
    assert asyncio.run(call(binary)) == grpc.StatusCode.UNAUTHENTICATED
    assert asyncio.run(call(binary, ("authorization", f"Bearer {MASTER}"))) == \
        grpc.StatusCode.OK
    assert asyncio.run(call(binary, ("authorization", "Bearer sk-nobody"))) == \
        grpc.StatusCode.UNAUTHENTICATED
