"""How each service is built: its engine, its servicer, its error table, its readiness.

Each builder imports its domain lazily, so `--service completion` never loads the
prover or sandbox code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import grpc

from scillm.agent.v1 import agent_pb2, agent_pb2_grpc
from scillm.codeworld.v1 import codeworld_pb2, codeworld_pb2_grpc
from scillm.completion.v1 import completion_pb2, completion_pb2_grpc
from scillm.keys.v1 import keys_pb2
from scillm.prove.v1 import prove_pb2, prove_pb2_grpc

from .completion import model_prices, resolve_env
from .completion_link import CompletionLink
from .errors import ErrorTable
from .keys import Authenticator, KeyStore, PostgresKeyStore, Prices, SQLiteKeyStore
from .keys._windows import RedisWindows
from .manifests import RunStore, agent_trace_dir, open_run_store
from .settings import Settings

log = logging.getLogger("scillm.server")

__all__ = ["SERVED_AT", "SERVICE_NAMES", "ServiceParts", "build_service", "unserved_handler"]

SERVICE_NAMES: dict[str, str] = {
    "completion": completion_pb2.DESCRIPTOR.services_by_name["CompletionService"].full_name,
    "prove": prove_pb2.DESCRIPTOR.services_by_name["ProveService"].full_name,
    "codeworld": codeworld_pb2.DESCRIPTOR.services_by_name["CodeWorldService"].full_name,
    "agent": agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
}


#: The trailer of an unserved service's UNIMPLEMENTED answer that names the target this
#: process sends the service's calls to (when it has one): its message says so to a person,
#: this to a program. `scillm doctor --target` reads it to check what a door fronts.
SERVED_AT = "scillm-served-at"

_DESCRIPTORS = {
    "completion": completion_pb2.DESCRIPTOR.services_by_name["CompletionService"],
    "prove": prove_pb2.DESCRIPTOR.services_by_name["ProveService"],
    "codeworld": codeworld_pb2.DESCRIPTOR.services_by_name["CodeWorldService"],
    "agent": agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
}


class _Unserved(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Methods of services this process does not serve: UNIMPLEMENTED, saying where the
    service lives instead of gRPC's bare "Method not found!": at its target, when this
    process has one for it, else how to serve it. KeyService too, on a process whose key
    routes go elsewhere without a shared store: keys it made there were checked by
    nobody (every one was a 401 at the services)."""

    def __init__(self, served: tuple[str, ...], targets: Mapping[str, str],
                 keys_elsewhere: str = "") -> None:
        here = ", ".join(served) or "no service (HTTP shim only)"
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        refused: list[tuple[Any, str, str]] = []
        for name, descriptor in _DESCRIPTORS.items():
            if name in served:
                continue
            target = targets.get(name, "")
            where = (f"it is served at {target}: call it there" if target else
                     f"run it with `scillm serve --service {name}` and point callers at it "
                     f"(SCILLM_{name.upper()}_TARGET, --{name}-target)")
            refused.append((descriptor, f"{descriptor.full_name} is not served by this "
                                        f"process (it serves {here}); {where}", target))
        if keys_elsewhere:
            keys = keys_pb2.DESCRIPTOR.services_by_name["KeyService"]
            refused.append((keys, (
                f"{keys.full_name}: the keys this process's calls are checked with live "
                f"with Completion at {keys_elsewhere}: call KeyService there (or share one "
                "key store between processes with SCILLM_STORE_URL)"), ""))
        for descriptor, message, target in refused:
            # A target metadata cannot carry (not printable ASCII) is left to the message.
            trailer = ((SERVED_AT, target),) if target.isascii() and target.isprintable() \
                else ()

            async def refuse(request: bytes, context: grpc.aio.ServicerContext,
                             message: str = message,
                             trailer: tuple[tuple[str, str], ...] = trailer) -> None:
                await _refuse(context, message, trailer)

            async def refuse_stream(request: bytes, context: grpc.aio.ServicerContext,
                                    message: str = message,
                                    trailer: tuple[tuple[str, str], ...] = trailer,
                                    ) -> AsyncIterator[bytes]:
                await _refuse(context, message, trailer)
                yield b""  # never reached: a stream handler is an async generator

            for method in descriptor.methods:
                path = f"/{descriptor.full_name}/{method.name}"
                self._handlers[path] = (
                    grpc.unary_stream_rpc_method_handler(refuse_stream)
                    if method.server_streaming else grpc.unary_unary_rpc_method_handler(refuse))

    def service(self, handler_call_details: grpc.HandlerCallDetails,
                ) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


async def _refuse(context: grpc.aio.ServicerContext, message: str,
                  trailer: tuple[tuple[str, str], ...]) -> None:
    """UNIMPLEMENTED with `message`; `trailer` joins the trailers already set (the request
    id), which an abort's own trailing metadata would replace."""
    if trailer:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message, trailing_metadata=(
            *(context.trailing_metadata() or ()), *trailer))
    else:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)


