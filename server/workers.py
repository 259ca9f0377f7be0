"""`scillm serve --workers N`: N worker processes behind the same ports, and their master.

The master serves nothing itself. It reserves the gRPC and HTTP ports (a socket bound with
SO_REUSEPORT that never listens, so it takes no connection: port 0 becomes a concrete port
all workers share), then starts N workers, each a whole `scillm serve` with the master's
settings, those ports and SO_REUSEPORT, so the kernel spreads new connections over the
workers' listening sockets (by a hash of the connection: a single connection stays on one
worker). When every worker is ready the master prints the usual `scillm: gRPC on ...`
line. Each worker has its own health, reflection and in-process channel, as one process
has; a call is served wholly by the worker that accepted its connection.

What the workers share: what lives in Redis (a key's rate windows, with `redis_url` or the
config's router_settings.redis_host and redis_password; the response cache, with
cache_params type redis, whatever `redis_url` says;
CodeWorld sessions), the key and run stores (SQLite files beside `store_path`, or
PostgreSQL), and metrics, through prometheus_client's multiprocess mode (the master gives
the workers one directory; any worker's /metrics, and the master's `metrics_port`, add all
of them up). What each worker keeps to itself, as replicas do: the router's view of the
deployments (cooldowns, latencies, usage-based windows), and rate windows and the cache
when they are in memory (the master says so when Redis is not configured).

Signals: SIGTERM or SIGINT to the master sends SIGTERM to every worker; each drains as a
single process does (NOT_SERVING, then in-flight calls get the grace period), and the
master exits once all have (a worker still running `grace + 10` seconds later is killed).
A worker that exits while serving is replaced, and the master says so on stderr; a worker
that exits before it is ready at start-up stops the master (exit 1) with what it said, as
do workers that keep exiting (`_RESTARTS` times within `_RESTART_WINDOW_S` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field, replace

from .settings import Settings

__all__ = ["serve_workers"]

#: Restarts within `_RESTART_WINDOW_S` seconds after which the master gives up.
_RESTARTS = 5
_RESTART_WINDOW_S = 60.0
#: Seconds a worker has to say it is ready.
_START_TIMEOUT_S = 120.0
_BANNER = "scillm: gRPC"


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    banner: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT that never listens."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return sock


def _shared_state_note(settings: Settings) -> str:
    """What the workers do not share for want of Redis, or "" when they share it all: the
    keys' rate windows (`redis_url`, or the config's router_settings.redis_host) and the
    response cache, when it is on (`litellm_settings.cache_params` type redis: the
    windows' Redis is not the cache's)."""
    windows = bool(settings.redis_url)
    cache_alone = False
    if settings.config_path is not None:
        import yaml

        from .completion import CompletionSettings

        data = yaml.safe_load(settings.config_path.read_text()) or {}
        if isinstance(data, dict):
            windows = windows or bool((data.get("router_settings") or {}).get("redis_host"))
            cache = CompletionSettings.from_mapping(data).cache
            cache_alone = cache.enabled and cache.backend != "redis"
    alone = []
    if not windows:
        alone.append("key rate windows (SCILLM_REDIS_URL or router_settings.redis_host)")
    if cache_alone:
        alone.append("response cache (litellm_settings.cache_params type: redis)")
    if not alone:
        return ""
    return (f"scillm: without Redis for them, each worker keeps its own {' and '.join(alone)}"
            + (", so a key's rpm/tpm limit holds per worker" if not windows else ""))


class _Master:
    def __init__(self, settings: Settings, metrics_dir: str) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.workers: dict[int, _Worker] = {}
        self.stopping = asyncio.Event()
        self.failed = ""  # why the master stops with exit status 1
        self._restarts: deque[float] = deque()

    def worker_environment(self) -> dict[str, str]:
        env = dict(os.environ)
        worker = replace(self.settings, workers=1, reuse_port=True, metrics_port=0)
        for name, value in worker.environment().items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        return env

    async def start_worker(self, index: int) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scillm.server.cli", "serve",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            env=self.worker_environment())
        worker = self.workers[index] = _Worker(index, process)
        asyncio.get_running_loop().create_task(self._read_banner(worker))
        return worker

    async def _read_banner(self, worker: _Worker) -> None:
        stream = worker.process.stdout
        assert stream is not None
        async for raw in stream:  # the worker's stdout: its banner, its shutdown line
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(_BANNER) and not worker.ready.is_set():
                worker.banner = line
                worker.ready.set()
        worker.ready.set()  # exited before saying it was ready: `banner` stays ""

    async def run(self) -> int:
        for index in range(self.settings.workers):
            await self.start_worker(index)
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                await asyncio.gather(*(w.ready.wait() for w in self.workers.values()))
        except TimeoutError:
            self.failed = f"the workers were not ready within {_START_TIMEOUT_S:g}s"
        if not self.failed and any(not w.banner for w in self.workers.values()):
            self.failed = "a worker exited while starting (its error is above)"
        if not self.failed:
            first = self.workers[0].banner
            pids = ", ".join(str(w.process.pid) for w in self.workers.values())
            print(f"{first} [{self.settings.workers} workers: pids {pids}]", flush=True)
            watchers = [asyncio.get_running_loop().create_task(self._watch(i))
                        for i in range(self.settings.workers)]
            await self.stopping.wait()
            for watcher in watchers:
                watcher.cancel()
        await self.stop_all()
        if self.failed:
            print(f"scillm serve: {self.failed}", file=sys.stderr, flush=True)
            return 1
        return 0

    async def _watch(self, index: int) -> None:
        """Replace worker `index` whenever it exits while the master is serving."""
        while not self.stopping.is_set():
            worker = self.workers[index]
            code = await worker.process.wait()
            self._forget(worker.process.pid)
            if self.stopping.is_set():
                return
            how = f"signal {-code}" if code < 0 else f"status {code}"
            now = time.monotonic()
            self._restarts.append(now)
            while self._restarts and now - self._restarts[0] > _RESTART_WINDOW_S:
                self._restarts.popleft()
            if len(self._restarts) > _RESTARTS:
                self.failed = (f"workers exited {len(self._restarts)} times within "
                               f"{_RESTART_WINDOW_S:g}s (worker {index} last, {how})")
                self.stopping.set()
                return
            print(f"scillm: worker {index} (pid {worker.process.pid}) exited with {how}; "
                  "starting another", file=sys.stderr, flush=True)
            replacement = await self.start_worker(index)
            await replacement.ready.wait()
            if replacement.banner:
                print(f"scillm: worker {index} replaced (pid {replacement.process.pid})",
                      file=sys.stderr, flush=True)

    def _forget(self, pid: int) -> None:
        """A worker exited: drop its live gauges (in-flight counts) from the metrics."""
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    async def stop_all(self) -> None:
        """SIGTERM every worker, then wait for each (SIGKILL past grace + 10 s)."""
        self.stopping.set()
        live = [w.process for w in self.workers.values() if w.process.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in live:
            try:
                async with asyncio.timeout(self.settings.grace_period_s + 10):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            self._forget(process.pid)


async def _serve(settings: Settings, metrics_dir: str) -> int:
    master = _Master(settings, metrics_dir)
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if not master.stopping.is_set():
            print(f"scillm: shutting down {settings.workers} workers "
                  f"(grace {settings.grace_period_s:g}s)", flush=True)
        master.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: see server/app.py
        loop.add_signal_handler(sig, stop)
    metrics_server = None
    if settings.metrics_port:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, metrics_dir)  # type: ignore[no-untyped-call]
        metrics_server, _ = start_http_server(settings.metrics_port, settings.grpc_host,
                                              registry=registry)
    try:
        return await master.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()


def serve_workers(settings: Settings) -> int:
    """Run `settings.workers` workers until SIGTERM/SIGINT; the exit status."""
    reserved = [_reserve(settings.grpc_host, settings.grpc_port)]
    settings = replace(settings, grpc_port=reserved[0].getsockname()[1])
    if settings.http_enabled:
        reserved.append(_reserve(settings.http_host, settings.http_port))
        settings = replace(settings, http_port=reserved[1].getsockname()[1])
    note = _shared_state_note(settings)
    if note:
        print(note, file=sys.stderr, flush=True)
    metrics_dir = tempfile.mkdtemp(prefix="scillm-metrics-")
    try:
        return asyncio.run(_serve(settings, metrics_dir))
    finally:
        for sock in reserved:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
