"""The report: every check run concurrently, each bounded, in a stable order; and the
table it prints as."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._check import DEFAULT_LIVE_TIMEOUT_S, DEFAULT_TIMEOUT_S, Check, Job, Status, bounded
from ._mesh import mesh_checks
from ._otlp import otlp_check
from ._providers import live_checks, load_config, provider_checks
from ._redis import redis_check
from ._tools import tool_checks

if TYPE_CHECKING:
    from scillm.clients import TlsConfig

__all__ = ["collect", "format_table"]


async def collect(config_path: Path | None = None, *, target: str | None = None,
                  live: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
                  live_timeout_s: float = DEFAULT_LIVE_TIMEOUT_S,
                  environ: Mapping[str, str] | None = None, tls: TlsConfig | None = None,
                  api_key: str | None = None) -> list[Check]:
    """Every check, run concurrently, each bounded; in a stable order. `tls` and `api_key`:
    how the mesh at `target` is dialed, and the key its calls carry."""
    env = os.environ if environ is None else environ
    config_check, config = load_config(config_path)
    # The OTLP probe's own deadline comes first, so its row says what happened.
    jobs: list[Job] = [*tool_checks(), redis_check(config, env), otlp_check(env, timeout_s * 0.8),
                       config_check]
    if config is not None:
        jobs.extend(provider_checks(config, timeout_s))

    async def run(job: Job) -> Check:
        return job if isinstance(job, Check) else await bounded(job[0], job[1], timeout_s)

    extra: list[Awaitable[list[Check]]] = []
    if live and config is not None:
        extra.append(live_checks(config, live_timeout_s))
    if target:
        extra.append(mesh_checks(target, timeout_s, tls=tls, api_key=api_key))
    results = await asyncio.gather(asyncio.gather(*(run(j) for j in jobs)), *extra)
    checks = list(results[0])
    for more in results[1:]:
        checks.extend(more)
    if not target:
        checks.append(Check("mesh", Status.SKIPPED, "no --target"))
    return checks


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