def unserved_handler(served: tuple[str, ...], targets: Mapping[str, str] | None = None,
                     keys_elsewhere: str = "") -> grpc.GenericRpcHandler:
    """A handler answering every method of the services not in `served` (and KeyService,
    given `keys_elsewhere`, where the keys live) with UNIMPLEMENTED and a message naming
    where it is served, or how to serve it."""
    return _Unserved(served, targets or {}, keys_elsewhere)


async def _ready() -> bool:
    return True


async def _nothing() -> None:
    return None


@dataclass
class ServiceParts:
    """One service, ready to be registered on a server."""

    name: str
    full_name: str
    register: Callable[[grpc.aio.Server], None]
    errors: ErrorTable = field(default_factory=dict)
    #: Start the engine; True when the service can serve.
    start: Callable[[], Awaitable[bool]] = _ready
    close: Callable[[], Awaitable[None]] = _nothing
    #: Readiness of the service's parts after start, as health entries `<service>/<part>`
    #: (for example each prover backend).
    parts_ready: Callable[[], dict[str, bool]] = dict


def _store(settings: Settings, shared: dict[str, Any]) -> RunStore:
    """The process's one run store: PostgreSQL when `store_url` is set, else SQLite."""
    store = shared.get("store")
    if store is None:
        store = shared["store"] = open_run_store(settings)
    assert isinstance(store, RunStore)
    return store


def _completion(settings: Settings, shared: dict[str, Any]) -> ServiceParts:
    from .completion import CompletionEngine, CompletionSettings
    from .completion.servicer import ERRORS, CompletionServicer

    config = (CompletionSettings.from_yaml(settings.config_path)
              if settings.config_path else CompletionSettings.default())
    if config.ignored_keys:  # a typo ("cahce", "api_bse") was silently nothing
        log.warning("config %s: not read by SciLLM (a typo, or a LiteLLM setting it does not "
                    "have): %s", settings.config_path, ", ".join(config.ignored_keys))
    engine = CompletionEngine(config)
    metrics = shared.get("metrics")
    if metrics is not None:
        metrics.configure_models(engine.model_names())

    async def start() -> bool:
        await engine.start()
        return True

    servicer = CompletionServicer(
        engine, metrics,
        _store(settings, shared) if settings.store_completions else None)
    return ServiceParts(
        "completion", SERVICE_NAMES["completion"],
        lambda server: completion_pb2_grpc.add_CompletionServiceServicer_to_server(
            servicer, server),
        ERRORS, start, engine.close)


def build_authenticator(settings: Settings, shared: dict[str, Any]) -> Authenticator:
    """Keys: the master key (settings, else the config's general_settings.master_key), the
    key store (in the run store's PostgreSQL database when `store_url` is set, else a
    SQLite file beside the run store), and per-model prices from the config's model_list."""
    import yaml

    master = settings.master_key
    # Every configured name with its prices, in config order: a wildcard's calls are priced
    # by the pattern serving them, as the router picks it (`Prices`).
    prices: list[tuple[str, tuple[float, float]]] = []
    data: dict[str, Any] = {}
    if settings.config_path is not None:
        data = yaml.safe_load(settings.config_path.read_text()) or {}
        general = data.get("general_settings") or {}
        named = str(general.get("master_key") or "")
        configured = str(resolve_env(named, os.environ) or "")
        if named != configured and not configured and not master:
            # An unset os.environ/NAME read as no key: every caller let in.
            raise ValueError(
                f"general_settings.master_key names the environment variable "
                f"{named.removeprefix('os.environ/')}, which is not set (or empty): the mesh "
                "would serve every caller without a key; set it, or remove master_key to "
                "run without keys")
        master = master or configured
        prices = model_prices(data)  # checked: a negative or non-finite price is refused
    store: KeyStore = (PostgresKeyStore(_store(settings, shared)) if settings.store_url
                       else SQLiteKeyStore(settings.store_path.with_name("keys.sqlite3")))
    redis_url = settings.redis_url
    if not redis_url and settings.config_path is not None:
        router = data.get("router_settings") or {}
        if router.get("redis_host"):
            redis_url = _redis_url(router)
    windows = RedisWindows(redis_url) if redis_url else None
    return Authenticator(master or None, store, Prices(prices), windows)


def _redis_url(router: dict[str, Any]) -> str:
    """The keys' windows' Redis from `router_settings` (host, port, password, each maybe
    `os.environ/NAME`): the password was left out, and a Redis asking for one refused."""
    host, port, password = (resolve_env(router.get(key, default), os.environ)
                            for key, default in (("redis_host", None), ("redis_port", 6379),
                                                 ("redis_password", None)))
    auth = f":{quote(str(password), safe='')}@" if password else ""
    return f"redis://{auth}{host or ''}:{port}"


def _sandbox_settings() -> Any:
    """One sandbox configuration (it finds the compilers and binds their trees itself)."""
    from .codeworld.sandbox import SandboxSettings

    return SandboxSettings()


