"""`redis`, when the mesh will use one (its state, or the cache): a PING (and AUTH) over TCP."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from ._check import Check, Job, Status, installed

if TYPE_CHECKING:  # imported where used, so building the CLI parser stays cheap
    from ...completion import CompletionSettings

__all__ = ["redis_check"]


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
    if not installed("redis"):
        return Check("redis", Status.MISSING,
                     f"{where} answers PING, but the redis Python package is missing",
                     "pip install -e .[redis]")
    return Check("redis", Status.OK, f"{where} answers PING")


def redis_check(config: CompletionSettings | None,
                environ: Mapping[str, str] | None = None) -> Job:
    """The Redis the mesh will use: `SCILLM_REDIS_URL` (the keys' rate windows and
    sessions) when set, else the config's (router_settings.redis_host, which the windows
    use too, or the response cache's cache_params)."""
    url = (environ or {}).get("SCILLM_REDIS_URL", "")
    if url:
        parts = urlsplit(url)
        try:
            port = parts.port or 6379
        except ValueError:
            return Check("redis", Status.FAILED, f"SCILLM_REDIS_URL has no valid port: {url!r}",
                         "redis://[:password@]host:port")
        return "redis", _redis(parts.hostname or "127.0.0.1", port,
                               unquote(parts.password) if parts.password else None)
    if config is None:
        return Check("redis", Status.SKIPPED, "no model config loaded")
    cache = config.cache
    if cache.backend != "redis" and not cache.redis_host:
        return Check("redis", Status.SKIPPED, "not configured (in-memory cache and windows)")
    if not cache.enabled and cache.backend == "redis":
        return Check("redis", Status.SKIPPED, "configured, but litellm_settings.cache is off")
    password = cache.redis_password.value if cache.redis_password else None
    return "redis", _redis(cache.redis_host or "127.0.0.1", cache.redis_port, password)
