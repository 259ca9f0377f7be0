"""LiteLLM-style helpers against a real mesh: completion, acompletion, parallel fan-out."""

from __future__ import annotations

import asyncio

import pytest
from meshutil import RunningMesh

from scillm.clients import RPCError, acompletion, completion, parallel_acompletions


def test_completion_returns_openai_shape(mesh: RunningMesh) -> None:
    reply = completion("echo/x", [{"role": "user", "content": "hello there"}],
                       target=mesh.grpc_target)
    assert reply["choices"][0]["message"]["content"] == "hello there"
    assert reply["scillm"]["routing"]["provider"] == "echo"


async def test_acompletion_streams_chunks(mesh: RunningMesh) -> None:
    stream = await acompletion("echo/x", [{"role": "user", "content": "a b c"}], stream=True,
                               target=mesh.grpc_target)
    chunks = [c async for c in stream]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "a b c" and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_parallel_fan_out_keeps_order_and_exceptions(mesh: RunningMesh) -> None:
    requests = [{"model": "echo/x", "messages": [{"role": "user", "content": f"n{i}"}]}
                for i in range(20)]
    requests[5] = {"model": "nosuch/x", "messages": [{"role": "user", "content": "x"}]}
    results = await parallel_acompletions(requests, concurrency=4, target=mesh.grpc_target)
    assert isinstance(results[5], RPCError)
    assert [r["choices"][0]["message"]["content"] for i, r in enumerate(results) if i != 5] \
        == [f"n{i}" for i in range(20) if i != 5]
    unordered = await parallel_acompletions(requests[:5], preserve_order=False,
                                            target=mesh.grpc_target)
    assert sorted(r["choices"][0]["message"]["content"] for r in unordered) == \
        [f"n{i}" for i in range(5)]
    with pytest.raises(RPCError):
        await parallel_acompletions(requests[4:7], return_exceptions=False,
                                    target=mesh.grpc_target)
    with pytest.raises(ValueError):
        await parallel_acompletions(requests, concurrency=0)
    await asyncio.sleep(0)
