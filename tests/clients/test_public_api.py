"""The curated public API of scillm.clients, pinned: a change here is a change for users."""

from __future__ import annotations

import scillm.clients


def test_clients_public_api() -> None:
    assert sorted(scillm.clients.__all__) == [
        "AgentClient", "BatchResult", "Budget", "BudgetExceeded", "CodeWorldClient",
        "CompletionClient", "InvalidRequestError", "KeyClient", "ModelCatalog",
        "ModelListError", "ModelNotAvailable", "ModelResolution", "ProveClient", "RPCError",
        "ScillmClient", "ScillmError", "SyncScillmClient", "TlsConfig", "acompletion",
        "channel_target", "completion", "openai_wire", "parallel_acompletions",
        "parallel_as_completed", "resolve_model",
    ]
    for name in scillm.clients.__all__:
        assert getattr(scillm.clients, name) is not None
