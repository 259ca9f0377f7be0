"""Story 7: operating a split mesh. Completion in one process, the HTTP shim with Prove,
CodeWorld and Agent in another; a request through the shim, its whole trace caught by an
OTLP receiver and printed as a tree; the Prometheus metrics before and after; a stored run
listed and replayed with the `scillm runs` CLI.

Run: .venv/bin/python scenarios/operate.py
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from typing import Any

import _kit
import httpx
import openai
from _kit import Reply, check, figure, show, step

COMPLETION = "CompletionService/Completion"
CODEWORLD = "CodeWorldService/CodeWorldRun"


def metric(url: str, method: str) -> float:
    """`scillm_rpc_requests_total` of `method` with code OK, from a Prometheus page."""
    from prometheus_client.parser import text_string_to_metric_families

    page = httpx.get(url, timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(page)
               for sample in family.samples
               if sample.name == "scillm_rpc_requests_total"
               and sample.labels.get("method") == method and sample.labels.get("code") == "OK")


def story(stack: contextlib.ExitStack[Any]) -> None:
    """Story 7: operate (two processes, one trace, metrics, runs list and replay)"""
    tmp = _kit.workdir(stack)
    upstream = _kit.Upstream(stack, lambda request: Reply(message={"content": "pong"}))
    receiver = _kit.OtlpReceiver(stack)
    config = tmp / "config.yaml"
    config.write_text(json.dumps({"model_list": [{"model_name": "up", "litellm_params": {
        "model": "openai/up", "api_base": upstream.url, "api_key": "unused"}}]}))
    metrics_port = _kit.free_port()

    def env(name: str, **more: str) -> dict[str, str]:
        return _kit.mesh_env(tmp / name, SCILLM_CONFIG_PATH=str(config),
                             OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                             OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_SERVICE_NAME=name,
                             OTEL_BSP_SCHEDULE_DELAY="50", **more)

    for name in ("completion", "shim"):
        (tmp / name).mkdir()
    completion = _kit.serve(stack, "completion", "--service", "completion", "--no-http",
                            env=env("completion", SCILLM_METRICS_PORT=str(metrics_port)),
                            directory=tmp)
    shim = _kit.serve(stack, "shim", "--service", "prove", "--service", "codeworld",
                      "--service", "agent", "--http-port", "0",
                      "--completion-target", completion.grpc, env=env("shim"), directory=tmp)
    show(f"completion: gRPC {completion.grpc}, metrics http://127.0.0.1:{metrics_port}/metrics")
    show(f"shim + prove, codeworld, agent: gRPC {shim.grpc}, HTTP {shim.http}")
    completion_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    sdk = openai.OpenAI(base_url=f"{shim.http}/v1", api_key="unused", max_retries=0)

    step("one request through the shim, its trace as a tree")
    before = metric(completion_metrics, COMPLETION)
    trace_id, caller = os.urandom(16), os.urandom(8)
    reply = sdk.chat.completions.create(
        model="up", messages=[{"role": "user", "content": "ping"}],
        extra_headers={"traceparent": f"00-{trace_id.hex()}-{caller.hex()}-01"})
    check(reply.choices[0].message.content == "pong", "the upstream's answer came back")

    def whole(spans: list[_kit.Span]) -> bool:
        kinds = {(s.service, s.kind) for s in spans}
        return {("shim", "SERVER"), ("completion", "SERVER"), ("completion", "CLIENT")} <= kinds

    spans = receiver.trace(trace_id, whole)
    show(f"trace {trace_id.hex()}: {len(spans)} spans")
    _kit.print_tree(spans, caller)
    check(whole(spans), "the trace spans both processes and the upstream call")
    ids = {s.span_id for s in spans} | {caller}
    check(all(s.parent_id in ids for s in spans), "every span's parent was exported too")

    step("/metrics before and after")
    after = metric(completion_metrics, COMPLETION)
    show(f"completion process: Completion OK for model up: {before:g} -> {after:g}")
    check(after == before + 1, "Completion's counter went up by exactly one")
    shim_before = metric(f"{shim.http}/metrics", CODEWORLD)
    run = sdk.chat.completions.create(
        model="codeworld", messages=[{"role": "user", "content": "sum the list"}],
        extra_body={"items": [{"task_id": "sum", "context": {"input": [1, 2, 3],
                                                              "expected": 6}}],
                    "provider": {"args": {"strategies": [
                        {"name": "builtin",
                         "source": "def solve(task, context):\n"
                                   "    return sum(context['input'])\n"}]}},
                    "options": {"session_id": "operate", "track_id": "sums"}})
    deadline = time.monotonic() + 10  # a stream is counted when its handler returns,
    while (shim_after := metric(f"{shim.http}/metrics", CODEWORLD)) == shim_before \
            and time.monotonic() < deadline:  # a moment after the caller read its end
        time.sleep(0.05)
    show(f"shim process: CodeWorld Run OK: {shim_before:g} -> {shim_after:g}  "
         f"({run.choices[0].message.content})")
    check(shim_after == shim_before + 1, "the CodeWorld run was counted where it ran")

    step("scillm runs list, then replay")
    scillm = str(_kit.tool("scillm"))
    store = str(tmp / "shim" / "runs.sqlite3")
    listed = subprocess.run([scillm, "runs", "list", "--store", store, "--session", "operate"],
                            capture_output=True, text=True, timeout=60)
    print(listed.stdout.rstrip())
    run_id = (run.model_extra or {})["scillm"]["result"]["manifest"]["run_id"]
    check(listed.returncode == 0 and run_id in listed.stdout, "the run is listed")
    replayed = subprocess.run([scillm, "runs", "replay", run_id[:12], "--store", store,
                               "--target", shim.grpc], capture_output=True, text=True,
                              timeout=120)
    print(replayed.stdout.rstrip())
    check(replayed.returncode == 0 and json.loads(replayed.stdout)["identical"],
          "the replay is identical (exit 0)")
    figure(f"{len(spans)} spans over 2 processes, counters +1, replay identical")


if __name__ == "__main__":
    _kit.main(story)
