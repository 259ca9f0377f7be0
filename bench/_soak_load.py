"""The load generator of soak_bench.py, run as a separate process.

    .venv/bin/python bench/_soak_load.py '{"http": PORT, "grpc": "127.0.0.1:PORT",
                                            "duration": S, "rates": {...}}'

Open loop on uvloop: each kind of request is started at a fixed rate (per second) for
`duration` s, whatever the replies do, and every request is checked and classified:

- `ok`: the expected answer (the echoed nonce text, the known verdicts, the known sum),
  with its terminal event (`data: [DONE]`, the gRPC `end`/`summary` event);
- `expected_error`: a typed error: an HTTP status in EXPECTED_HTTP with OpenAI's error
  body (or, in a started stream, `data: {"error": ...}` then `[DONE]`), or a gRPC status in
  EXPECTED_GRPC; the content received before it must be a prefix of the answer;
- `lost`: no answer within DEADLINE_S, or the connection closed without an error;
- `garbled`: anything else (wrong content or verdict, malformed JSON or SSE, a stream
  without its terminal event, an untyped or unexpected status such as 500/INTERNAL).

Prints `PROGRESS {json}` once a minute and `SOAKJSON {json}` at the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

DEADLINE_S = 30.0
DRAIN_S = 45.0  # after the duration, how long in-flight requests may take to finish
MAX_IN_FLIGHT = 4000
EXPECTED_HTTP = {408, 429, 502, 503, 504}
EXPECTED_GRPC = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED"}
ERROR_KEYS = {"message", "type", "param", "code"}
MODEL = "soak"


class Verdict(Exception):
    """How one request ended, when not ok: `outcome` and a short reason."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


def garbled(reason: str) -> Verdict:
    return Verdict("garbled", reason)


# -- HTTP over raw asyncio streams, one connection per request ---------------------------------


async def http_post(port: int, body: dict[str, Any]) -> tuple[int, bytes, bytes]:
    """(status, lower-cased head, body). Connection-level failures raise Verdict('lost')."""
    raw = json.dumps(body, separators=(",", ":")).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Content-Type: application/json\r\nConnection: close\r\n"
               f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        data = bytearray()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data += (await reader.readexactly(size + 2))[:-2]
        elif b"content-length:" in lower:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            data += await reader.readexactly(length)
        else:
            data += await reader.read()
        return status, bytes(lower), bytes(data)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError) as exc:
        raise Verdict("lost", f"connection dropped: {type(exc).__name__}") from None
    except ValueError as exc:
        raise garbled(f"malformed HTTP framing: {exc}") from None
    finally:
        if writer is not None:
            writer.close()


def http_error(status: int, data: bytes) -> Verdict:
    try:
        error = json.loads(data)["error"]
        typed = isinstance(error, dict) and ERROR_KEYS <= set(error)
    except (ValueError, KeyError, TypeError):
        typed = False
    if not typed:
        return garbled(f"HTTP {status} without OpenAI's error body: {data[:80]!r}")
    if status in EXPECTED_HTTP:
        return Verdict("expected_error", f"HTTP {status} {error.get('type')}")
    return garbled(f"HTTP {status} {error.get('type')}: {str(error.get('message'))[:80]}")


async def http_unary(port: int, text: str) -> None:
    status, _, data = await http_post(port, {"model": MODEL, "messages": [
        {"role": "user", "content": text}]})
    if status != 200:
        raise http_error(status, data)
    try:
        content = json.loads(data)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise garbled(f"malformed completion JSON: {data[:80]!r}") from None
    if content != text:
        raise garbled(f"wrong content: {str(content)[:60]!r}")


