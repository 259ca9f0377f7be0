"""`scillm codex-sidecar`: serve the Codex sidecar in this process until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..codex_sidecar import SidecarSettings

__all__ = ["add_arguments", "run_sidecar", "settings_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `scillm codex-sidecar`."""
    env = "env"
    parser.add_argument("--mode", choices=("echo", "forward", "cli"), default="echo",
                        help="echo: answer with the last user message; forward: pass requests "
                             "to --forward-base; cli: run `codex exec --json` per request "
                             "(default echo)")
    parser.add_argument("--host", default=os.environ.get("CODEX_SIDECAR_HOST", "127.0.0.1"),
                        help=f"bind address (default 127.0.0.1; {env} CODEX_SIDECAR_HOST)")
    parser.add_argument("--port", type=int,
                        help=f"port (default 8077, 0 = any; {env} CODEX_SIDECAR_PORT)")
    parser.add_argument("--model", action="append", metavar="NAME",
                        help="a model /v1/models lists (repeatable; default gpt-5); forward "
                             "mode lists the upstream's instead")
    parser.add_argument("--require-key", action="store_true",
                        help="require `Authorization: Bearer <key>` on every route but "
                             "/healthz, the key read from CODEX_SIDECAR_API_KEY (never from "
                             "the command line); the mesh's codex-agent provider sends "
                             "CODEX_AGENT_API_KEY. Without it, anyone who can reach the "
                             "sidecar spends its Codex login: keep it on 127.0.0.1")
    parser.add_argument("--forward-base", default=os.environ.get("CODEX_FORWARD_BASE"),
                        help="forward mode: an OpenAI-compatible base URL such as "
                             f"http://127.0.0.1:8000/v1 ({env} CODEX_FORWARD_BASE); its key "
                             "comes from CODEX_FORWARD_TOKEN, never from the command line")
    parser.add_argument("--codex-bin", default=os.environ.get("CODEX_BIN"),
                        help="the Codex CLI, a path or a command line such as "
                             f"'npx @openai/codex' (default codex on PATH; {env} CODEX_BIN); "
                             "in forward mode, given only to serve X-Codex-Force-Local")
    parser.add_argument("--codex-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for every `codex exec` (repeatable), e.g. "
                             "--codex-arg=--sandbox --codex-arg=read-only")
    parser.add_argument("--workdir", type=Path,
                        help="directory the CLI runs in (default: a fresh temporary "
                             "directory per request)")
    parser.add_argument("--max-concurrency", type=int, default=4,
                        help="CLI runs at once; more wait their turn (default 4)")
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds one CLI run may take before its process group is "
                             "killed (answer 504), and the forward timeout (default 90)")
    parser.add_argument("--retries", type=int, default=1,
                        help="retries of a CLI run that exits with a transient code, while "
                             "nothing has been streamed (default 1)")
    parser.add_argument("--transient-exit-code", type=int, action="append", metavar="CODE",
                        help="an exit code of the CLI that is retried (repeatable; default "
                             "70 and 75)")


def _codex_cmd(spec: str | None, required: bool) -> tuple[str, ...]:
    """The CLI's command line, its program found on PATH; () when not wanted."""
    if not spec and not required:
        return ()
    parts = shlex.split(spec or "codex")
    if not parts:
        raise ValueError("--codex-bin is empty")
    found = shutil.which(parts[0])
    if found is None:
        raise ValueError(f"the Codex CLI {parts[0]!r} was not found: install it "
                         f"(npm install -g @openai/codex) or pass --codex-bin")
    return (found, *parts[1:])


def settings_from_args(args: argparse.Namespace,
                       environ: Mapping[str, str] | None = None) -> SidecarSettings:
    """The sidecar's settings from its flags (ValueError for bad ones)."""
    from ..codex_sidecar import SidecarSettings
    from ..completion import Secret

    env = os.environ if environ is None else environ
    token = env.get("CODEX_FORWARD_TOKEN")
    api_key = env.get("CODEX_SIDECAR_API_KEY") or ""
    if getattr(args, "require_key", False) and not api_key:
        raise ValueError("--require-key needs the key in CODEX_SIDECAR_API_KEY")
    port = args.port
    if port is None:
        try:
            port = int(env.get("CODEX_SIDECAR_PORT") or 8077)
        except ValueError:
            raise ValueError("CODEX_SIDECAR_PORT must be a port number") from None
    return SidecarSettings(
        mode=args.mode, host=args.host, port=port,
        models=tuple(args.model or ("gpt-5",)),
        forward_base=args.forward_base.rstrip("/") if args.forward_base else None,
        forward_key=Secret(token, "CODEX_FORWARD_TOKEN") if token else None,
        codex_cmd=_codex_cmd(args.codex_bin, required=args.mode == "cli"),
        codex_args=tuple(args.codex_arg), workdir=args.workdir,
        max_concurrency=args.max_concurrency, timeout_s=args.timeout, retries=args.retries,
        transient_exit_codes=frozenset(args.transient_exit_code or (70, 75)),
        api_key=Secret(api_key, "CODEX_SIDECAR_API_KEY") if api_key else None)


async def _serve(settings: SidecarSettings) -> None:
    import uvicorn

    from ..codex_sidecar import create_app

    app, sidecar = create_app(settings)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(1024)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            http="httptools", timeout_graceful_shutdown=5)

    class Server(uvicorn.Server):
        """Signals are ours: uvicorn would re-raise SIGTERM once it stops, ending the
        process before the CLI runs still going are killed."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    server = Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # as `scillm serve`
        loop.add_signal_handler(sig, setattr, server, "should_exit", True)
    print(f"scillm codex-sidecar: {settings.mode} on http://{settings.host}:{port}",
          flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        await sidecar.close()


def run_sidecar(args: argparse.Namespace) -> int:
    """Entry point of `scillm codex-sidecar`."""
    import uvloop

    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"scillm codex-sidecar: {exc}", file=sys.stderr)
        return 2
    try:
        uvloop.run(_serve(settings))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"scillm codex-sidecar: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
