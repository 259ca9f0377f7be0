"""Story 8: a burst of 2,000 requests over three Completion replicas, one of them killed
(SIGKILL) midway; nothing is lost.

Three `scillm serve --service completion` processes, and an HTTP shim balancing over them
(gRPC round_robin). The client is the openai SDK (AsyncOpenAI, 64 requests in flight, its
default retries): a call cut by the kill comes back as 503 and the SDK sends it again, and
the shim's channel stops picking the dead replica. Every request carries its own text and
must get exactly that text back.

Run: .venv/bin/python scenarios/replicas_burst.py   (SCENARIO_BURST=N for another size)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from typing import Any

import _kit
import httpx
import openai
from _kit import check, figure, show, step

CONCURRENCY = 64


def story(stack: contextlib.ExitStack[Any]) -> None:
    """Story 8: a 2,000-request burst over three replicas, one killed midway"""
    total = int(os.environ.get("SCENARIO_BURST", "2000"))
    tmp = _kit.workdir(stack)
    replicas = [_kit.serve(stack, f"replica{i}", "--service", "completion", "--no-http",
                           env=_kit.mesh_env(tmp), directory=tmp) for i in range(3)]
    targets = ",".join(r.grpc for r in replicas)
    shim = _kit.serve(stack, "shim", "--service", "none", "--http-port", "0",
                      "--completion-target", targets, env=_kit.mesh_env(tmp), directory=tmp)
    show(f"replicas {targets}; shim {shim.http}")
    victim = replicas[1]

    step(f"{total} requests, {CONCURRENCY} in flight; replica1 killed after {total // 3}")
    statuses: Counter[int] = Counter()

    async def count(response: httpx.Response) -> None:
        statuses[response.status_code] += 1

    async def burst() -> tuple[Counter[str], float, float]:
        http = httpx.AsyncClient(event_hooks={"response": [count]},
                                 limits=httpx.Limits(max_connections=CONCURRENCY))
        sdk = openai.AsyncOpenAI(base_url=f"{shim.http}/v1", api_key="unused",
                                 http_client=http, max_retries=3, timeout=60)
        outcome: Counter[str] = Counter()
        queue = iter(range(total))
        killed_at = 0.0
        started = time.monotonic()

        async def worker() -> None:
            nonlocal killed_at
            for n in queue:
                text = f"request {n} of the burst"
                try:
                    reply = await sdk.chat.completions.create(
                        model="echo/x", messages=[{"role": "user", "content": text}])
                    said = reply.choices[0].message.content
                    outcome["answered" if said == text else "wrong answer"] += 1
                except openai.APIError as exc:
                    outcome[f"lost: {type(exc).__name__}"] += 1
                if outcome["answered"] == total // 3 and not killed_at:
                    killed_at = time.monotonic() - started
                    victim.kill()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        await http.aclose()
        return outcome, killed_at, time.monotonic() - started

    outcome, killed_at, elapsed = asyncio.run(burst())
    show(f"replica1 killed at {killed_at:.2f} s; burst done in {elapsed:.2f} s "
         f"({total / elapsed:.0f} requests/s)")
    show(f"outcome {dict(outcome)}; HTTP statuses seen by the client {dict(statuses)}")
    check(victim.proc.poll() is not None, "replica1 is dead")
    check(outcome["answered"] == total and sum(outcome.values()) == total,
          f"all {total} requests answered with their own text: nothing lost")
    figure(f"{outcome['answered']}/{total} answered, 0 lost; replica killed after "
           f"{total // 3}; {sum(n for s, n in statuses.items() if s != 200)} error replies "
           "retried by the SDK")


if __name__ == "__main__":
    _kit.main(story)
