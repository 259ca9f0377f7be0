"""The asyncio load generator of completion_bench.py, run as a separate process.

    .venv/bin/python bench/_completion_load.py '[{"op": "grpc_load", ...}, ...]'

Runs the operations in turn on uvloop and prints one line, `BENCHJSON [results...]`.
HTTP goes over raw asyncio streams (HTTP/1.1, kept alive) so the client costs little;
gRPC goes through `scillm.clients.ScillmClient`, the request converted to its proto once.
The server's CPU per request is read from /proc around each load (`"server": PID`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["cpu_seconds", "http_request_bytes", "tree_pids"]


def tree_pids(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all threads) and its children, seconds."""
    ticks = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def http_request_bytes(path: str, body: dict[str, Any], key: str = "sk-bench") -> bytes:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(raw)}\r\n\r\n"
            ).encode() + raw


async def _http_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         request: bytes) -> tuple[float, float, bytes]:
    """One HTTP/1.1 exchange on a kept-alive connection: (first body byte s, total s, body)."""
    t0 = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    lower = head.lower()
    first = 0.0
    body = bytearray()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            data = await reader.readexactly(size + 2)
            first = first or time.perf_counter() - t0
            body += data[:-2]
    else:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            data = await reader.read(length - len(body))
            if not data:
                raise RuntimeError("connection closed mid-body")
            first = first or time.perf_counter() - t0
            body += data
    return first, time.perf_counter() - t0, bytes(body)