async def http_stream(port: int, text: str) -> None:
    status, head, data = await http_post(port, {
        "model": MODEL, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": text}]})
    if status != 200:
        raise http_error(status, data)
    if b"text/event-stream" not in head:
        raise garbled("stream reply is not text/event-stream")
    events = data.decode(errors="replace").split("\n\n")
    if events[-1].strip():
        raise garbled(f"SSE does not end with a blank line: {events[-1][-60:]!r}")
    events = [e for e in events if e.strip()]
    if not events or events[-1] != "data: [DONE]":
        raise garbled("stream without data: [DONE]")
    content, error = [], None
    for event in events[:-1]:
        if not event.startswith("data: ") or "\n" in event:
            raise garbled(f"malformed SSE event: {event[:60]!r}")
        try:
            payload = json.loads(event[6:])
        except ValueError:
            raise garbled(f"malformed SSE JSON: {event[:60]!r}") from None
        if error is not None:
            raise garbled("an event after the in-band error")
        if "error" in payload:
            error = payload["error"]
            continue
        for choice in payload.get("choices") or ():
            content.append((choice.get("delta") or {}).get("content") or "")
    got = "".join(content)
    if error is not None:
        if not (isinstance(error, dict) and ERROR_KEYS <= set(error)):
            raise garbled(f"in-band error without OpenAI's shape: {error!r:.80}")
        if not text.startswith(got):
            raise garbled("content before the in-band error is not a prefix of the answer")
        raise Verdict("expected_error", f"in-band {error.get('type')}")
    if got != text:
        raise garbled(f"wrong streamed content: {got[:60]!r}")


# -- gRPC ------------------------------------------------------------------------------------


def grpc_error(err: Any, started: float) -> Verdict:
    name = err.code.name
    if name == "DEADLINE_EXCEEDED" and time.monotonic() - started >= DEADLINE_S - 0.5:
        return Verdict("lost", "no answer within the deadline (gRPC)")
    if name in EXPECTED_GRPC:
        return Verdict("expected_error", f"gRPC {name}")
    return garbled(f"gRPC {name}: {err.message[:80]}")


async def grpc_unary(client: Any, text: str) -> None:
    from scillm.clients import RPCError, openai_wire

    started = time.monotonic()
    try:
        reply = await client.completion.create(
            {"model": MODEL, "messages": [{"role": "user", "content": text}]},
            timeout=DEADLINE_S)
    except RPCError as err:
        raise grpc_error(err, started) from None
    content = openai_wire.message_from_proto(reply.choices[0].message)["content"] \
        if reply.choices else None
    if content != text:
        raise garbled(f"wrong content: {str(content)[:60]!r}")


async def grpc_stream(client: Any, text: str) -> None:
    from scillm.clients import RPCError

    started = time.monotonic()
    content: list[str] = []
    ended = after_end = False
    try:
        async for event in client.completion.stream(
                {"model": MODEL, "messages": [{"role": "user", "content": text}]},
                timeout=DEADLINE_S):
            if ended:
                after_end = True
            if event.HasField("end"):
                ended = True
            elif event.HasField("chunk"):
                content.extend(c.delta.content for c in event.chunk.choices)
    except RPCError as err:
        verdict = grpc_error(err, started)
        if verdict.outcome == "expected_error" and not text.startswith("".join(content)):
            raise garbled("content before the error is not a prefix of the answer") from None
        raise verdict from None
    if after_end:
        raise garbled("an event after the end event")
    if not ended:
        raise garbled("stream closed OK without its end event")
    if "".join(content) != text:
        raise garbled(f"wrong streamed content: {''.join(content)[:60]!r}")


async def prove(client: Any, seq: int) -> None:
    from scillm.clients import RPCError
    from scillm.prove.v1 import prove_pb2 as pb

    k = seq % 1000 + 1
    expected = {f"p{seq}": "VERDICT_PROVED", f"r{seq}": "VERDICT_REFUTED"}
    request = pb.ProveRequest(no_cache=True, items=[
        pb.Obligation(item_id=f"p{seq}", backend=pb.BACKEND_SMT,
                      preamble="(declare-const x Int)", statement=f"(> (+ x {k}) x)"),
        pb.Obligation(item_id=f"r{seq}", backend=pb.BACKEND_SMT,
                      preamble="(declare-const x Int)", statement=f"(> x {k})")])
    request.limits.timeout.FromSeconds(10)
    got: dict[str, str] = {}
    summary = after = False
    started = time.monotonic()
    try:
        async for event in client.prove.prove(request, timeout=DEADLINE_S):
            if summary:
                after = True
            if event.HasField("summary"):
                summary = True
            elif event.HasField("result"):
                got[event.result.item_id] = pb.Verdict.Name(event.result.verdict)
    except RPCError as err:
        raise grpc_error(err, started) from None
    if after or not summary:
        raise garbled("Prove stream without its summary last")
    if got != expected:
        raise garbled(f"wrong verdicts: {got}")


async def codeworld(client: Any, seq: int) -> None:
    from scillm.clients import RPCError
    from scillm.codeworld.v1 import codeworld_pb2 as pb

    numbers = [seq % 97, seq % 13, 7]
    task = pb.Task(task_id=f"t{seq}")
    task.context.update({"input": numbers, "expected": sum(numbers)})
    request = pb.CodeWorldRunRequest(items=[task], strategies=[pb.Strategy(
        name="sum", source="def solve(task, context):\n    return sum(context['input'])\n")])
    request.limits.timeout.FromSeconds(5)
    runs: list[Any] = []
    summary = after = False
    started = time.monotonic()
    try:
        async for event in client.codeworld.run(request, timeout=DEADLINE_S):
            if summary:
                after = True
            if event.HasField("summary"):
                summary = True
            elif event.HasField("run"):
                runs.append(event.run)
    except RPCError as err:
        raise grpc_error(err, started) from None
    if after or not summary:
        raise garbled("CodeWorld stream without its summary last")
    if len(runs) != 1 or runs[0].status != pb.RUN_STATUS_OK \
            or runs[0].result.number_value != sum(numbers):
        detail = [(pb.RunStatus.Name(r.status), r.result.number_value, r.error[:60])
                  for r in runs]
        raise garbled(f"wrong CodeWorld run: {detail}")


# -- the driver --------------------------------------------------------------------------------


async def run(op: dict[str, Any]) -> dict[str, Any]:
    from scillm.clients import ScillmClient

    nonce = uuid.uuid4().hex[:10]
    outcomes: Counter[tuple[str, str]] = Counter()
    reasons: Counter[tuple[str, str, str]] = Counter()
    samples: dict[str, list[str]] = defaultdict(list)
    latencies: dict[str, list[float]] = defaultdict(list)
    per_minute: dict[int, Counter[str]] = defaultdict(Counter)
    skipped: Counter[str] = Counter()
    in_flight: set[asyncio.Task[None]] = set()
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]

    async with ScillmClient(op["grpc"]) as client:
        calls = {
            "http_unary": lambda seq, text: http_unary(op["http"], text),
            "http_stream": lambda seq, text: http_stream(op["http"], text),
            "grpc_unary": lambda seq, text: grpc_unary(client, text),
            "grpc_stream": lambda seq, text: grpc_stream(client, text),
            "prove": lambda seq, text: prove(client, seq),
            "codeworld": lambda seq, text: codeworld(client, seq),
        }
        t0 = time.monotonic()
        print("STARTED", flush=True)

        async def one(kind: str, seq: int) -> None:
            rng = random.Random(seq)
            text = f"{nonce}-{kind}-{seq} " + " ".join(rng.choices(words, k=rng.randint(2, 12)))
            started = time.monotonic()
            outcome, reason = "ok", ""
            try:
                async with asyncio.timeout(DEADLINE_S + 2):
                    await calls[kind](seq, text)
            except Verdict as v:
                outcome, reason = v.outcome, v.reason
            except TimeoutError:
                outcome, reason = "lost", "no answer within the deadline"
            except Exception as exc:  # a client-side surprise: count it, keep going
                outcome, reason = "garbled", f"client exception {type(exc).__name__}: {exc}"
            elapsed = time.monotonic() - started
            outcomes[(kind, outcome)] += 1
            per_minute[int((started - t0) // 60)][outcome] += 1
            if outcome == "ok":
                latencies[kind].append(elapsed)
            else:
                reasons[(kind, outcome, reason[:100])] += 1
                if outcome in ("lost", "garbled") and len(samples[kind]) < 8:
                    samples[kind].append(f"t={started - t0:.1f}s {outcome}: {reason} "
                                         f"[{text[:40]}] after {elapsed:.2f}s")

        async def ticker(kind: str, rate: float, stop_at: float) -> None:
            seq = 0
            base = time.monotonic()
            while True:
                due = base + seq / rate
                if due >= stop_at:
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                seq += 1
                if len(in_flight) >= MAX_IN_FLIGHT:
                    skipped[kind] += 1
                    continue
                task = asyncio.create_task(one(kind, seq))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)

        async def progress(stop_at: float) -> None:
            while time.monotonic() < stop_at:
                await asyncio.sleep(min(60.0, max(0.0, stop_at - time.monotonic())))
                total = Counter[str]()
                for (_, outcome), n in outcomes.items():
                    total[outcome] += n
                print("PROGRESS " + json.dumps({"t": round(time.monotonic() - t0),
                                                "in_flight": len(in_flight), **total}),
                      flush=True)

        stop_at = t0 + op["duration"]
        reporter = asyncio.create_task(progress(stop_at))
        await asyncio.gather(*(ticker(k, r, stop_at) for k, r in op["rates"].items() if r > 0))
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=DRAIN_S)
        unfinished = len(in_flight)
        for task in list(in_flight):
            task.cancel()
        reporter.cancel()
        wall = time.monotonic() - t0

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")

    return {
        "wall_s": wall, "unfinished": unfinished, "skipped": dict(skipped),
        "outcomes": [[k, o, n] for (k, o), n in sorted(outcomes.items())],
        "reasons": [[k, o, r, n] for (k, o, r), n in reasons.most_common()],
        "samples": dict(samples),
        "latency_ms": {k: {"p50": pct(v, .5), "p99": pct(v, .99), "max": pct(v, 1.0)}
                       for k, v in latencies.items()},
        "per_minute": {str(m): dict(c) for m, c in sorted(per_minute.items())},
    }


def main(op_json: str) -> None:
    import uvloop

    print("SOAKJSON " + json.dumps(uvloop.run(run(json.loads(op_json)))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
