"""Routing strategies, cooldowns and backoff with an injected clock and RNG."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from completion_upstream import FakeTime

from scillm.server.completion import (
    CompletionSettings,
    InvalidRequest,
    RateLimited,
    UpstreamError,
)
from scillm.server.completion._retry import backoff_delay, is_retryable, parse_retry_after
from scillm.server.completion._router import Router


def router(strategy: str, *params: dict[str, Any], clock: FakeTime | None = None,
           **rs: Any) -> Router:
    s = CompletionSettings.from_mapping({"model_list": [
        {"model_name": "m", "litellm_params": {"model": f"echo/d{i}", **p}}
        for i, p in enumerate(params)], "router_settings": {"routing_strategy": strategy, **rs}})
    t = clock or FakeTime()
    return Router(s.model_list, s.router, random.Random(1), t.clock)


def test_simple_shuffle_is_weighted() -> None:
    r = router("simple-shuffle", {"weight": 9}, {"weight": 1})
    group = r.group("m")
    picks = Counter(r.pick(group).settings.id for _ in range(1000))
    assert 850 < picks["m#0"] < 950


def test_least_busy() -> None:
    r = router("least-busy", {}, {}, {})
    group = r.group("m")
    first = r.pick(group)
    r.begin(first)
    second = r.pick(group)
    r.begin(second)
    assert second is not first and r.pick(group) not in (first, second)


def test_latency_based() -> None:
    r = router("latency-based-routing", {}, {})
    group = r.group("m")
    a, b = group.deployments
    for state, latency in ((a, 0.5), (b, 0.1)):
        r.begin(state)
        r.succeeded(state, latency, 0)
    assert all(r.pick(group) is b for _ in range(10))


def test_usage_based_respects_rpm_tpm() -> None:
    t = FakeTime()
    r = router("usage-based-routing", {"rpm": 2}, {"tpm": 100}, clock=t)
    group = r.group("m")
    a, b = group.deployments
    r.begin(b)
    r.succeeded(b, 0.1, 100)  # b is at its tpm
    for _ in range(2):
        assert r.pick(group) is a
        r.begin(a)
        r.succeeded(a, 0.1, 1)
    with pytest.raises(RateLimited) as info:
        r.pick(group)
    assert 0 < (info.value.retry_after_s or 0) <= 60
    t.now += 61
    assert r.pick(group) in (a, b)


def test_cooldown_after_allowed_fails() -> None:
    t = FakeTime()
    r = router("simple-shuffle", {}, {}, clock=t, allowed_fails=1, cooldown_time=10)
    group = r.group("m")
    a, b = group.deployments
    for _ in range(2):
        r.begin(a)
        r.failed(a, UpstreamError("x", status=500))
    assert a.cooldown_until == t.now + 10
    assert all(r.pick(group) is b for _ in range(10))
    r.begin(b)
    r.failed(b, UpstreamError("x", status=429))  # a 429 cools down at once
    with pytest.raises(RateLimited):
        r.pick(group)
    t.now += 11
    assert r.pick(group) is a


def test_wildcard_groups() -> None:
    s = CompletionSettings.default()
    r = Router(s.model_list, s.router, random.Random(0), FakeTime().clock)
    group = r.group("echo/some-model")
    assert group.upstream_model(group.deployments[0].settings) == "some-model"


@pytest.mark.parametrize("name", ["echo/*", "echo/", "echo/a*b"])
def test_a_wildcards_pattern_is_no_model_to_call(name: str) -> None:
    """`GET /v1/models` lists `echo/*`; a client calling the name it listed sent the
    upstream the model "*" (or ""). The pattern names the models it serves."""
    s = CompletionSettings.default()
    r = Router(s.model_list, s.router, random.Random(0), FakeTime().clock)
    with pytest.raises(InvalidRequest) as info:
        r.group(name)
    assert info.value.param == "model" and "echo/<name>" in str(info.value), info.value


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"},
                             now=lambda: 1445412470.0) == 10.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_full_jitter_backoff() -> None:
    rng = random.Random(3)
    delays = [backoff_delay(n, rng, base_s=1, max_s=8, retry_after_s=None) for n in range(6)]
    assert all(0 <= d <= min(8, 2 ** n) for n, d in enumerate(delays))
    assert backoff_delay(0, rng, base_s=1, max_s=8, retry_after_s=5) >= 5
    assert backoff_delay(0, rng, base_s=1, max_s=8, retry_after_s=None, min_s=2) >= 2


@pytest.mark.parametrize("status, expected", [(408, True), (409, True), (429, True),
                                              (500, True), (503, True), (None, True),
                                              (400, False), (404, False)])
def test_retryable_statuses(status: int | None, expected: bool) -> None:
    assert is_retryable(UpstreamError("x", status=status)) is expected


def test_pick_passes_over_tried_deployments_while_another_is_ready() -> None:
    t = FakeTime()
    r = router("simple-shuffle", {"weight": 9}, {"weight": 1}, clock=t, cooldown_time=10)
    group = r.group("m")
    a, b = group.deployments
    assert all(r.pick(group, [a]) is b for _ in range(50))
    assert r.untried_ready(group, [a]) and not r.untried_ready(group, [a, b])
    b.cooldown_until = t.now + 5  # the untried one cools down: a tried one is better than none
    assert r.pick(group, [a]) is a and not r.untried_ready(group, [a])