async def _op_http_latency(op: dict[str, Any]) -> dict[str, Any]:
    """Sequential calls on one connection: latency (and first-byte time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", op["port"])
    request = http_request_bytes(op["path"], op["body"], op.get("key", "sk-bench"))
    firsts: list[float] = []
    totals: list[float] = []
    try:
        for _ in range(op.get("warmup", 20)):
            await _http_exchange(reader, writer, request)
        stop = time.perf_counter() + op["duration"]
        while time.perf_counter() < stop and len(totals) < op.get("max", 10**9):
            first, total, _ = await _http_exchange(reader, writer, request)
            firsts.append(first)
            totals.append(total)
    finally:
        writer.close()
    return {"n": len(totals), "p50_ms": _pct(totals, .5) * 1e3, "p99_ms": _pct(totals, .99) * 1e3,
            "ttfb_p50_ms": _pct(firsts, .5) * 1e3, "ttfb_p99_ms": _pct(firsts, .99) * 1e3}


async def _op_http_streams(op: dict[str, Any]) -> dict[str, Any]:
    """`n` streams opened at once, each on its own connection."""
    request = http_request_bytes(op["path"], op["body"], op.get("key", "sk-bench"))
    started = time.perf_counter()
    firsts: list[float] = []
    outcome = {"completed": 0, "failed": 0, "stalled": 0}
    errors: list[str] = []

    async def one() -> None:
        writer = None
        try:
            async with asyncio.timeout(op["stall_s"]):
                reader, writer = await asyncio.open_connection("127.0.0.1", op["port"])
                first, _, body = await _http_exchange(reader, writer, request)
            firsts.append(first)
            ok = body.rstrip().endswith(b"data: [DONE]") and b'"error"' not in body
            outcome["completed" if ok else "failed"] += 1
            if not ok:
                errors.append(body[-200:].decode(errors="replace"))
        except TimeoutError:
            outcome["stalled"] += 1
        except Exception as exc:
            outcome["failed"] += 1
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(one() for _ in range(op["n"])))
    return {"started": op["n"], **outcome, "wall_s": time.perf_counter() - started,
            "ttfb_p50_ms": _pct(firsts, .5) * 1e3, "ttfb_max_ms": max(firsts, default=0) * 1e3,
            "errors": sorted(set(errors))[:3]}


async def _op_grpc_load(op: dict[str, Any]) -> dict[str, Any]:
    from scillm.clients import ScillmClient, openai_wire  # type: ignore[import-not-found]

    request = openai_wire.request_to_proto(op["body"])  # converted once: the load is the mesh
    async with ScillmClient(op["target"]) as client:
        for _ in range(op.get("warmup", 50)):
            await client.completion.create(request)
        latencies: list[float] = []
        errors: list[str] = []
        stop = time.perf_counter() + op["duration"]

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await client.completion.create(request, timeout=10)
                    latencies.append(time.perf_counter() - t0)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        started, cpu = time.perf_counter(), cpu_seconds(op["server"])
        await asyncio.gather(*(worker() for _ in range(op["concurrency"])))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(op["server"]) - cpu
    return {"rps": len(latencies) / elapsed, "cpu_ms": cpu * 1e3 / max(len(latencies), 1),
            "p50_ms": _pct(latencies, .5) * 1e3, "p99_ms": _pct(latencies, .99) * 1e3,
            "errors": len(errors),
            "error_sample": sorted(set(errors))[:3]}


async def _op_grpc_health(op: dict[str, Any]) -> dict[str, Any]:
    """gRPC's own cost through the mesh: Health/Check does no work, so its latency at
    c=1 is the Python gRPC client and server (and the mesh's interceptors) with nothing
    else, and the server's CPU per call under load (`concurrency`, `server`) is the
    floor under any unary call of the gRPC door."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from scillm.clients import ScillmClient

    request = health_pb2.HealthCheckRequest()
    latencies: list[float] = []
    async with ScillmClient(op["target"]) as client:
        stub = health_pb2_grpc.HealthStub(client.channel)
        for _ in range(op.get("warmup", 50)):
            await stub.Check(request, timeout=10)
        stop = time.perf_counter() + op["duration"]

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await stub.Check(request, timeout=10, metadata=[("x-request-id", "bench")])
                latencies.append(time.perf_counter() - t0)

        server = op.get("server")
        cpu = cpu_seconds(server) if server else 0.0
        await asyncio.gather(*(worker() for _ in range(op.get("concurrency", 1))))
        cpu = cpu_seconds(server) - cpu if server else float("nan")
    return {"n": len(latencies), "p50_ms": _pct(latencies, .5) * 1e3,
            "p99_ms": _pct(latencies, .99) * 1e3,
            "cpu_ms": cpu * 1e3 / max(len(latencies), 1)}


async def _grpc_stream_once(client: Any, request: Any) -> tuple[float, int, bool]:
    t0 = time.perf_counter()
    first, events, ended = 0.0, 0, False
    async for event in client.completion.stream(request):
        first = first or time.perf_counter() - t0
        events += 1
        ended = event.HasField("end")
    return first, events, ended


async def _op_grpc_ttfb(op: dict[str, Any]) -> dict[str, Any]:
    from scillm.clients import ScillmClient, openai_wire

    request = openai_wire.request_to_proto(op["body"])
    firsts: list[float] = []
    async with ScillmClient(op["target"]) as client:
        for _ in range(op.get("warmup", 20)):
            await _grpc_stream_once(client, request)
        stop = time.perf_counter() + op["duration"]
        while time.perf_counter() < stop:
            first, _, _ = await _grpc_stream_once(client, request)
            firsts.append(first)
    return {"n": len(firsts), "ttfb_p50_ms": _pct(firsts, .5) * 1e3,
            "ttfb_p99_ms": _pct(firsts, .99) * 1e3}


async def _op_grpc_streams(op: dict[str, Any]) -> dict[str, Any]:
    from scillm.clients import ScillmClient, openai_wire

    request = openai_wire.request_to_proto(op["body"])
    firsts: list[float] = []
    outcome = {"completed": 0, "failed": 0, "stalled": 0}
    errors: list[str] = []
    async with ScillmClient(op["target"]) as client:
        await _grpc_stream_once(client, request)  # the channel is connected

        async def one() -> None:
            try:
                async with asyncio.timeout(op["stall_s"]):
                    first, _, ended = await _grpc_stream_once(client, request)
                firsts.append(first)
                outcome["completed" if ended else "failed"] += 1
            except TimeoutError:
                outcome["stalled"] += 1
            except Exception as exc:
                outcome["failed"] += 1
                errors.append(f"{type(exc).__name__}: {exc}")

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(op["n"])))
        wall = time.perf_counter() - started
    return {"started": op["n"], **outcome, "wall_s": wall,
            "ttfb_p50_ms": _pct(firsts, .5) * 1e3, "ttfb_max_ms": max(firsts, default=0) * 1e3,
            "errors": sorted(set(errors))[:3]}


_OPS = {"http_latency": _op_http_latency, "http_streams": _op_http_streams,
        "grpc_load": _op_grpc_load, "grpc_ttfb": _op_grpc_ttfb, "grpc_health": _op_grpc_health,
        "grpc_streams": _op_grpc_streams}


def main(ops_json: str) -> None:
    import uvloop

    async def run_all() -> list[Any]:
        out = []
        for op in json.loads(ops_json):
            try:
                out.append(await _OPS[op["op"]](op))
            except Exception as exc:
                out.append({"error": f"{type(exc).__name__}: {exc}"})
        return out

    print("BENCHJSON " + json.dumps(uvloop.run(run_all())), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
