"""Typed errors for malformed batches, each naming its item."""

from __future__ import annotations

from pathlib import Path

import pytest

from scillm.server.prove import (
    BatchTooLarge,
    EngineClosed,
    InvalidBatch,
    InvalidObligation,
    Limits,
    Obligation,
    ProveEngine,
    ProveError,
    ProveSettings,
    SourceTooLarge,
)

OK = Obligation("ok", "smt", statement="true")


@pytest.fixture
async def small(tmp_path: Path) -> ProveEngine:
    settings = ProveSettings(max_batch_items=3, max_source_bytes=100, scratch_dir=tmp_path)
    engine = ProveEngine(settings)
    await engine.start()
    return engine


async def test_empty_batch(small: ProveEngine) -> None:
    with pytest.raises(InvalidBatch):
        small.run_batch([])


async def test_batch_too_large(small: ProveEngine) -> None:
    items = [Obligation(f"i{i}", "smt", statement="true") for i in range(4)]
    with pytest.raises(BatchTooLarge) as info:
        small.run_batch(items)
    assert (info.value.size, info.value.limit) == (4, 3)


@pytest.mark.parametrize(("item", "param"), [
    (Obligation("bad", "isabelle", statement="x"), "backend"),
    (Obligation("bad", "smt", statement="(> x 0)\x00"), "statement"),
    (Obligation("bad", "smt", statement="(> x \ud800 0)"), "statement"),
    (Obligation("bad", "smt"), "statement"),
    (Obligation("bad", "smt", statement="true", imports=("Lia",)), "imports"),
    # An import is written into the checked file: it must be a module's name, not Coq.
    (Obligation("bad", "coq", statement="Theorem t : False.", proof="Proof. exact I. Qed.",
                imports=("Arith. Notation False := True",)), "imports[0]"),
    (Obligation("bad", "coq", statement="T.", imports=("Arith", "")), "imports[1]"),
    (Obligation("bad", "coq", statement="T.", imports=("Arith\nAxiom a : False",)),
     "imports[0]"),
    (Obligation("bad", "coq", statement="T.", imports=("Arith (* x *)",)), "imports[0]"),
    (Obligation("bad", "smt", statement="true", limits=Limits(timeout_s=0)), "limits.timeout_s"),
    (Obligation("bad", "smt", statement="true", limits=Limits(memory_mb=1)), "limits.memory_mb"),
    (Obligation("bad", "smt", statement="true", limits=Limits(timeout_s=1e9)),
     "limits.timeout_s"),
    (Obligation("bad", "smt", statement="true", limits=Limits(memory_mb=10**7)),
     "limits.memory_mb"),
    (Obligation("", "smt", statement="true"), "item_id"),
])
async def test_invalid_items_are_named(small: ProveEngine, item: Obligation, param: str) -> None:
    with pytest.raises(InvalidObligation) as info:
        small.run_batch([OK, item])
    assert info.value.param == param
    assert info.value.item_id == (item.item_id or "#1")


async def test_duplicate_ids(small: ProveEngine) -> None:
    with pytest.raises(InvalidObligation, match="twice"):
        small.run_batch([OK, OK])


async def test_oversized_source(small: ProveEngine) -> None:
    big = Obligation("big", "smt", statement="(> x 0)", preamble="; " + "x" * 200)
    with pytest.raises(SourceTooLarge) as info:
        small.run_batch([OK, big])
    assert info.value.item_id == "big" and info.value.limit == 100
    assert isinstance(info.value, ProveError)


async def test_engine_must_be_started(tmp_path: Path) -> None:
    engine = ProveEngine(ProveSettings(scratch_dir=tmp_path))
    with pytest.raises(EngineClosed):
        engine.run_batch([OK])
    await engine.start()
    await engine.close()
    with pytest.raises(EngineClosed):
        engine.backends()
