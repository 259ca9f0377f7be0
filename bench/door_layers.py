"""Door layers: the CPU of one chat completion at each layer of the mesh's own path,
in-process, with no socket on the caller's side and the built-in echo provider upstream.

Run: ``.venv/bin/python bench/door_layers.py [--requests N]``.

A mesh is started in this process as `scillm serve --service completion` starts it, and
each layer is called directly, from the outside in, on the same request:

- `door`: the OpenAI door's ASGI app (CompletionsDoor, the endpoint, the client, the
  in-process channel and everything below), as uvicorn calls it but without uvicorn;
- `client`: `ScillmClient.completion.create` over the in-process channel (interceptors,
  servicer, engine);
- `servicer`: `CompletionServicer.Completion` alone (validation, manifest, conversions,
  metrics, engine);
- `engine`: `CompletionEngine.complete` on the request's JSON (routing, retries, echo);
- `conversions`: the four JSON <-> protobuf conversions a door call makes.

The differences between rows are what each layer adds. `completion_bench.py` measures the
whole process over sockets; this one says where inside it the time goes, steadier than a
profiler (no sampling, no tracing overhead). CPU is `time.process_time` per call over
`--requests` calls after a warm-up; absolute figures drift with the machine, so compare
rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop

from scillm.clients import openai_wire
from scillm.server.app import Mesh
from scillm.server.completion import CompletionEngine, CompletionSettings
from scillm.server.completion.servicer import CompletionServicer
from scillm.server.metrics import Metrics
from scillm.server.settings import Settings

CONFIG = """model_list:
  - model_name: bench-echo
    litellm_params:
      model: echo/bench
litellm_settings:
  cache: false
"""
BODY = orjson.dumps({"model": "bench-echo", "max_tokens": 16,
                     "messages": [{"role": "user", "content": "hello"}]})
#: The young-generation threshold `scillm serve` sets (server/app.py).
YOUNG_GC = 20_000


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
            "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8080),
            "client": ("127.0.0.1", 50000),
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(BODY))]}


async def _layers(config: Path, store: Path) -> dict[str, Callable[[], Awaitable[Any]]]:
    mesh = Mesh(Settings(grpc_port=0, http_port=0, config_path=config,
                         services=("completion",), store_path=store))
    await mesh.start()
    app = mesh.asgi_app
    client = mesh.shim_client
    assert app is not None and client is not None
    engine = CompletionEngine(CompletionSettings.from_yaml(config))
    await engine.start()
    servicer = CompletionServicer(engine, Metrics())
    body = orjson.loads(BODY)
    request = openai_wire.request_to_proto(body)
    reply = await client.completion.create(request)

    async def door() -> None:
        sent: list[dict[str, Any]] = []
        read = False

        async def receive() -> dict[str, Any]:
            nonlocal read
            if read:  # the caller never hangs up
                await asyncio.Event().wait()
            read = True
            return {"type": "http.request", "body": BODY, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(_scope(), receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"the door answered {sent}")

    async def conversions() -> None:
        proto = openai_wire.request_to_proto(orjson.loads(BODY))
        openai_wire.request_from_proto(proto)
        openai_wire.response_from_proto(openai_wire.response_to_proto(done))

    done = openai_wire.response_from_proto(reply)
    layers: dict[str, Callable[[], Awaitable[Any]]] = {
        "door": door,
        "client": lambda: client.completion.create(request),
        "servicer": lambda: servicer.Completion(request, None),  # type: ignore[arg-type]
        "engine": lambda: engine.complete(dict(body)),
        "conversions": conversions,
    }
    layers["_stop"] = lambda: asyncio.gather(mesh.stop(0.5), engine.close())
    return layers


async def _measure(requests: int) -> None:
    with tempfile.TemporaryDirectory(prefix="scillm-layers-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(CONFIG)
        layers = await _layers(config, Path(tmp) / "runs.sqlite3")
        stop = layers.pop("_stop")
        try:
            figures: dict[str, float] = {}
            for name, call in layers.items():
                for _ in range(min(2_000, requests)):
                    await call()
                started = time.process_time()
                for _ in range(requests):
                    await call()
                figures[name] = (time.process_time() - started) / requests * 1e6
                print(f"  {name}: {figures[name]:.1f} µs", flush=True)
        finally:
            await stop()
    order = ["door", "client", "servicer", "engine"]
    print("\n| layer | CPU per call | added by the layer |\n| --- | --- | --- |")
    for outer, inner in zip(order, [*order[1:], None], strict=True):
        below = figures[inner] if inner else 0.0
        print(f"| {outer} | {figures[outer]:.1f} µs | {figures[outer] - below:.1f} µs |")
    print(f"| (conversions, inside door and servicer) | {figures['conversions']:.1f} µs | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="calls per layer")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")  # as the bench's meshes run
    gc.set_threshold(YOUNG_GC, 10, 10)
    print(f"door layers, {args.requests} calls each, echo provider, CPU per call:")
    uvloop.run(_measure(args.requests))


if __name__ == "__main__":
    main()