def _prove(settings: Settings, link: CompletionLink, shared: dict[str, Any]) -> ServiceParts:
    from .jail import JailSettings
    from .prove import Limits, ProveEngine, ProveSettings
    from .prove.servicer import ERRORS, ProveServicer

    most = Limits(timeout_s=settings.prove_max_timeout_s,
                  memory_mb=settings.prove_max_memory_mb)
    usual = Limits()  # what an item gets when its request sets no limits: never over `most`
    engine = ProveEngine(ProveSettings(
        jail=JailSettings(isolation=settings.prove_isolation),  # type: ignore[arg-type]
        coq_kernel_check=settings.prove_kernel_check, max_limits=most,
        formalize_max_s=settings.prove_formalize_max_s,
        default_limits=Limits(timeout_s=min(usual.timeout_s, most.timeout_s),
                              memory_mb=min(usual.memory_mb, most.memory_mb))))

    async def start() -> bool:
        await engine.start()
        # Ready when at least one prover can check obligations (z3 always can).
        return any(b.available for b in engine.backends())

    servicer = ProveServicer(engine, link, _store(settings, shared), shared.get("metrics"),
                             default_model=settings.prove_model)
    return ServiceParts(
        "prove", SERVICE_NAMES["prove"],
        lambda server: prove_pb2_grpc.add_ProveServiceServicer_to_server(servicer, server),
        ERRORS, start, engine.close,
        # One entry per prover backend, and one per SMT solver beside z3 (`/cvc5`);
        # `<service>/bubblewrap` NOT_SERVING says provers run with weaker isolation
        # (rlimits only).
        parts_ready=lambda: {**engine.readiness(),
                             "bubblewrap": engine.isolation == "bubblewrap"})


def _codeworld(settings: Settings, link: CompletionLink, shared: dict[str, Any],
               ) -> ServiceParts:
    from .codeworld import CodeWorldEngine, CodeWorldSettings, session_db_path
    from .codeworld.servicer import ERRORS, CodeWorldServicer

    settings.store_path.parent.mkdir(parents=True, exist_ok=True)
    engine = CodeWorldEngine(
        CodeWorldSettings(sandbox=_sandbox_settings(),
                          session_db=str(session_db_path(settings.store_path)),
                          session_redis_url=settings.redis_url,
                          session_retention_days=settings.run_retention_days),
        complete=link.text)
    shared["sandbox"] = engine.sandbox

    async def start() -> bool:
        await engine.start()
        return True

    servicer = CodeWorldServicer(engine, _store(settings, shared), shared.get("metrics"),
                                 default_model=settings.codeworld_model)
    return ServiceParts(
        "codeworld", SERVICE_NAMES["codeworld"],
        lambda server: codeworld_pb2_grpc.add_CodeWorldServiceServicer_to_server(
            servicer, server),
        ERRORS, start, engine.close,
        # `<service>/bubblewrap` NOT_SERVING says code runs with weaker isolation (rlimits);
        # `<service>/<language>` NOT_SERVING, that the language's toolchain is missing.
        parts_ready=lambda: {"bubblewrap": engine.sandbox.isolation == "bubblewrap",
                             **{t.language.value: t.available for t in engine.languages()}})


def _agent(settings: Settings, link: CompletionLink, shared: dict[str, Any]) -> ServiceParts:
    from .agent import AgentEngine, SandboxExecutor
    from .agent._config_file import agent_settings_from_file
    from .agent.servicer import ERRORS, AgentServicer
    from .codeworld.sandbox import COMPILED, Language, Sandbox

    sandbox = shared.get("sandbox")
    own_sandbox = sandbox is None
    if sandbox is None:  # served without CodeWorld: the agent starts its own sandbox
        sandbox = Sandbox(_sandbox_settings())
    executor = SandboxExecutor(sandbox)
    base = agent_settings_from_file(settings.config_path)
    # Compiled languages are offered when their toolchain is installed.
    extra = tuple(lang.value for lang in Language if lang in COMPILED
                  and lang.value not in base.languages and executor.unavailable(lang) is None)
    engine = AgentEngine(replace(base, languages=base.languages + extra), link.chat, executor)

    async def start() -> bool:
        if own_sandbox:
            await sandbox.start()
        await engine.start()
        return True

    async def close() -> None:
        await engine.close()
        if own_sandbox:
            await sandbox.close()

    # JSONL run traces (AgentConfig.trace) live beside the run store, where retention
    # sweeps them (`agent_trace_dir`).
    servicer = AgentServicer(engine, _store(settings, shared),
                             trace_dir=agent_trace_dir(settings.store_path))
    return ServiceParts(
        "agent", SERVICE_NAMES["agent"],
        lambda server: agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server),
        ERRORS, start, close)


def build_service(name: str, settings: Settings, link: CompletionLink,
                  shared: dict[str, Any]) -> ServiceParts:
    """The parts of service `name` (one of settings.SERVICES).

    `link` reaches CompletionService for the services that call a model; `shared` holds
    what services of one process share (the code sandbox of CodeWorld and Agent).
    """
    if name == "completion":
        return _completion(settings, shared)
    if name == "prove":
        return _prove(settings, link, shared)
    if name == "codeworld":
        return _codeworld(settings, link, shared)
    return _agent(settings, link, shared)
