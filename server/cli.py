"""The `scillm` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .commands.codex_sidecar import add_arguments as add_sidecar_arguments
from .commands.doctor import add_arguments as add_doctor_arguments
from .commands.tls_flags import add_tls_arguments
from .settings import DOORS, GRPC_SERVERS, MAX_RETENTION_DAYS, MAX_WORKERS, SERVICES, Settings

if TYPE_CHECKING:  # imported where used: the parser is built on every run
    from scillm.clients import TlsConfig

__all__ = ["main"]


def _services(names: list[str] | None) -> tuple[str, ...] | None:
    """`--service` values: None when not given, () for `none` (a shim-only process)."""
    if not names:
        return None
    if "none" in names:
        if len(names) > 1:
            raise ValueError("--service none cannot be combined with other services")
        return ()
    return tuple(names)


#: The HTTP clients' loggers: each logs every request at INFO, a line per request on the
#: hot path (httpx2 is the MCP SDK's, for streamable-HTTP MCP servers).
_NOISY = ("httpx", "httpcore", "httpx2", "httpcore2")


def quiet_http_clients() -> None:
    """Keep the HTTP clients' per-request lines out of the log (WARNING and above stay)."""
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _serve(args: argparse.Namespace) -> int:
    import uvloop

    from .app import serve

    try:
        settings = Settings.from_env(
            grpc_host=args.host, grpc_port=args.grpc_port, http_host=args.http_host,
            http_port=args.http_port, config_path=args.config,
            services=_services(args.service), http_enabled=False if args.no_http else None,
            **{f"{door}_target": getattr(args, f"{door}_target") for door in DOORS},
            grace_period_s=args.grace, tls_cert=args.tls_cert, tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca, workers=args.workers,
            grpc_server=args.grpc_server, run_retention_days=args.run_retention_days)
    except ValueError as exc:
        print(f"scillm serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_http_clients()
    if settings.workers > 1:
        from .workers import serve_workers

        try:
            return serve_workers(settings)
        except KeyboardInterrupt:
            return 130
        except Exception as exc:  # start-up failure (a port, the config): no traceback
            logging.getLogger("scillm.server").debug("start-up failed", exc_info=exc)
            print(f"scillm serve: cannot start: {exc}", file=sys.stderr)
            return 1
    try:
        uvloop.run(serve(settings))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # start-up failure: a message, not a traceback
        logging.getLogger("scillm.server").debug("start-up failed", exc_info=exc)
        print(f"scillm serve: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _codeworld_run(args: argparse.Namespace) -> int:
    import uvloop

    from scillm.bridges.cli.codeworld import load_spec, run_codeworld

    from .commands._local import local_mesh

    try:
        raw = load_spec(args.spec)
    except OSError as exc:
        print(f"scillm codeworld: cannot read {args.spec}: {exc.strerror}", file=sys.stderr)
        return 2
    tls = _tls("codeworld", args)
    if tls is False:
        return 2
    return _quietly("codeworld", lambda: uvloop.run(
        run_codeworld(args.spec, raw, args.target, local_mesh, args.api_key, tls=tls)))


def _prove(args: argparse.Namespace) -> int:
    import uvloop

    from scillm.bridges.cli import prove

    from .commands._local import local_mesh

    try:
        if args.action == "batch":
            envelope = prove.batch_envelope(args.file.read_text(encoding="utf-8-sig"),
                                            backend=args.backend,
                                            model=args.model, max_seconds=args.max_seconds,
                                            no_cache=args.no_cache,
                                            smt_solver=args.smt_solver)
        else:
            envelope = prove.run_envelope(args.statement, backend=args.backend,
                                          proof=args.proof, preamble=args.preamble,
                                          model=args.model, max_seconds=args.max_seconds,
                                          no_cache=args.no_cache, smt_solver=args.smt_solver)
    except (OSError, ValueError, RecursionError) as exc:
        print(f"scillm prove: {exc}", file=sys.stderr)
        return 2
    tls = _tls("prove", args)
    if tls is False:
        return 2
    return _quietly("prove", lambda: uvloop.run(prove.run_prove(
        envelope, args.target, local_mesh, single=args.action == "run",
        api_key=args.api_key, tls=tls)))


def _tls(verb: str, args: argparse.Namespace) -> TlsConfig | Literal[False] | None:
    """How a client verb dials --target (`commands.tls_flags`); False, said, when its TLS
    settings cannot be used."""
    from .commands.tls_flags import client_tls

    try:
        return client_tls(args)
    except (ValueError, OSError) as exc:
        print(f"scillm {verb}: {exc}", file=sys.stderr)
        return False


def _quietly(verb: str, run: Callable[[], int]) -> int:
    """A client verb's exit status, without a traceback for Ctrl-C (130) or for a reader
    that left (`| head -1`: 141, as a shell reports SIGPIPE)."""
    try:
        return run()
    except KeyboardInterrupt:
        print(f"scillm {verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Python flushes stdout at exit, into the same closed pipe: point it elsewhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _doctor(args: argparse.Namespace) -> int:
    from .commands.doctor import run_doctor

    return run_doctor(args)


def _codex_sidecar(args: argparse.Namespace) -> int:
    from .commands.codex_sidecar import run_sidecar

    return run_sidecar(args)


def _runs(args: argparse.Namespace) -> int:
    from scillm.bridges.cli import runs

    from .commands._local import local_mesh
    from .manifests import agent_trace_dir, is_store_url

    path = args.store or Settings.from_env().store_path
    if args.action == "prune":
        from .codeworld import session_db_path

        # The agent traces and CodeWorld session history beside the store: a SQLite
        # store's, else this machine's.
        beside = Settings.from_env().store_path if is_store_url(path) else Path(path)
        return runs.prune_runs(path, args.older_than, dry_run=args.dry_run,
                               trace_dir=agent_trace_dir(beside),
                               session_db=session_db_path(beside))
    if args.action == "list":
        return runs.list_runs(path, session=args.session, track=args.track,
                              service=args.service, limit=args.limit)
    if args.action == "show":
        return runs.show_run(path, args.run_id)
    import uvloop

    tls = _tls("runs", args)
    if tls is False:
        return 2
    return _quietly("runs", lambda: uvloop.run(
        runs.replay_run(path, args.run_id, args.target, local_mesh, args.api_key, tls=tls)))


def _days(text: str) -> int:
    """`--older-than`: a whole number of days, at least 1."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if not 1 <= days <= MAX_RETENTION_DAYS:
        raise argparse.ArgumentTypeError(f"must be at least 1 day and at most "
                                         f"{MAX_RETENTION_DAYS} (a hundred years), got {days}")
    return days


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `scillm`."""
    parser = argparse.ArgumentParser(
        prog="scillm",
        description="SciLLM: a typed gRPC gateway for scientific LLM work "
                    "(Completion, Prove, CodeWorld, Agent).")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="serve the mesh: gRPC (default 127.0.0.1:50051) and the OpenAI HTTP "
                      "shim (default 127.0.0.1:4000)",
        description="Start the services in one process on uvloop (one gRPC server with "
                    "grpc.aio's API), with health, reflection and the OpenAI-compatible "
                    "HTTP shim. Each service can run "
                    "in its own process (--service NAME) and the shim in one of its own "
                    "(--service none); the --*-target flags say where this process's "
                    "callers (the shim; Prove, CodeWorld and Agent calling Completion) "
                    "reach a service living elsewhere. Settings also come from SCILLM_* "
                    "environment variables (SCILLM_GRPC_PORT, SCILLM_COMPLETION_TARGET, "
                    "...).")
    serve.add_argument("--host", help="gRPC bind address (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 50051; 0 = any)")
    serve.add_argument("--http-host", help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default 4000; 0 = any)")
    serve.add_argument("--no-http", action="store_true", help="serve gRPC only")
    serve.add_argument("--service", action="append", choices=(*SERVICES, "none"),
                       metavar="NAME",
                       help=f"serve only this service (repeatable): {', '.join(SERVICES)}; "
                            "`none` serves no service: an HTTP shim in front of services "
                            "in other processes (give their --*-target)")
    here = "this process"
    for door, callers, default in (
            ("completion", "the shim's completions and the model calls of Prove, "
                           "CodeWorld and Agent", here),
            ("prove", "the shim's certainly/... and lean4/... models and /bridge/complete",
             here),
            ("codeworld", "the shim's codeworld/... models and /bridge/complete", here),
            ("agent", "the shim's agent/<model> models and /agent/run", here),
            ("keys", "the shim's /key/generate, /key/info and /key/delete",
             "where completions go")):
        serve.add_argument(f"--{door}-target", metavar="TARGET",
                           help=f"where {callers} go: host:port, a comma-separated list, "
                                f"or dns:///name:port, balanced round_robin (default "
                                f"{default}; env SCILLM_{door.upper()}_TARGET)")
    serve.add_argument("--config", type=Path,
                       help="model configuration in LiteLLM's proxy YAML format (the "
                            "response cache is off unless it sets litellm_settings.cache: "
                            "true)")
    serve.add_argument("--grace", type=float,
                       help="seconds in-flight calls get after SIGTERM, SIGINT or SIGHUP "
                            "(default 10)")
    serve.add_argument("--grpc-server", choices=GRPC_SERVERS,
                       help="the gRPC server: native (pygrpc-native, the default: grpc.aio's "
                            "API with the HTTP/2 work in Rust, about half grpcio's CPU per "
                            "call) or grpcio (grpc.aio itself); with TLS always grpcio "
                            "(env SCILLM_GRPC_SERVER)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help=f"serve from N worker processes sharing the ports (SO_REUSEPORT; "
                            f"1..{MAX_WORKERS}, default 1 = this process). A master starts "
                            "them, replaces one that dies, and on SIGTERM (or SIGINT, "
                            "SIGHUP) drains them all. They share key rate windows and "
                            "sessions only through Redis (SCILLM_REDIS_URL or the config's "
                            "router_settings.redis_host), the response cache only through "
                            "cache_params type redis, the "
                            "key and run stores through their files or PostgreSQL, and "
                            "metrics (any worker's /metrics counts all); each keeps its "
                            "own view of the deployments (cooldowns, latencies)")
    serve.add_argument("--run-retention-days", type=int, metavar="DAYS",
                       help="delete runs (and their agent traces) inactive for more than DAYS "
                            "days, at start and hourly; a run still streaming is active. 0 = "
                            "keep them for ever (the default; env SCILLM_RUN_RETENTION_DAYS)")
    serve.add_argument("--tls-cert", type=Path,
                       help="PEM certificate chain: gRPC and HTTP use TLS (with --tls-key); "
                            "it must name the bind host (127.0.0.1 by default)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path,
                       help="PEM CA that client certificates must chain to (mutual TLS)")
    serve.set_defaults(func=_serve)

    target_help = ("mesh to use (default $SCILLM_TARGET or 127.0.0.1:50051); when none "
                   "answers, a private mesh is started in this process")
    key_help = ("key sent to the mesh as 'authorization: Bearer' (default $SCILLM_API_KEY): "
                "a mesh with a master key needs its master key or a virtual key")
    codeworld = sub.add_parser("codeworld", help="run competing code strategies")
    cw_sub = codeworld.add_subparsers(dest="action", required=True)
    cw_run = cw_sub.add_parser(
        "run", help="run SPEC.json: every strategy on every item, in the sandbox",
        description="Print each run and the summary as JSON lines on stdout, a progress "
                    "bar on stderr. Exit 0 when the run completed, whatever the scores; 1 on "
                    "errors; 2 when SPEC.json cannot be read.")
    cw_run.add_argument("spec", type=Path, metavar="SPEC.json",
                        help="the seed's envelope: items, strategies, ...")
    cw_run.add_argument("--target", default=os.environ.get("SCILLM_TARGET", "127.0.0.1:50051"),
                        help=target_help)
    cw_run.add_argument("--api-key", default=os.environ.get("SCILLM_API_KEY"), help=key_help)
    add_tls_arguments(cw_run, "--target")
    cw_run.set_defaults(func=_codeworld_run)

    prove = sub.add_parser("prove", help="check formal obligations (Certainly)")
    prove_sub = prove.add_subparsers(dest="action", required=True)
    batch = prove_sub.add_parser(
        "batch", help="check FILE.jsonl (one item per line)",
        description="Print each item's result as it finishes and the summary as JSON lines, "
                    "a progress bar on stderr. Exit 0 when every item was checked, whatever "
                    "the verdicts; 1 on errors; 2 when FILE.jsonl cannot be read or holds no "
                    "item.")
    batch.add_argument("file", type=Path, metavar="FILE.jsonl",
                       help='items: {"item_id", "backend", "statement", "proof", "preamble", '
                            '"requirement_text", "smt_solver"}')
    one = prove_sub.add_parser(
        "run", help='check one statement, or a .v / .smt2 / .lean file',
        description="Exit 0 when proved, 3 when checked and not proved, 1 on errors, 2 when "
                    "the statement cannot be read.")
    one.add_argument("statement", help="an SMT-LIB2 goal, a Coq theorem, or a file path")
    one.add_argument("--proof", default="", help="the proof (Coq/Lean), with a statement")
    one.add_argument("--preamble", default="", help="declarations placed before it")
    solvers = ("z3", "cvc5", "both")
    both = "both: a cross-check, PROVED only when both prove it"
    one.add_argument("--smt-solver", choices=solvers,
                     help=f"the SMT solver that checks it: z3, cvc5, or {both}; implies "
                          "--backend smt (default: the server's, z3)")
    batch.add_argument("--smt-solver", choices=solvers,
                       help="the SMT solver of the smt items that name none (an item's "
                            f"smt_solver wins): z3, cvc5, or {both} (default: the "
                            "server's, z3)")
    for p in (batch, one):
        p.add_argument("--backend", choices=("smt", "coq", "lean4"),
                       help="prover (default: per item, else the first ready one)")
        p.add_argument("--model", help="completion model formalizing requirement_text items")
        p.add_argument("--max-seconds", type=float, help="time limit per item")
        p.add_argument("--no-cache", action="store_true",
                       help="check every item again instead of answering from the verdict cache")
        p.add_argument("--target", default=os.environ.get("SCILLM_TARGET", "127.0.0.1:50051"),
                       help=target_help)
        p.add_argument("--api-key", default=os.environ.get("SCILLM_API_KEY"), help=key_help)
        add_tls_arguments(p, "--target")
        p.set_defaults(func=_prove)

    runs = sub.add_parser("runs", help="list, show, replay and prune stored runs (manifests)")
    runs_sub = runs.add_subparsers(dest="action", required=True)
    store_help = ("run store: a SQLite file or a postgresql://user:pass@host:port/db URL "
                  "(default $SCILLM_STORE_URL, else $SCILLM_STORE_PATH or "
                  "~/.scillm/runs.sqlite3)")
    runs_list = runs_sub.add_parser(
        "list", help="stored runs, newest first, each with its state",
        description="Stored runs, newest first, one line each: run id, start time, service, "
                    "state (done, running, interrupted or failed: ended with its result; "
                    "still running; ended without it, as when its caller left; ended by an "
                    "error, kept with the error), session, track, items and model.")
    runs_list.add_argument("--session", help="only this session")
    runs_list.add_argument("--track", help="only this track")
    runs_list.add_argument("--service", choices=SERVICES, help="only this service")
    runs_list.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    runs_show = runs_sub.add_parser("show", help="manifest, request and result of a run")
    runs_show.add_argument("run_id", help="run id (a unique prefix is enough)")
    runs_replay = runs_sub.add_parser(
        "replay", help="re-execute a run with its stored inputs and report what differs",
        description="Exit 0 when the replay matches, 3 when something differs. Outcomes "
                    "derived from wall time (CodeWorld's speed metric, and the ranks and "
                    "scores built on it) are listed apart under \"volatile\" and do not "
                    "count as differences.")
    runs_replay.add_argument("run_id", help="run id (a unique prefix is enough)")
    runs_replay.add_argument("--target",
                             default=os.environ.get("SCILLM_TARGET", "127.0.0.1:50051"),
                             help=target_help)
    runs_replay.add_argument("--api-key", default=os.environ.get("SCILLM_API_KEY"),
                             help=key_help)
    add_tls_arguments(runs_replay, "--target")
    runs_prune = runs_sub.add_parser(
        "prune", help="delete the runs inactive for more than DAYS days",
        description="Delete from the store the runs whose last activity (their end; for a "
                    "run still streaming, the last time its process said it was active, "
                    "hourly) is more than DAYS days old, and the agent traces beside the "
                    "store last written before then, and the CodeWorld session runs "
                    "recorded before then in codeworld.sqlite3 beside it; print how many. "
                    "Serving processes do "
                    "the same by themselves with SCILLM_RUN_RETENTION_DAYS. Safe while they "
                    "serve. Exit 0; 1 when there is no store.")
    runs_prune.add_argument("--older-than", type=_days, required=True, metavar="DAYS",
                            help="days since a run's last activity (a whole number, >= 1)")
    runs_prune.add_argument("--dry-run", action="store_true",
                            help="count what would be removed; remove nothing")
    for p in (runs_list, runs_show, runs_replay, runs_prune):
        p.add_argument("--store", default=os.environ.get("SCILLM_STORE_URL") or None,
                       help=store_help)
        p.set_defaults(func=_runs)

    doctor = sub.add_parser(
        "doctor", help="is every part ready? providers, z3, coqc, lean, bubblewrap, redis, OTLP",
        description="List every part (configured providers, z3, coqc, coqtop, lean, "
                    "bubblewrap, node, redis, where traces go (the OTLP endpoint of "
                    "OTEL_EXPORTER_OTLP_ENDPOINT) and whether its TraceService answers, and "
                    "with --target the mesh's gRPC health entries, those of the processes "
                    "it sends services' calls to included, each at its target) as OK, "
                    "MISSING, FAILED or SKIPPED, with a hint. --target is dialed with TLS "
                    "given the mesh's TLS settings (--tls-cert, --tls-key, --tls-client-ca, "
                    "or their SCILLM_TLS_* variables). "
                    "Exit 0; with --strict, 1 when an expected part is not OK; 2 on an "
                    "unknown --expect name or unusable TLS settings.")
    add_doctor_arguments(doctor)
    doctor.set_defaults(func=_doctor)

    sidecar = sub.add_parser(
        "codex-sidecar",
        help="serve a Codex sidecar: an OpenAI-compatible HTTP server in front of the Codex "
             "CLI, for codex-agent/<model>",
        description="Serve GET /healthz, GET /v1/models (with capabilities.chat) and POST "
                    "/v1/chat/completions (JSON, or SSE with \"stream\": true) in this "
                    "process until SIGTERM/SIGINT. Modes: echo (the last user message back), "
                    "forward (to another OpenAI-compatible base; X-Codex-Force-Local: 1 runs "
                    "the CLI instead when --codex-bin is given), cli (`codex exec --json` per "
                    "request: reasoning as reasoning_content, the last agent message as "
                    "content; a concurrency cap, a timeout that kills the run's process "
                    "group, a retry on transient exit codes, 401 when the CLI has no "
                    "credentials). Point the mesh at it with CODEX_AGENT_API_BASE or a "
                    "deployment's api_base. Exit 2 on bad flags or a missing CLI.")
    add_sidecar_arguments(sidecar)
    sidecar.set_defaults(func=_codex_sidecar)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scillm` console script."""
    # The sandbox and provers start subprocesses; gRPC's fork handlers are not needed
    # (no child uses gRPC) and would log a line per fork. Read by grpc at import.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
