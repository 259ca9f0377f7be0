"""The engine end to end: runs, scoring, errors per run, typed errors, sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

import scillm.server.codeworld as codeworld
from scillm.server.codeworld import (
    CodeWorldEngine,
    CodeWorldSettings,
    Event,
    Item,
    RunRequest,
    RunResult,
    SandboxSettings,
    Status,
    Strategy,
    Summary,
)
from scillm.server.codeworld.errors import (
    InvalidRequest,
    InvalidScorer,
    TooManyItems,
    TooManyStrategies,
)

ITEMS = (Item("double-2", "double it", {"input": 2, "expected": 4}),
         Item("double-5", "double it", {"input": 5, "expected": 10}))
GOOD = Strategy("good", "def solve(task, context):\n    return context['input'] * 2\n")
WRONG = Strategy("wrong", "def solve(task, context):\n    return context['input'] + 1\n")


async def _events(engine: CodeWorldEngine, request: RunRequest) -> list[Event]:
    return [event async for event in engine.run(request)]


def _split(events: list[Event]) -> tuple[list[RunResult], Summary]:
    assert isinstance(events[-1], Summary)
    return [e for e in events if isinstance(e, RunResult)], events[-1]


def test_public_api_is_pinned() -> None:
    assert "CodeWorldEngine" in codeworld.__all__ and "RunRequest" in codeworld.__all__
    assert all(hasattr(codeworld, name) for name in codeworld.__all__)


async def test_every_strategy_on_every_item(engine: CodeWorldEngine) -> None:
    main = Strategy("main", "import json, sys\ndef main():\n"
                            "    print(json.dumps(json.load(sys.stdin) * 2))\n")
    runs, summary = _split(await _events(engine, RunRequest(ITEMS, (GOOD, WRONG, main))))
    assert len(runs) == 6
    assert {(r.strategy, r.correct) for r in runs} == {("good", True), ("wrong", False),
                                                       ("main", True)}
    assert summary.rankings["double-2"][-1].strategy == "wrong"
    assert summary.counts["runs"] == 6 and summary.counts["correct"] == 4
    assert summary.isolation == engine.sandbox.isolation
    assert engine.health()["status"] == "serving"


async def test_a_strategy_never_sees_what_it_is_judged_by(engine: CodeWorldEngine) -> None:
    """`return context["expected"]` was correct on every item (a compiled program read
    it on its stdin the same way): a strategy's context is without it; the scorer's is
    not."""
    peek = Strategy("peek", "def solve(task, context):\n    return context.get('expected')\n")
    seen = Strategy("seen", "def solve(task, context):\n    return sorted(context)\n")
    scorer = ("def score(task, context, outputs, timings):\n"
              "    return {'saw_expected': float('expected' in context)}\n")
    runs, _ = _split(await _events(engine, RunRequest(ITEMS[:1], (GOOD, peek, seen),
                                                      scorer=scorer)))
    by = {r.strategy: r for r in runs}
    assert by["peek"].result is None and by["peek"].correct is False
    assert by["seen"].result == ["input"]
    assert by["good"].correct is True and by["good"].metrics == {"saw_expected": 1.0}


async def test_bad_strategies_become_per_run_errors(engine: CodeWorldEngine) -> None:
    bad = (Strategy("syntax", "def solve(:\n"), Strategy("noentry", "x = 1\n"),
           Strategy("raises", "def solve(t, c):\n    raise ValueError('boom')\n"))
    runs, summary = _split(await _events(engine, RunRequest(ITEMS[:1], (GOOD, *bad))))
    status = {r.strategy: (r.status, r.error_type) for r in runs}
    assert status["syntax"] == (Status.ERROR, "SyntaxError")
    assert status["noentry"] == (Status.ERROR, "EntryMissing")
    assert status["raises"] == (Status.ERROR, "ValueError")
    assert summary.rankings["double-2"][0].strategy == "good"


async def test_an_unknown_language_is_refused_and_an_unavailable_one_reported() -> None:
    settings = CodeWorldSettings(sandbox=SandboxSettings(workers=1, languages=("python",)))
    async with CodeWorldEngine(settings) as engine:
        with pytest.raises(InvalidRequest, match="unknown language 'cobol'"):
            await _events(engine, RunRequest(ITEMS[:1], (Strategy("x", "D", "cobol"),)))
        c = Strategy("c", "int main(void) { return 0; }", "c")
        runs, summary = _split(await _events(engine, RunRequest(ITEMS[:1], (GOOD, c))))
        failed = next(r for r in runs if r.strategy == "c")
        assert (failed.status, failed.error_type) == (Status.ERROR, "LanguageUnavailable")
        assert "not enabled" in failed.error_message
        assert summary.rankings["double-2"][0].strategy == "good"
        listed = {t.language.value: t for t in engine.languages()}
        assert listed["python"].available and not listed["c"].available


async def test_user_scorer_and_its_failures(engine: CodeWorldEngine) -> None:
    scorer = ("def score(task, context, outputs, timings):\n"
              "    return {'exact': float(outputs['result'] == context['expected'])}\n")
    runs, _ = _split(await _events(engine, RunRequest(ITEMS[:1], (GOOD,), scorer=scorer)))
    assert runs[0].metrics == {"exact": 1.0} and runs[0].aggregate == 1.0
    for broken in ("def score(t, c, o, ti):\n    raise RuntimeError('x')\n",
                   "def score(t, c, o, ti):\n    return {'a': 'high'}\n"):
        runs, _ = _split(await _events(engine, RunRequest(ITEMS[:1], (GOOD,), scorer=broken)))
        assert runs[0].score_error and "correctness" in runs[0].metrics
    with pytest.raises(InvalidScorer):
        await _events(engine, RunRequest(ITEMS, (GOOD,), scorer="def score(:"))


async def test_invalid_requests_are_typed(engine: CodeWorldEngine) -> None:
    with pytest.raises(TooManyStrategies):
        many = tuple(Strategy(f"s{i}", GOOD.source) for i in range(100))
        await _events(engine, RunRequest(ITEMS, many))
    with pytest.raises(TooManyItems):
        await _events(engine, RunRequest(tuple(Item(str(i)) for i in range(2000)), (GOOD,)))
    with pytest.raises(InvalidRequest):
        await _events(engine, RunRequest(ITEMS, (GOOD, GOOD)))
    with pytest.raises(InvalidRequest):
        await _events(engine, RunRequest((), (GOOD,)))


async def test_session_plateau_persists(tmp_path: Path) -> None:
    db = str(tmp_path / "sessions.sqlite")
    settings = CodeWorldSettings(sandbox=SandboxSettings(workers=1), session_db=db)
    request = RunRequest(ITEMS[:1], (Strategy("fixed", GOOD.source),), session_id="s1",
                         scorer="def score(t, c, o, ti):\n    return {'m': 0.5}\n")
    infos = []
    for _ in range(3):
        async with CodeWorldEngine(settings) as engine:  # reopened: history from SQLite
            for _ in range(2):
                _, summary = _split(await _events(engine, request))
                infos.append(summary.session)
    assert [i.index for i in infos if i] == list(range(6))
    assert [bool(i and i.plateau) for i in infos] == [False] * 5 + [True]


async def test_sessions_in_redis_are_shared(redis_port: int) -> None:
    from scillm.server.codeworld._sessions import RedisSessionStore

    url = f"redis://127.0.0.1:{redis_port}/1"
    replicas = [RedisSessionStore(url, window=2, threshold=0.05) for _ in range(2)]
    for store in replicas:
        store.open()
    first = await replicas[0].record("s-redis", "t", 0.50)
    second = await replicas[1].record("s-redis", "t", 0.70)
    third = await replicas[0].record("s-redis", "t", 0.61)
    assert (first.index, second.index, third.index) == (0, 1, 2)
    assert second.previous_mean == 0.50 and not second.plateau
    assert third.previous_mean == pytest.approx(0.60) and third.plateau


async def test_sessions_in_redis_whose_names_hold_colons_keep_apart(redis_port: int) -> None:
    """The list was named `<session>:<track>`: ("a:b", "c") and ("a", "b:c") shared one
    history, so one caller's runs moved another's plateau signal."""
    from scillm.server.codeworld._sessions import RedisSessionStore

    store = RedisSessionStore(f"redis://127.0.0.1:{redis_port}/1", window=2)
    store.open()
    first = await store.record("colon:a", "b", 0.5)
    other = await store.record("colon", "a:b", 0.9)
    plain = [await store.record("plain", "t", 0.1), await store.record("plain", "t", 0.2)]
    assert (first.index, other.index) == (0, 0)
    assert [p.index for p in plain] == [0, 1]


async def test_the_session_store_holds_nothing_per_session_in_python() -> None:
    """Every (session, track) ever seen kept all its means in a dict: a caller naming a new
    session per run grew the server without end. Only SQLite holds them now (":memory:"
    here, whose pages tracemalloc does not see), and a long track still plateaus right."""
    import gc
    import tracemalloc

    from scillm.server.codeworld._sessions import SessionStore

    store = SessionStore(window=3, threshold=0.05)
    store.open()
    try:
        await store.record("warm", "t", 0.5)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(3_000):
            await store.record(f"session-{i}-{'x' * 100}", "track", 0.5)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert grown < 200_000, f"{grown} bytes held for 3,000 sessions"
        infos = [await store.record("long", "t", v) for v in (0.1, 0.5, 0.9, 0.9, 0.92, 0.91)]
        assert [i.index for i in infos] == list(range(6))
        assert infos[4].previous_mean == pytest.approx((0.5 + 0.9 + 0.9) / 3)
        assert [i.plateau for i in infos] == [False] * 5 + [True]  # 0.91 vs 0.9067
    finally:
        store.close()


async def test_a_request_of_slow_runs_does_not_keep_the_sandbox_from_another(
        engine: CodeWorldEngine) -> None:
    """The sandbox's workers went to runs first come, first served: a request of many slow
    runs (all queued at once) held every worker for its whole length, and another caller's
    trivial run waited 59 s behind forty sleepers. A freed worker now goes to the request
    holding the fewest: the quick run ends after two of the six slow ones, not all six."""
    import asyncio

    sleeper = Strategy("sleeper", "import time\ndef solve(task, context):\n"
                                  "    time.sleep(0.5)\n    return 1\n")
    slow = RunRequest(tuple(Item(f"s{i}", "", {"input": i}) for i in range(6)), (sleeper,),
                      concurrency=6)
    finished: list[str] = []

    async def run(request: RunRequest) -> None:
        async for event in engine.run(request):
            if isinstance(event, RunResult):
                finished.append(event.task_id)

    first = asyncio.create_task(run(slow))
    while engine.sandbox.busy < engine.sandbox.settings.workers:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    await run(RunRequest((Item("quick", "", {"input": 1}),), (GOOD,)))
    await first
    assert finished.index("quick") <= 2, finished
