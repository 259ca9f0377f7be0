"""`scillm serve --workers N` on real processes: connections spread over the workers, a
key's rpm limit counted across them in Redis, SIGTERM to the master draining every
worker, a killed worker replaced, a start-up failure reported."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from held_upstream import HeldUpstream
from meshutil import ServedProcess
from prometheus_client.multiprocess import MultiProcessCollector

MASTER = "sk-master-workers"
CHAT = {"model": "echo/x", "messages": [{"role": "user", "content": "hi"}]}


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


def _metrics_dir(worker: int) -> Path:
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    found = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    assert found, "a worker without the shared metrics directory"
    return Path(found[0].decode())


def _per_worker(worker: int, name: str, method: str, kind: str = "counter") -> float:
    """The value of metric `name` for `method` in one worker's own metrics file."""
    files = sorted(str(p) for p in _metrics_dir(worker).glob(f"{kind}*_{worker}.db"))
    total = 0.0
    for metric in MultiProcessCollector.merge(files, accumulate=False):
        for sample in metric.samples:
            if sample.name == name and sample.labels.get("method") == method:
                total += sample.value
    return total


def _served(worker: int) -> float:
    return _per_worker(worker, "scillm_rpc_requests_total", "CompletionService/Completion")


def _chat(url: str, key: str = "") -> httpx.Response:
    """One completion on a connection of its own (so the kernel picks a worker for it)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=60) as client:
        return client.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text("model_list:\n  - model_name: echo/*\n    litellm_params: {model: echo/*}\n"
                    "  - model_name: held\n    litellm_params: {model: openai/held, "
                    "api_base: os.environ/HELD_URL, api_key: x}\n")
    return path


def _serve(tmp_path: Path, config: Path, name: str, *args: str,
           **env: str) -> ServedProcess:
    return ServedProcess(name, ["--grpc-port", "0", "--http-port", "0", "--grace", "5",
                                "--service", "completion", "--workers", "2", *args], {
        **os.environ, "SCILLM_CONFIG_PATH": str(config),
        "SCILLM_STORE_PATH": str(tmp_path / name / "runs.sqlite3"), **env},
        tmp_path / f"{name}.log").wait_ready()


@pytest.fixture
def workers(tmp_path: Path, config: Path) -> Iterator[ServedProcess]:
    proc = _serve(tmp_path, config, "workers", HELD_URL="http://127.0.0.1:9/v1")
    yield proc
    proc.stop()


def test_connections_spread_over_the_workers_and_metrics_add_up(
        workers: ServedProcess) -> None:
    pids = _children(workers.proc.pid)
    assert len(pids) == 2
    for pid in pids:  # each asked for room for many sockets (streams hold two each)
        limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
        soft, hard = next(x for x in limits if x.startswith("Max open files")).split()[3:5]
        assert int(soft) >= (65536 if hard == "unlimited" else min(int(hard), 65536))
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: _chat(workers.http_url), range(40)))
    assert all(r.status_code == 200 for r in replies)
    served = [_served(pid) for pid in pids]
    # 40 connections, hashed over two listening sockets: all on one has odds of 2**-39.
    assert sum(served) == 40 and min(served) > 0, served
    metrics = httpx.get(f"{workers.http_url}/metrics", timeout=30).text  # from either one
    line = next(x for x in metrics.splitlines() if x.startswith(
        'scillm_rpc_requests_total{code="OK",method="CompletionService/Completion"'))
    assert float(line.split()[-1]) == 40


def test_a_keys_rpm_limit_holds_across_workers_with_redis(
        tmp_path: Path, config: Path, redis_port: int) -> None:
    proc = _serve(tmp_path, config, "keyed", HELD_URL="http://127.0.0.1:9/v1",
                  SCILLM_MASTER_KEY=MASTER, SCILLM_REDIS_URL=f"redis://127.0.0.1:{redis_port}/2")
    try:
        made = httpx.post(f"{proc.http_url}/key/generate", json={"rpm_limit": 5}, timeout=30,
                          headers={"authorization": f"Bearer {MASTER}"})
        assert made.status_code == 200, made.text
        key = made.json()["key"]
        pids = _children(proc.proc.pid)
        with ThreadPoolExecutor(8) as pool:
            codes = sorted(r.status_code for r in pool.map(
                lambda _: _chat(proc.http_url, key), range(24)))
        assert codes == [200] * 5 + [429] * 19
        # Both workers took calls: the limit was counted across them.
        calls = [_served(pid) for pid in pids]
        assert sum(calls) == 24 and min(calls) > 0, calls
    finally:
        proc.stop()


def test_sigterm_to_the_master_drains_every_worker(tmp_path: Path, config: Path) -> None:
    upstream = HeldUpstream().start()
    proc = _serve(tmp_path, config, "drained", HELD_URL=upstream.url)
    try:
        pids = _children(proc.proc.pid)
        upstream.hold()
        replies: list[httpx.Response] = []
        lock = threading.Lock()

        def held_call() -> None:
            with httpx.Client(timeout=60) as client:
                reply = client.post(f"{proc.http_url}/v1/chat/completions", json={
                    "model": "held", "messages": [{"role": "user", "content": "drained"}]})
            with lock:
                replies.append(reply)

        # Calls on new connections until each worker holds one in flight at the upstream.
        threads: list[threading.Thread] = []
        while True:
            assert len(threads) < 64, "the connections all went to one worker"
            threads.append(threading.Thread(target=held_call))
            threads[-1].start()
            assert upstream.arrived(len(threads))
            in_flight = [_per_worker(pid, "scillm_rpc_in_flight", "CompletionService/Completion",
                                     "gauge") for pid in pids]
            if min(in_flight) > 0:
                break
        proc.proc.send_signal(signal.SIGTERM)
        # Both workers stop taking new connections (their listening sockets close)...
        deadline = time.monotonic() + 60
        while _accepts(proc.http_url):
            assert time.monotonic() < deadline, "the workers still accept connections"
            time.sleep(0.05)
        upstream.release()  # ...and then every call in flight is answered.
        for thread in threads:
            thread.join(60)
        assert len(replies) == len(threads)
        assert all(r.status_code == 200 and "drained" in r.text for r in replies)
        assert proc.proc.wait(60) == 0
        assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
        assert "shutting down 2 workers" in proc.log.read_text()
    finally:
        proc.stop()
        upstream.stop()


def _accepts(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def test_a_killed_worker_is_replaced(workers: ServedProcess) -> None:
    first, second = _children(workers.proc.pid)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while "replaced" not in workers.log.read_text():
        assert workers.proc.poll() is None, workers.log.read_text()
        assert time.monotonic() < deadline, workers.log.read_text()
        time.sleep(0.05)
    log = workers.log.read_text()
    assert f"(pid {first}) exited with signal {int(signal.SIGKILL)}; starting another" in log
    now = _children(workers.proc.pid)
    assert len(now) == 2 and second in now and first not in now
    replies = [_chat(workers.http_url) for _ in range(10)]
    assert all(r.status_code == 200 for r in replies)
    workers.proc.send_signal(signal.SIGTERM)
    assert workers.proc.wait(60) == 0


def test_a_port_taken_by_another_process_is_a_clear_error(tmp_path: Path,
                                                         config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = ServedProcess("taken", ["--grpc-port", "0", "--http-port", str(port),
                                       "--service", "completion", "--workers", "2"],
                             {**os.environ, "SCILLM_CONFIG_PATH": str(config)},
                             tmp_path / "taken.log")
        assert proc.proc.wait(60) == 1
    assert f"cannot start: cannot bind 127.0.0.1:{port}" in proc.log.read_text()


@pytest.mark.parametrize(("extra", "redis_url", "alone"), [
    ("", "", ["key rate windows"]),  # the cache is off: nothing of it to share
    ("litellm_settings: {cache: true}\n", "redis://127.0.0.1:1",
     ["response cache"]),  # the windows' Redis is not the cache's
    ("router_settings: {redis_host: 127.0.0.1}\nlitellm_settings: {cache: true}\n", "",
     ["response cache"]),
    ("litellm_settings: {cache: true, cache_params: {type: redis, host: 127.0.0.1}}\n", "",
     ["key rate windows"]),
    ("router_settings: {redis_host: 127.0.0.1}\nlitellm_settings: {cache: true, "
     "cache_params: {type: redis, host: 127.0.0.1}}\n", "", []),
])
def test_the_master_says_what_the_workers_keep_to_themselves(
        tmp_path: Path, extra: str, redis_url: str, alone: list[str]) -> None:
    """The note said the response cache was shared whenever SCILLM_REDIS_URL was set (the
    cache uses cache_params, not that URL), and that a cache that was off was not shared."""
    from scillm.server.settings import Settings
    from scillm.server.workers import _shared_state_note

    config = tmp_path / "models.yaml"
    config.write_text("model_list: [{model_name: a, litellm_params: {model: echo/a}}]\n"
                      + extra)
    note = _shared_state_note(Settings(config_path=config, redis_url=redis_url))
    said = [what for what in ("key rate windows", "response cache") if what in note]
    assert said == alone, note
