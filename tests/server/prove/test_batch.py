"""Batches: mixed backends, limits, cancellation without orphans, the cache."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from scillm.server.prove import Limits, Obligation, ProveEngine, Verdict

HARD = ("(forall ((a Int) (b Int) (c Int)) (=> (and (> a 0) (> b 0) (> c 0)) "
        "(not (= (+ (* a a a) (* b b b)) (* c c c)))))")
SPIN = ("Fixpoint spin (n : nat) (b : bool) : bool := "
        "match n with 0 => b | S m => spin m (negb b) end.\n"
        "Definition r := Eval vm_compute in spin 1000000 (spin 1000000 true).\n"
        "Fixpoint s2 (n : nat) (b : bool) : bool := "
        "match n with 0 => b | S m => s2 m (spin 100000 b) end.\n"
        "Definition r2 := Eval vm_compute in s2 100000 true.\nTheorem t : True.")
HUNGRY = "Definition big := Eval vm_compute in List.repeat 0 100000000.\nTheorem t : True."


def mixed(n: int) -> tuple[list[Obligation], dict[str, Verdict]]:
    items: list[Obligation] = []
    expected: dict[str, Verdict] = {}
    for i in range(n):
        kind = i % 5
        if kind == 0:
            ob = Obligation(f"s{i}", "smt", preamble="(declare-const x Int)",
                            statement=f"(> (+ x {i + 1}) x)")
            want = Verdict.PROVED
        elif kind == 1:
            ob = Obligation(f"s{i}", "smt", preamble="(declare-const x Int)",
                            statement=f"(> x {i})")
            want = Verdict.REFUTED
        elif kind == 2:
            ob = Obligation(f"c{i}", "coq", statement=f"Theorem t{i} : {i} + 0 = {i}.",
                            proof="Proof. reflexivity. Qed.")
            want = Verdict.PROVED
        elif kind == 3:
            ob = Obligation(f"c{i}", "coq", statement=f"Theorem t{i} : {i} = {i + 1}.",
                            proof="Proof. admit. Qed.")
            want = Verdict.FAILED
        else:
            ob = Obligation(f"c{i}", "coq", imports=("Lia",),
                            statement=f"Lemma l{i} : forall n, n + {i} >= {i}.",
                            proof="Proof. intros. lia. Qed.")
            want = Verdict.PROVED
        items.append(ob)
        expected[ob.item_id] = want
    return items, expected


async def test_mixed_batch_of_100(engine: ProveEngine) -> None:
    items, expected = mixed(100)
    run = engine.run_batch(items, defaults=Limits(timeout_s=20))
    got = {r.item_id: r.verdict async for r in run}
    assert got == expected
    summary = run.summary
    assert summary.total == summary.completed == 100
    assert summary.counts == {**dict.fromkeys(Verdict, 0), **Counter(expected.values())}


async def test_memory_hungry_item_is_killed_others_unaffected(engine: ProveEngine) -> None:
    items = [
        Obligation("hungry", "coq", statement=HUNGRY, proof="Proof. exact I. Qed.",
                   limits=Limits(timeout_s=20, memory_mb=600)),
        *[Obligation(f"ok{i}", "coq", statement=f"Theorem t : {i} = {i}.",
                     proof="Proof. reflexivity. Qed.") for i in range(4)],
        Obligation("smt", "smt", preamble="(declare-const x Int)", statement="(> (+ x 1) x)"),
    ]
    results = {r.item_id: r async for r in engine.run_batch(items)}
    assert results["hungry"].verdict is Verdict.ERROR
    assert "memory" in results["hungry"].message and "600 MiB" in results["hungry"].message
    assert all(r.verdict is Verdict.PROVED for k, r in results.items() if k != "hungry")


async def test_cancelling_the_consumer_kills_running_provers(
        child_pids: Callable[[], set[int]], engine: ProveEngine) -> None:
    items = [Obligation(f"h{i}", "smt", statement=HARD) for i in range(3)] + \
            [Obligation(f"c{i}", "coq", statement=SPIN, proof="Proof. exact I. Qed.")
             for i in range(3)]
    run = engine.run_batch(items, defaults=Limits(timeout_s=60))
    before = child_pids()

    async def consume() -> list[str]:
        return [r.item_id async for r in run]

    task = asyncio.create_task(consume())
    for _ in range(200):  # until all four provers are busy
        await asyncio.sleep(0.05)
        if len(child_pids() - before) >= 4:
            break
    assert len(child_pids() - before) >= 4
    await asyncio.sleep(1.0)  # workers started and checking
    assert run.summary.completed == 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert run.summary.completed == 0
    assert child_pids() - before == set()  # every prover was in flight, so all were killed
    # the pools replace what was killed
    again = await engine.check(Obligation("a", "smt", preamble="(declare-const x Int)",
                                          statement="(> (+ x 1) x)"))
    assert again.verdict is Verdict.PROVED


async def test_leaving_the_run_early_kills_the_rest(
        child_pids: Callable[[], set[int]], engine: ProveEngine) -> None:
    fast = Obligation("fast", "smt", preamble="(declare-const x Int)", statement="(> (+ x 1) x)")
    items = [fast, *[Obligation(f"h{i}", "smt", statement=HARD) for i in range(2)]]
    before = child_pids()
    async with engine.run_batch(items, defaults=Limits(timeout_s=60)) as run:
        async for result in run:
            assert result.item_id == "fast"
            break
    await asyncio.sleep(0)
    assert len(child_pids() - before) <= 1  # at most the idle worker that served "fast"


async def test_close_leaves_no_process(
        child_pids: Callable[[], set[int]], engine: ProveEngine) -> None:
    items, _ = mixed(10)
    _ = [r async for r in engine.run_batch(items)]
    assert child_pids()
    await engine.close()
    assert child_pids() == set()


async def test_cache_hits(engine: ProveEngine) -> None:
    ob = Obligation("a", "coq", statement="Theorem t : 2 = 2.", proof="Proof. reflexivity. Qed.")
    first = await engine.check(ob)
    assert not first.cached
    run = engine.run_batch([ob, Obligation("b", "coq", statement=ob.statement, proof=ob.proof)])
    results = [r async for r in run]
    assert all(r.cached and r.verdict is Verdict.PROVED for r in results)
    assert run.summary.cache_hits == 2
    timeout = Obligation("h", "smt", statement=HARD)
    for _ in range(2):  # a TIMEOUT is not remembered
        again = await engine.check(timeout, limits=Limits(timeout_s=0.2))
        assert again.verdict is Verdict.TIMEOUT and not again.cached


async def test_a_batch_of_slow_items_does_not_keep_the_provers_from_another_caller(
        engine: ProveEngine) -> None:
    """The pool's two z3 workers were handed out first come, first served: a batch of six
    items that each run to their time limit (all queued at once) kept both for its whole
    length, and another caller's trivial item waited behind all six. A freed worker now
    goes to the batch holding the fewest: the trivial item is answered after the slow
    batch's first two items, not its last."""
    slow = [Obligation(f"slow{i}", "smt", statement=HARD, limits=Limits(timeout_s=1))
            for i in range(6)]
    finished: list[str] = []

    async def batch(items: list[Obligation]) -> None:
        async with engine.run_batch(items, no_cache=True) as run:
            async for result in run:
                finished.append(result.item_id)

    first = asyncio.create_task(batch(slow))
    pool = engine.backend("smt").pool  # type: ignore[attr-defined]
    while pool.leased < pool.size:  # noqa: ASYNC110  (the slow batch holds both workers)
        await asyncio.sleep(0.005)
    await batch([Obligation("quick", "smt", preamble="(declare-const x Int)",
                            statement="(> (+ x 1) x)")])
    await first
    assert finished.index("quick") <= 2, finished
