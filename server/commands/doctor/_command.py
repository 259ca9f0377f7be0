"""The `scillm doctor` command: its flags, the report printed, the exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from ..tls_flags import add_tls_arguments, client_tls, env_path
from ._check import DEFAULT_LIVE_TIMEOUT_S, DEFAULT_TIMEOUT_S
from ._expect import EXPECTATIONS, missing_optional, unmet
from ._report import collect, format_table

__all__ = ["add_arguments", "doctor", "run_doctor"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `scillm doctor`. The TLS ones are `scillm serve`'s, read from the same
    variables: on a mesh's host doctor dials it as its processes dial each other."""
    parser.add_argument("--config", type=Path, default=env_path("SCILLM_CONFIG_PATH"),
                        help="model configuration, LiteLLM proxy YAML (default "
                             "$SCILLM_CONFIG_PATH, else the embedded defaults)")
    parser.add_argument("--target", default=os.environ.get("SCILLM_TARGET"),
                        help="also list the gRPC health entries of the mesh at host:port "
                             "(default $SCILLM_TARGET; none: not checked), and, for each "
                             "service it sends to another process (a door: scillm serve "
                             "--service none), those of that process, at its target")
    parser.add_argument("--api-key", default=os.environ.get("SCILLM_API_KEY"),
                        help="key sent to --target as 'authorization: Bearer' (default "
                             "$SCILLM_API_KEY): behind a master key, asking a door where it "
                             "sends each service's calls needs a key (the master key)")
    add_tls_arguments(parser, "--target")
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
    try:
        tls = client_tls(args)
    except (ValueError, OSError) as exc:
        print(f"scillm doctor: {exc}", file=sys.stderr)
        return 2
    checks = await collect(
        getattr(args, "config", None), target=getattr(args, "target", None),
        live=bool(getattr(args, "live", False)),
        timeout_s=float(getattr(args, "timeout", DEFAULT_TIMEOUT_S)), environ=environ,
        tls=tls, api_key=getattr(args, "api_key", None) or None)
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
    elif not expect and (optional := missing_optional(checks)):
        print(f"scillm doctor: ready; optional parts missing: {', '.join(optional)}",
              file=sys.stderr)
    return 1 if reasons and getattr(args, "strict", False) else 0


def run_doctor(args: argparse.Namespace) -> int:
    """`scillm doctor` (the CLI handler): see `doctor`."""
    # gRPC's core logs a failed TLS handshake at INFO on stderr, beside the report that
    # says what it means; read when grpc is first imported, which the checks do.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    return asyncio.run(doctor(args))

