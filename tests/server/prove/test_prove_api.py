"""The curated public API of scillm.server.prove, pinned."""

from __future__ import annotations

import scillm.server.prove as prove


def test_public_names() -> None:
    assert sorted(prove.__all__) == [
        "Attempt", "Backend", "BackendInfo", "BackendUnavailable", "BatchRun",
        "BatchSummary", "BatchTooLarge", "CheckOutcome", "Complete", "Diagnostic",
        "EngineClosed", "FormalizeOptions", "FormalizeUnavailable", "InvalidBatch",
        "InvalidObligation", "ItemResult", "Limits", "MemoryCache", "Obligation",
        "ProveEngine", "ProveError", "ProveSettings", "SolverUnavailable", "SolverVerdict",
        "SourceTooLarge", "Verdict",
        "VerdictCache", "cache_key", "extract_code", "parse_lean_messages",
    ]
    for name in prove.__all__:
        assert getattr(prove, name) is not None


def test_error_hierarchy() -> None:
    for name in ("InvalidObligation", "InvalidBatch", "BackendUnavailable",
                 "FormalizeUnavailable", "EngineClosed"):
        assert issubclass(getattr(prove, name), prove.ProveError)
    assert issubclass(prove.SourceTooLarge, prove.InvalidObligation)
    assert issubclass(prove.BatchTooLarge, prove.InvalidBatch)
    assert issubclass(prove.SolverUnavailable, prove.BackendUnavailable)
