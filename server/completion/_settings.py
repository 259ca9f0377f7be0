"""Completion settings: a LiteLLM proxy YAML, read once into frozen dataclasses.

A LiteLLM proxy config works unchanged::

    model_list:
      - model_name: gpt-4o                  # the name callers use
        litellm_params:
          model: openai/gpt-4o              # provider/upstream-model
          api_base: http://127.0.0.1:8000/v1
          api_key: os.environ/OPENAI_API_KEY
          rpm: 600
          weight: 2
          timeout: 30
    router_settings: {routing_strategy: least-busy, num_retries: 2, fallbacks: [...]}
    litellm_settings: {cache: true, cache_params: {type: redis, host: ..., ttl: 600}}

The response cache is off unless `litellm_settings.cache` is true, as in LiteLLM; with
`cache_params.mode: default_off` it is used only by requests that opt in.

`os.environ/NAME` strings are resolved at load; API keys are held in `Secret`, which
never shows its value in repr or logs. Per-token prices (`input_cost_per_token`,
`output_cost_per_token`, in `litellm_params` or `model_info`: what a virtual key pays) are
each a finite number of at least 0, checked at load naming the model and the field
(`model_prices`). Keys nothing in the mesh reads are kept in
`ignored_keys`, which the mesh names when it starts (a typo was silently nothing).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..headers import header_problem
from .errors import InvalidRequest

__all__ = [
    "CODEX_AGENT_BASE_ENV",
    "STRATEGIES",
    "CacheSettings",
    "CompletionSettings",
    "DeploymentSettings",
    "RouterSettings",
    "Secret",
    "model_prices",
    "resolve_env",
]

STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing")
_ENV_PREFIX = "os.environ/"
#: Where a `codex-agent/...` deployment without `api_base` finds its Codex sidecar.
CODEX_AGENT_BASE_ENV = "CODEX_AGENT_API_BASE"
_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


@dataclass(frozen=True)
class Secret:
    """A secret value (API key, password). `env` names the variable it came from."""

    value: str | None = field(repr=False)
    env: str | None = None

    def __repr__(self) -> str:
        source = f", env={self.env!r}" if self.env else ""
        return f"Secret('***'{source})" if self.value else f"Secret(None{source})"

    __str__ = __repr__


@dataclass(frozen=True)
class DeploymentSettings:
    """One upstream deployment serving `model_name` (a LiteLLM `model_list` entry).

    `model` is `provider/upstream-model` (`openai/`, `anthropic/`, `echo/`, `local/`,
    or any LiteLLM provider); a bare name means OpenAI. A `model_name` ending in `*`
    is a wildcard; the matched part replaces the `*` in `model`.
    """

    model_name: str
    model: str
    id: str
    api_base: str | None = None
    api_key: Secret | None = None
    rpm: int | None = None
    tpm: int | None = None
    weight: float = 1.0
    timeout_s: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    max_tokens_default: int | None = None
    #: LiteLLM's `stream_timeout`: the timeout of a streamed call (else `timeout_s`).
    stream_timeout_s: float | None = None

    @property
    def provider(self) -> str:
        """The provider kind: the prefix of `model` (or `openai` for a bare name)."""
        head, sep, _ = self.model.partition("/")
        return head if sep else "openai"


@dataclass(frozen=True)
class RouterSettings:
    """LiteLLM `router_settings`, plus the retry budget (`retry_budget_s`)."""

    routing_strategy: str = "simple-shuffle"
    num_retries: int = 2
    timeout_s: float = 60.0
    retry_after_s: float = 0.0
    allowed_fails: int = 3
    cooldown_time_s: float = 5.0
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    context_window_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    retry_budget_s: float = 60.0


@dataclass(frozen=True)
class CacheSettings:
    """Response cache: `memory` (LRU, default) or `redis` (when a host is configured).

    Off unless `enabled` (LiteLLM's `litellm_settings.cache`). `default_on` false
    (LiteLLM's `cache_params.mode: default_off`) caches only requests that opt in.
    """

    enabled: bool = False
    default_on: bool = True
    backend: str = "memory"
    max_entries: int = 1024
    ttl_s: float | None = None
    namespace: str = "default"
    redis_host: str | None = None
    redis_port: int = 6379
    redis_password: Secret | None = None


@dataclass(frozen=True)
class CompletionSettings:
    """Everything the Completion engine reads at start-up; see the module docstring."""

    model_list: tuple[DeploymentSettings, ...]
    router: RouterSettings = field(default_factory=RouterSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    ignored_keys: tuple[str, ...] = ()

    @classmethod
    def default(cls, environ: Mapping[str, str] | None = None) -> CompletionSettings:
        """The embedded default: `echo/*` for tests and a lazily loaded `local/gemma`;
        `codex-agent/*` too when `CODEX_AGENT_API_BASE` names a Codex sidecar."""
        env = os.environ if environ is None else environ
        models: list[dict[str, Any]] = [
            {"model_name": "echo/*", "litellm_params": {"model": "echo/*"}},
            # A base model rarely stops by itself: without max_tokens it writes until this
            # cap (about 10 s at 50 tokens/s), unless the caller's max_tokens says otherwise.
            # Decoding to a JSON schema (response_format) runs at about 5 tokens/s on two
            # busy cores: the timeout leaves room for the whole cap.
            {"model_name": "local/gemma", "litellm_params": {"model": "local/gemma3-270m",
                                                             "max_tokens": 512,
                                                             "timeout": 300}},
        ]
        if env.get(CODEX_AGENT_BASE_ENV):
            models.append({"model_name": "codex-agent/*",
                           "litellm_params": {"model": "codex-agent/*"}})
        return cls.from_mapping({"model_list": models}, env)

    @classmethod
    def from_yaml(cls, path: str | Path,
                  environ: Mapping[str, str] | None = None) -> CompletionSettings:
        """Read a LiteLLM proxy YAML file."""
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise InvalidRequest(f"{path}: the top level must be a mapping")
        return cls.from_mapping(data, environ)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any],
                     environ: Mapping[str, str] | None = None) -> CompletionSettings:
        """Build settings from an already parsed config mapping."""
        env = os.environ if environ is None else environ
        ignored: list[str] = []
        for key in data:
            if key not in _SECTIONS:
                ignored.append(str(key))
        model_list = data.get("model_list") or ()
        if not isinstance(model_list, list | tuple):
            raise InvalidRequest(f"model_list must be a list of models, not "
                                 f"{type(model_list).__name__}", param="model_list")
        models = tuple(_deployment(entry, i, env, ignored) for i, entry in enumerate(model_list))
        if not models:
            raise InvalidRequest("model_list is empty", param="model_list")
        rs = _mapping(data.get("router_settings"), "router_settings")
        ls = _mapping(data.get("litellm_settings"), "litellm_settings")
        gs = _mapping(data.get("general_settings"), "general_settings")
        # The keys read its master_key (server/services.py); a `master_kye` left them off.
        ignored.extend(f"general_settings.{k}" for k in gs if k != "master_key")
        return cls(models, _router(rs, ignored), _cache(ls, rs, env, ignored), tuple(ignored))


def resolve_env(value: Any, env: Mapping[str, str]) -> Any:
    """`value`, or for `os.environ/NAME` the variable NAME of `env` (None when unset)."""
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        return env.get(value[len(_ENV_PREFIX):])
    return value


def _secret(value: Any, env: Mapping[str, str]) -> Secret | None:
    if value is None:
        return None
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        name = value[len(_ENV_PREFIX):]
        return Secret(env.get(name), name)
    return Secret(str(value))


_PARAMS = {"model", "api_base", "base_url", "api_key", "rpm", "tpm", "weight", "timeout",
           "stream_timeout", "extra_headers", "headers", "max_tokens", "custom_llm_provider",
           # read by the keys' Authenticator (server/services.py): a key's spend
           "input_cost_per_token", "output_cost_per_token"}
#: The longest time a cached answer may be kept (a config's ttl, a request's ttl_s): ten
#: years. Redis refuses expiries far past that (1e300 s failed an answered call).
MAX_TTL_S = 10 * 365 * 86400.0
#: The config's sections the mesh reads: these three here, general_settings (the master
#: key), agent_settings, mcp_servers and http_tool_servers (the agent's config file).
_SECTIONS = ("model_list", "router_settings", "litellm_settings", "general_settings",
             "agent_settings", "mcp_servers", "http_tool_servers")
#: Parameters only a `codex-agent/...` deployment reads.
_CODEX_PARAMS = {"force_local"}


def _deployment(entry: Any, index: int, env: Mapping[str, str],
                ignored: list[str]) -> DeploymentSettings:
    if not isinstance(entry, Mapping) or "model_name" not in entry:
        raise InvalidRequest(f"model_list[{index}] needs model_name", param="model_list")
    where = f"model_list[{index}].litellm_params"
    params = _mapping(entry.get("litellm_params"), where)
    model = str(resolve_env(params.get("model") or entry["model_name"], env))
    custom = params.get("custom_llm_provider")
    if custom and not model.startswith(f"{custom}/"):
        model = f"{custom}/{model}"
    api_base = resolve_env(params.get("api_base") or params.get("base_url"), env)
    dep = DeploymentSettings(model_name=str(entry["model_name"]), model=model, id="")
    known = _PARAMS | _CODEX_PARAMS if dep.provider == "codex-agent" else _PARAMS
    ignored.extend(f"model_list[{index}].litellm_params.{k}" for k in params if k not in known)
    key = _secret(params.get("api_key"), env)
    if key is None and api_base is None and dep.provider in _DEFAULT_KEY_ENV:
        name = _DEFAULT_KEY_ENV[dep.provider]
        key = Secret(env.get(name), name)
    headers = _mapping(params.get("extra_headers") or params.get("headers"),
                       f"{where}.extra_headers")
    for name, value in headers.items():
        problem = header_problem(name, value)
        if problem is not None:
            raise InvalidRequest(f"{where}.extra_headers: {problem}",
                                 param=f"{where}.extra_headers")
    if dep.provider == "codex-agent":  # a Codex sidecar: its base and switches from env too
        api_base = api_base or env.get(CODEX_AGENT_BASE_ENV)
        if key is None and env.get("CODEX_AGENT_API_KEY"):
            key = Secret(env["CODEX_AGENT_API_KEY"], "CODEX_AGENT_API_KEY")
        force = resolve_env(params.get("force_local", env.get("CODEX_AGENT_FORCE_LOCAL")), env)
        if str(force).lower() in ("1", "true", "yes", "on"):
            headers["X-Codex-Force-Local"] = "1"
    info = _mapping(entry.get("model_info") or None, f"model_list[{index}].model_info")
    _prices(entry, index, env)
    dep_id = str(info.get("id") or f"{dep.model_name}#{index}")
    def number(key: str, kind: type[float] | type[int], minimum: float,
               more: bool = False) -> Any:
        return _number(resolve_env(params.get(key), env), f"{where}.{key}", kind, minimum, more)

    weight = number("weight", float, 0, more=True)
    return DeploymentSettings(
        model_name=dep.model_name, model=model, id=dep_id,
        api_base=str(api_base).rstrip("/") if api_base else None, api_key=key,
        rpm=number("rpm", int, 0), tpm=number("tpm", int, 0),
        weight=1.0 if weight is None else weight,
        timeout_s=number("timeout", float, 0, more=True),
        headers=tuple((str(k), str(resolve_env(v, env))) for k, v in headers.items()),
        max_tokens_default=number("max_tokens", int, 1),
        stream_timeout_s=number("stream_timeout", float, 0, more=True),
    )


#: The per-token prices of a `model_list` entry: (prompt, completion).
_PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token")


def model_prices(data: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                 ) -> list[tuple[str, tuple[float, float]]]:
    """Every `model_list` entry's `model_name` with its per-token prices, (prompt,
    completion), in config order: its `litellm_params`' over its `model_info`'s, 0 when
    it sets none. InvalidRequest, naming the model and the field, for a price that is not
    a finite number of at least 0 (a negative one paid keys back for their calls)."""
    env = os.environ if environ is None else environ
    entries = data.get("model_list") or ()
    if not isinstance(entries, list | tuple):
        raise InvalidRequest(f"model_list must be a list of models, not "
                             f"{type(entries).__name__}", param="model_list")
    return [(str(entry.get("model_name")), _prices(entry, index, env))
            for index, entry in enumerate(entries) if isinstance(entry, Mapping)]


def _prices(entry: Mapping[str, Any], index: int,
            env: Mapping[str, str]) -> tuple[float, float]:
    """`model_prices` of one entry (the `index`th)."""
    found = [0.0, 0.0]
    for section in ("model_info", "litellm_params"):  # litellm_params' win, as they did
        values = _mapping(entry.get(section) or None, f"model_list[{index}].{section}")
        for i, key in enumerate(_PRICE_KEYS):
            where = f"model_list[{index}].{section}.{key}"
            value = values.get(key)
            try:
                price = _number(resolve_env(value, env), where, float, 0)
            except InvalidRequest:
                raise InvalidRequest(
                    f"{where} (model {str(entry.get('model_name'))!r}) must be a number at "
                    f"least 0, not {value!r}: a price per token is 0 (free) or more",
                    param=where) from None
            if price is not None:
                found[i] = price
    return found[0], found[1]


def _port(value: Any) -> int:
    port = _number(value, "litellm_settings.cache_params.port", int, 1)
    if port > 65535:
        raise InvalidRequest(f"litellm_settings.cache_params.port must be at most 65535, "
                             f"not {value!r}", param="litellm_settings.cache_params.port")
    return int(port)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """A config section that must be a mapping (absent or null: empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{where} must be a mapping, not {type(value).__name__}",
                             param=where)
    return dict(value)


def _number(value: Any, where: str, kind: type[float] | type[int], minimum: float,
            more: bool = False) -> Any:
    """`value` (a number, or its text from the environment) as a finite `kind` of at least
    `minimum` (more than it when `more`); None when absent. Anything else is refused,
    naming the key: read with bare `int()`/`float()`, `timeout: -1` made every call time
    out, `cooldown_time: .inf` benched a deployment for good, and `num_retries: abc`
    stopped the start with a message naming no key."""
    if value is None:
        return None
    number: float | None = None
    if not isinstance(value, bool) and isinstance(value, int | float | str):
        try:
            number = float(value)
        except ValueError:
            number = None
    whole = kind is int
    bound = f"{'more than' if more else 'at least'} {minimum:g}"
    if (number is None or not math.isfinite(number) or (whole and not number.is_integer())
            or number < minimum or (more and number == minimum)):
        raise InvalidRequest(f"{where} must be a {'whole ' if whole else ''}number "
                             f"{bound}, not {value!r}", param=where)
    return int(number) if whole else number


def _fallback_map(value: Any) -> dict[str, tuple[str, ...]]:
    # LiteLLM writes fallbacks as a list of one-key mappings: [{"gpt-4o": ["gpt-4o-mini"]}].
    out: dict[str, tuple[str, ...]] = {}
    items = value.items() if isinstance(value, Mapping) else (
        kv for item in (value or ()) for kv in dict(item).items())
    for name, targets in items:
        out[str(name)] = tuple(str(t) for t in ([targets] if isinstance(targets, str)
                                                else targets))
    return out


_ROUTER_KEYS = {"routing_strategy", "num_retries", "timeout", "retry_after", "allowed_fails",
                "cooldown_time", "fallbacks", "context_window_fallbacks", "redis_host",
                "redis_port", "redis_password", "backoff_base_s", "backoff_max_s",
                "retry_budget_s"}


def _router(rs: dict[str, Any], ignored: list[str]) -> RouterSettings:
    ignored.extend(f"router_settings.{k}" for k in rs if k not in _ROUTER_KEYS)
    strategy = str(rs.get("routing_strategy") or "simple-shuffle")
    if strategy == "usage-based-routing-v2":
        strategy = "usage-based-routing"
    if strategy not in STRATEGIES:
        raise InvalidRequest(f"unknown routing_strategy {strategy!r}; use one of "
                             f"{', '.join(STRATEGIES)}", param="router_settings.routing_strategy")
    base = RouterSettings()

    def number(key: str, default: float, kind: type[float] | type[int] = float,
               more: bool = False) -> Any:
        value = _number(rs.get(key), f"router_settings.{key}", kind, 0, more)
        return default if value is None else value

    return RouterSettings(
        routing_strategy=strategy,
        num_retries=number("num_retries", base.num_retries, int),
        timeout_s=number("timeout", base.timeout_s, more=True),
        retry_after_s=number("retry_after", base.retry_after_s),
        allowed_fails=number("allowed_fails", base.allowed_fails, int),
        cooldown_time_s=number("cooldown_time", base.cooldown_time_s),
        fallbacks=_fallback_map(rs.get("fallbacks")),
        context_window_fallbacks=_fallback_map(rs.get("context_window_fallbacks")),
        backoff_base_s=number("backoff_base_s", base.backoff_base_s),
        backoff_max_s=number("backoff_max_s", base.backoff_max_s),
        retry_budget_s=number("retry_budget_s", base.retry_budget_s),
    )


def _cache(ls: dict[str, Any], rs: dict[str, Any], env: Mapping[str, str],
           ignored: list[str]) -> CacheSettings:
    params = _mapping(ls.get("cache_params"), "litellm_settings.cache_params")
    ignored.extend(f"litellm_settings.{k}" for k in ls if k not in ("cache", "cache_params"))
    kind = str(params.get("type") or ("redis" if params.get("host") else "memory"))
    if kind == "local":
        kind = "memory"
    if kind not in ("memory", "redis"):
        raise InvalidRequest(f"unsupported cache type {kind!r}; use local or redis",
                             param="litellm_settings.cache_params.type")
    host = resolve_env(params.get("host") or rs.get("redis_host"), env)
    port = resolve_env(params.get("port") or rs.get("redis_port") or 6379, env)
    ttl = resolve_env(params.get("ttl"), env)
    mode = str(params.get("mode") or "default_on")
    if mode not in ("default_on", "default_off"):
        raise InvalidRequest(f"unsupported cache mode {mode!r}; use default_on or default_off",
                             param="litellm_settings.cache_params.mode")
    ttl_s = _number(ttl, "litellm_settings.cache_params.ttl", float, 0, more=True)
    if ttl_s is not None and ttl_s > MAX_TTL_S:
        raise InvalidRequest(f"litellm_settings.cache_params.ttl must be at most "
                             f"{MAX_TTL_S:.0f} s (ten years)",
                             param="litellm_settings.cache_params.ttl")
    return CacheSettings(
        enabled=bool(ls.get("cache", False)),
        default_on=mode == "default_on",
        backend=kind,
        max_entries=_number(params.get("max_entries", 1024),
                            "litellm_settings.cache_params.max_entries", int, 0),
        ttl_s=ttl_s,
        namespace=str(params.get("namespace") or "default"),
        redis_host=str(host) if host else None,
        redis_port=_port(port),
        redis_password=_secret(params.get("password") or rs.get("redis_password"), env),
    )
