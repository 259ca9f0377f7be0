"""Deployment selection: strategies, in-flight and usage accounting, cooldowns.

The router only chooses; the engine calls upstreams and reports back with `begin`,
`succeeded` and `failed`. Time comes from an injected clock, randomness from an
injected `random.Random`, so tests are deterministic.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from ..names import MAX_NAME_CHARS, serving_pattern
from ._settings import DeploymentSettings, RouterSettings
from .errors import CompletionError, InvalidRequest, ModelNotFound, RateLimited, UpstreamError

__all__ = ["DeploymentState", "Group", "Router"]

_EWMA = 0.3  # weight of the newest latency sample
_WINDOW_S = 60.0  # rpm/tpm and allowed_fails window


@dataclass(eq=False)
class DeploymentState:
    """Live counters of one deployment."""

    settings: DeploymentSettings
    in_flight: int = 0
    latency_s: float | None = None
    cooldown_until: float = 0.0
    fails: list[float] = field(default_factory=list)
    window_start: float = 0.0
    window_requests: int = 0
    window_tokens: int = 0


@dataclass(frozen=True)
class Group:
    """The deployments serving one requested model name."""

    name: str
    deployments: tuple[DeploymentState, ...]
    wildcard_part: str | None = None

    def upstream_model(self, state: DeploymentSettings) -> str:
        """The model name sent upstream: the provider prefix stripped, `*` filled in."""
        model = state.model
        if self.wildcard_part is not None:
            model = model.replace("*", self.wildcard_part)
        head, sep, rest = model.partition("/")
        return rest if sep else head


class Router:
    """Chooses a deployment per call with the configured strategy."""

    def __init__(self, deployments: Sequence[DeploymentSettings], settings: RouterSettings,
                 rng: random.Random, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._rng = rng
        self._clock = clock
        self._exact: dict[str, list[DeploymentState]] = {}
        self._wild: list[tuple[str, list[DeploymentState]]] = []
        self._groups: dict[str, Group] = {}
        for dep in deployments:
            state = DeploymentState(dep)
            if "*" in dep.model_name:
                for pattern, states in self._wild:
                    if pattern == dep.model_name:
                        states.append(state)
                        break
                else:
                    self._wild.append((dep.model_name, [state]))
            else:
                self._exact.setdefault(dep.model_name, []).append(state)
        self._pick = {
            "simple-shuffle": self._simple_shuffle,
            "least-busy": self._least_busy,
            "latency-based-routing": self._lowest_latency,
            "usage-based-routing": self._lowest_usage,
        }[settings.routing_strategy]

    def model_names(self) -> list[str]:
        """Configured model names, wildcards included, in config order."""
        return [*self._exact, *(p for p, _ in self._wild)]

    def pattern(self, name: str) -> int | None:
        """How many deployments a wildcard pattern itself (`echo/*`, as `/v1/models` lists
        it) has; None when `name` is no configured pattern. A pattern is described, not
        called (`group`)."""
        for pattern, wild in self._wild:
            if pattern == name:
                return len(wild)
        return None

    def group(self, model: str) -> Group:
        """The deployments for `model`; raises ModelNotFound with close names."""
        found = self._groups.get(model)
        if found is not None:
            return found
        states = self._exact.get(model)
        if states is not None:
            found = Group(model, tuple(states))
        elif (served := serving_pattern(model, self._wild)) is not None:
            pattern, wild = served
            prefix = pattern.split("*", 1)[0]
            suffix = pattern.rsplit("*", 1)[1]
            part = model[len(prefix):len(model) - len(suffix) or None]
            if not part or "*" in part:  # the listed pattern itself, or no name
                raise InvalidRequest(
                    f"{model!r} is not a model: {pattern!r} is the pattern of the models "
                    f"it serves; name one, as {prefix}<name>{suffix}", param="model")
            found = Group(model, tuple(wild), part)
        if found is None:
            names = self.model_names()
            raise ModelNotFound(model, difflib.get_close_matches(model, names, n=3, cutoff=0.5))
        # Wildcard names are caller-chosen: the memo is bounded in names and in their size.
        if len(self._groups) < 4096 and len(model) <= MAX_NAME_CHARS:
            self._groups[model] = found
        return found

    def pick(self, group: Group, tried: Collection[DeploymentState] = ()) -> DeploymentState:
        """Choose a deployment not cooling down; RateLimited if none is available.

        Deployments in `tried` (those this request already called) are passed over while
        another is ready, as Envoy's previous-hosts retry predicate does.
        """
        now = self._clock()
        ready = self._ready(group, now)
        if tried:
            fresh = [s for s in ready if s not in tried]
            ready = fresh or ready
        if not ready:
            waits = [s.cooldown_until - now for s in group.deployments if s.cooldown_until > now]
            wait = min(waits) if waits else _WINDOW_S - (now - group.deployments[0].window_start)
            raise RateLimited(f"no deployment of {group.name!r} is available "
                              f"(cooling down or over rpm/tpm)", status=429,
                              retry_after_s=max(0.0, wait))
        return ready[0] if len(ready) == 1 else self._pick(ready)

    def untried_ready(self, group: Group, tried: Collection[DeploymentState]) -> bool:
        """Whether a deployment outside `tried` is ready now: a retry can go there at once."""
        return any(s not in tried for s in self._ready(group, self._clock()))

    def _ready(self, group: Group, now: float) -> list[DeploymentState]:
        ready = [s for s in group.deployments if s.cooldown_until <= now]
        if self.settings.routing_strategy == "usage-based-routing":
            for s in ready:
                self._roll_window(s, now)
            ready = [s for s in ready if not self._over_limit(s)]
        return ready

    def begin(self, state: DeploymentState) -> None:
        """A call to `state` starts."""
        state.in_flight += 1
        if self.settings.routing_strategy == "usage-based-routing":
            self._roll_window(state, self._clock())
            state.window_requests += 1

    def release(self, state: DeploymentState) -> None:
        """A call to `state` was cancelled: neither a success nor a failure."""
        state.in_flight -= 1

    def succeeded(self, state: DeploymentState, latency_s: float, tokens: int) -> None:
        """A call to `state` finished well after `latency_s`, using `tokens`."""
        state.in_flight -= 1
        state.window_tokens += tokens
        old = state.latency_s
        state.latency_s = latency_s if old is None else old + _EWMA * (latency_s - old)

    def failed(self, state: DeploymentState, error: CompletionError) -> None:
        """A call to `state` failed; cool it down on 429 or after `allowed_fails`.

        A model name served by a single deployment is never cooled down: there is
        nowhere else to go, and retries already back off.
        """
        state.in_flight -= 1
        if not isinstance(error, UpstreamError) or len(self._siblings(state)) < 2:
            return
        status = error.status
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            return  # the request's fault, not the deployment's
        now = self._clock()
        state.fails = [t for t in state.fails if now - t < _WINDOW_S]
        state.fails.append(now)
        if status == 429 or len(state.fails) > self.settings.allowed_fails:
            cool = self.settings.cooldown_time_s
            if error.retry_after_s is not None:
                cool = max(cool, error.retry_after_s)
            state.cooldown_until = now + cool
            state.fails.clear()

    def _siblings(self, state: DeploymentState) -> list[DeploymentState]:
        name = state.settings.model_name
        if name in self._exact:
            return self._exact[name]
        return next((w for p, w in self._wild if p == name), [])

    # Strategies: each gets at least two ready deployments.

    def _simple_shuffle(self, ready: list[DeploymentState]) -> DeploymentState:
        weights = [_weight(s.settings) for s in ready]
        return self._rng.choices(ready, weights=weights, k=1)[0]

    def _least_busy(self, ready: list[DeploymentState]) -> DeploymentState:
        low = min(s.in_flight for s in ready)
        return self._rng.choice([s for s in ready if s.in_flight == low])

    def _lowest_latency(self, ready: list[DeploymentState]) -> DeploymentState:
        untried = [s for s in ready if s.latency_s is None]
        if untried:
            return self._rng.choice(untried)
        return min(ready, key=lambda s: s.latency_s or 0.0)

    def _lowest_usage(self, ready: list[DeploymentState]) -> DeploymentState:
        low = min(s.window_tokens for s in ready)
        return self._rng.choice([s for s in ready if s.window_tokens == low])

    def _roll_window(self, state: DeploymentState, now: float) -> None:
        if now - state.window_start >= _WINDOW_S:
            state.window_start = now
            state.window_requests = 0
            state.window_tokens = 0

    @staticmethod
    def _over_limit(state: DeploymentState) -> bool:
        rpm, tpm = state.settings.rpm, state.settings.tpm
        return ((rpm is not None and state.window_requests >= rpm)
                or (tpm is not None and state.window_tokens >= tpm))


def _weight(dep: DeploymentSettings) -> float:
    if dep.weight != 1.0:
        return dep.weight
    return float(dep.rpm or dep.tpm or 1.0)
