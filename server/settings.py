"""Settings of a SciLLM process: read once at start-up into a frozen object.

Sources, later ones winning: defaults below, environment variables `SCILLM_*`,
command-line flags. The model configuration (LiteLLM's `model_list` YAML) is a
separate file named by `config_path`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the CLI parser reads this module on every run
    from scillm.clients import TlsConfig

__all__ = ["DOORS", "GRPC_SERVERS", "MAX_RETENTION_DAYS", "MAX_WORKERS", "SERVICES", "Settings"]

#: Service names as used by `--service`, in start-up order.
SERVICES: tuple[str, ...] = ("completion", "prove", "codeworld", "agent")

#: The most worker processes `--workers` starts.
MAX_WORKERS = 64
#: The longest run retention (days): a hundred years (a cutoff earlier than any run).
MAX_RETENTION_DAYS = 36_500
#: The gRPC servers a process can run (`Settings.grpc_server`).
GRPC_SERVERS: tuple[str, ...] = ("native", "grpcio")
#: The most HTTP/2 threads the native gRPC server may be given (`grpc_io_threads`).
MAX_IO_THREADS = 64

#: Services a process's own clients call, each with a `<name>_target` setting: the four
#: above and KeyService (served by every process; see `Settings.targets`).
DOORS: tuple[str, ...] = (*SERVICES, "keys")


@dataclass(frozen=True)
class Settings:
    """Everything a SciLLM process needs to know before it starts."""

    #: Address the gRPC server binds.
    grpc_host: str = "127.0.0.1"
    #: gRPC port; 0 picks a free one.
    grpc_port: int = 50051
    #: Address the OpenAI-compatible HTTP shim binds.
    http_host: str = "127.0.0.1"
    #: HTTP port; 0 picks a free one.
    http_port: int = 4000
    #: Serve the HTTP shim beside gRPC.
    http_enabled: bool = True
    #: Services this process serves; empty (`--service none`) for a process that only
    #: fronts services living elsewhere with the HTTP shim (see the `*_target` settings).
    services: tuple[str, ...] = SERVICES
    #: LiteLLM-format model configuration (YAML); the embedded defaults when unset.
    config_path: Path | None = None
    #: Seconds in-flight calls get to finish after SIGTERM, SIGINT or SIGHUP.
    grace_period_s: float = 10.0
    #: Largest request message accepted, bytes (gRPC and HTTP).
    max_request_bytes: int = 8 * 1024 * 1024
    #: Seconds the HTTP shim waits for a request's head (from the connection's opening or
    #: the request's first byte), and for each piece of its body after the one before,
    #: before it answers 408 or closes the connection: nginx's client_header_timeout and
    #: client_body_timeout. Connections that send nothing, or a byte at a time, are not
    #: held for ever.
    http_read_timeout_s: float = 60.0
    #: Deadline applied to unary calls that carry none, seconds.
    default_unary_timeout_s: float = 600.0
    #: Deadline applied to streaming calls that carry none, seconds.
    default_stream_timeout_s: float = 3600.0
    #: Where this process's callers of CompletionService (the HTTP shim, and Prove,
    #: CodeWorld and Agent) reach it; this process when empty. `host:port`, a
    #: comma-separated list of them, or `dns:///name:port`, balanced with round_robin.
    completion_target: str = ""
    #: Where the HTTP shim reaches ProveService (`certainly/...`, `lean4/...`,
    #: /bridge/complete); this process when empty. Same forms as `completion_target`.
    prove_target: str = ""
    #: Where the HTTP shim reaches CodeWorldService (`codeworld/...`, /bridge/complete).
    codeworld_target: str = ""
    #: Where the HTTP shim reaches AgentService (`agent/<model>`, /agent/run).
    agent_target: str = ""
    #: Where the HTTP shim's key routes (/key/generate, /key/info, /key/delete) go; when
    #: empty, wherever completions go (keys live with Completion, which meters them).
    keys_target: str = ""
    #: Completion model that formalizes natural-language requirements for Prove.
    prove_model: str = ""
    #: How provers are jailed: "auto" (bubblewrap; without it only z3 runs, under rlimits,
    #: since Coq and Lean can read and write files or run code), "bubblewrap" (refuse to
    #: start without it), or "rlimits" (every prover under resource limits only, knowingly).
    prove_isolation: str = "auto"
    #: Have `coqchk` re-check every Coq item judged PROVED (about 0.5 s each).
    prove_kernel_check: bool = False
    #: The most time and memory a Prove request may give one prover run (its `limits`);
    #: over either, INVALID_ARGUMENT naming the field.
    prove_max_timeout_s: float = 300.0
    prove_max_memory_mb: int = 8192
    #: The most seconds one item's formalize rounds (generate, check, repair: model calls
    #: included) take together; then the item is TIMEOUT.
    prove_formalize_max_s: float = 600.0
    #: Completion model that writes CodeWorld's MCTS variants when a request names none.
    codeworld_model: str = ""
    #: Streams one key may have open at once (virtual keys and the master key alike, when
    #: keys are on); 0 = no limit. Over it: RESOURCE_EXHAUSTED (HTTP 429).
    max_streams_per_key: int = 64
    #: Redis for state shared by replicas (key rate windows); also taken from the config's
    #: router_settings.redis_host/redis_port. Empty: in-process state.
    redis_url: str = ""
    #: Also keep a manifest of every routed completion in the run store (off: hot path).
    store_completions: bool = False
    #: Port serving Prometheus metrics beside gRPC; 0 = off (the HTTP shim has /metrics).
    metrics_port: int = 0
    #: Run store (SQLite file).
    store_path: Path = field(default_factory=lambda: Path.home() / ".scillm" / "runs.sqlite3")
    #: Run store in PostgreSQL instead, as `postgresql://user:pass@host:port/db`; when set
    #: it wins over `store_path` for runs and keys (CodeWorld sessions stay beside
    #: `store_path`). Needs the `postgres` extra. Never logged (it may hold a password).
    store_url: str = field(default="", repr=False)
    #: Days a run is kept after its last activity (its end; a run still streaming is
    #: active): every serving process deletes older runs, and their agent traces, when it
    #: starts and hourly after. 0 keeps runs for ever.
    run_retention_days: int = 0
    #: Master key; when set, every call needs a key (the master key or a virtual key).
    #: Also read from the config file's `general_settings.master_key`. Never logged.
    master_key: str = field(default="", repr=False)
    #: TLS certificate chain (PEM) for gRPC and HTTP; with `tls_key`, both doors use TLS.
    tls_cert: Path | None = None
    #: TLS private key (PEM).
    tls_key: Path | None = None
    #: CA bundle (PEM) that client certificates must chain to: mutual TLS when set.
    #: Services of the mesh present `tls_cert` to each other as their client certificate.
    tls_client_ca: Path | None = None
    #: Where the runs UI links a run's trace: a URL holding `{trace_id}`, for Jaeger
    #: `http://127.0.0.1:16686/trace/{trace_id}`. Empty: the UI shows the id, no link.
    trace_url_template: str = ""
    #: Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).
    log_level: str = "INFO"
    #: Worker processes serving the same ports (`scillm serve --workers`); with more than
    #: one, this process is their master (see `server/workers.py`).
    workers: int = 1
    #: Bind the gRPC and HTTP ports with SO_REUSEPORT, so that several processes share
    #: them (set by the master for its workers).
    reuse_port: bool = False
    #: The gRPC server: "native" (pygrpc-native: grpc.aio's API, its HTTP/2 and gRPC work
    #: done in Rust outside the GIL) or "grpcio" (grpc.aio itself). With TLS it is grpcio,
    #: whatever this says: the native server has no TLS.
    grpc_server: str = "native"
    #: Threads (tokio's) doing the native gRPC server's HTTP/2 work. Under load one keeps
    #: up with the one event loop it feeds and costs less CPU per call than two (medians
    #: 5-18 % less per Completion at c=16 and c=64 on 2 cores); two buy one process a few
    #: per cent more calls per second where a core is idle, and one call at a time (c=1)
    #: ~8 % lower latency (bench/README.md). Only the native server has them.
    grpc_io_threads: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then `SCILLM_<FIELD>` variables, then non-None keyword overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"SCILLM_{f.name.upper()}")
            if raw is not None and raw != "":
                try:
                    values[f.name] = _parse(f.name, raw)
                except ValueError:
                    kind = _KINDS.get(str(f.type), "valid")
                    raise ValueError(f"SCILLM_{f.name.upper()} must be {kind}, "
                                     f"not {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = replace(cls(), **values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        unknown = [s for s in self.services if s not in SERVICES]
        if unknown:
            raise ValueError(f"unknown service(s) {unknown}; choose from "
                             f"{', '.join(SERVICES)}, or none")
        if not self.services and not self.http_enabled:
            raise ValueError("nothing to serve: no service and no HTTP shim")
        for door in DOORS:
            problem = _target_problem(getattr(self, f"{door}_target"))
            if problem:
                raise ValueError(f"{door}_target: {problem}")
        for f in fields(self):  # `inf`, `nan` read from a variable are no setting
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be 0..65535, got {port}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, "
                             f"not {self.log_level!r}")
        if self.grpc_server not in GRPC_SERVERS:
            raise ValueError(f"grpc_server must be one of {', '.join(GRPC_SERVERS)}, "
                             f"not {self.grpc_server!r}")
        if not 1 <= self.grpc_io_threads <= MAX_IO_THREADS:
            raise ValueError(f"grpc_io_threads must be 1..{MAX_IO_THREADS}, "
                             f"got {self.grpc_io_threads}")
        if self.grace_period_s < 0:
            raise ValueError("grace_period_s must be >= 0")
        if not self.prove_max_timeout_s > 0:
            raise ValueError(f"prove_max_timeout_s must be > 0, got {self.prove_max_timeout_s}")
        if not self.prove_formalize_max_s > 0:
            raise ValueError("prove_formalize_max_s must be > 0, got "
                             f"{self.prove_formalize_max_s}")
        if self.prove_max_memory_mb < 64:
            raise ValueError(f"prove_max_memory_mb must be >= 64, got {self.prove_max_memory_mb}")
        if self.prove_isolation not in ("auto", "bubblewrap", "rlimits"):
            raise ValueError("prove_isolation must be auto, bubblewrap or rlimits, got "
                             f"{self.prove_isolation!r}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1..{MAX_WORKERS}, got {self.workers}")
        if self.max_request_bytes < 1024:
            raise ValueError("max_request_bytes must be >= 1024")
        for name in ("http_read_timeout_s", "default_unary_timeout_s",
                     "default_stream_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.run_retention_days < 0:
            raise ValueError(f"run_retention_days must be >= 0 (0 = keep runs for ever), "
                             f"got {self.run_retention_days}")
        if self.run_retention_days > MAX_RETENTION_DAYS:
            raise ValueError(f"run_retention_days must be at most {MAX_RETENTION_DAYS} (a "
                             f"hundred years), got {self.run_retention_days}")
        if self.max_streams_per_key < 0:
            raise ValueError(f"max_streams_per_key must be >= 0 (0 = no limit), "
                             f"got {self.max_streams_per_key}")
        if self.config_path is not None and not self.config_path.is_file():
            raise ValueError(f"config file {self.config_path} does not exist")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} does not exist")
        if self.trace_url_template:
            try:
                self.trace_url_template.format(trace_id="0" * 32)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"trace_url_template may hold only {{trace_id}}: {exc!r}"
                                 ) from None
            if "{trace_id}" not in self.trace_url_template:
                raise ValueError("trace_url_template must hold {trace_id}")

    def targets(self) -> dict[str, str]:
        """Where this process's own clients reach each of `DOORS` ("" = this process).

        KeyService is served by every process, but a key is checked by the process that
        serves the call it pays for: the key routes follow `completion_target` unless
        `keys_target` says otherwise (share keys between processes with `store_url`)."""
        out = {door: getattr(self, f"{door}_target").strip() for door in DOORS}
        out["keys"] = out["keys"] or out["completion"]
        return out

    @property
    def tls(self) -> bool:
        """Whether the doors use TLS."""
        return self.tls_cert is not None

    def client_tls(self) -> TlsConfig | None:
        """How a client holding these settings dials the mesh (this process's own clients,
        and `scillm doctor --target`): it trusts the client CA (mutual TLS) or the
        certificate chain file, and presents the certificate when client certificates are
        required. None without TLS."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        from scillm.clients import TlsConfig

        mutual = self.tls_client_ca is not None
        return TlsConfig(
            root_certificates=(self.tls_client_ca or self.tls_cert).read_bytes(),
            private_key=self.tls_key.read_bytes() if mutual else None,
            certificate_chain=self.tls_cert.read_bytes() if mutual else None)

    def environment(self) -> dict[str, str | None]:
        """The `SCILLM_*` variables from which `Settings.from_env()` reads these settings
        back (None: unset the variable, the field keeps its default). A master hands its
        settings to its workers this way."""
        out: dict[str, str | None] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                text: str | None = None
            elif isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, tuple):
                text = ",".join(value) if value else "none"
            else:
                text = str(value)
            out[f"SCILLM_{f.name.upper()}"] = text
        return out


#: What a setting's variable must hold, for its error.
_KINDS = {"int": "an integer", "float": "a number",
          "bool": "a boolean (1, true, yes, on or 0, false, no, off)"}
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})
#: The levels `log_level` may name (logging's own).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _parse(name: str, raw: str) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if kind in ("int",):
        return int(raw)
    if kind in ("float",):
        return float(raw)
    if kind in ("bool",):
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:  # before, `maybe` read as off
            raise ValueError(raw)
        return word in _TRUE
    if name == "log_level":
        return raw.strip().upper()
    if name == "services":
        names = tuple(s.strip() for s in raw.split(",") if s.strip())
        return () if names == ("none",) else names
    if "Path" in str(kind):
        return Path(raw)
    return raw


def _target_problem(target: str) -> str:
    """Why `target` is not a gRPC target this process can dial ("" when it is)."""
    target = target.strip()
    if not target or "://" in target or target.startswith(("ipv4:", "ipv6:", "unix:")):
        return ""
    for address in target.split(","):
        host, sep, port = address.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            return (f"{address.strip()!r} is not host:port (use host:port, a comma-separated "
                    "list of them, or dns:///name:port)")
    return ""
