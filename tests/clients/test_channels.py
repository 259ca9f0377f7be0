"""How the generated clients' channels are dialled."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from scillm.clients import ScillmClient


async def test_a_lost_target_is_tried_again_within_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC's default reconnect backoff grows to two minutes: a mesh's door answered 503
    for 20-50 s after the service behind it was back, and a replica that came back was
    left out of the round robin as long. Every channel a client dials (the door's to
    each service's target too) tries again after 1 s, then at most every 5 s."""
    dialled: list[dict[str, Any]] = []
    real = grpc.aio.insecure_channel

    def recording(target: str, options: Any = None, **kwargs: Any) -> grpc.aio.Channel:
        dialled.append(dict(options or ()))
        return real(target, options=options, **kwargs)

    monkeypatch.setattr(grpc.aio, "insecure_channel", recording)
    client = ScillmClient("127.0.0.1:1", targets={"prove": "127.0.0.1:2"})
    await client.close()
    assert len(dialled) == 2
    for options in dialled:
        assert options["grpc.initial_reconnect_backoff_ms"] == 1000, options
        assert options["grpc.max_reconnect_backoff_ms"] == 5000, options
