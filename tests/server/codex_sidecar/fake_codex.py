"""A stand-in for the Codex CLI's `codex exec --json`, which needs an account.

It parses `exec`'s flags as the real CLI does (unknown flags: a usage error, exit 2),
reads the prompt from stdin when the prompt argument is `-`, and prints the documented
JSONL event stream (codex-rs/exec/src/exec_events.rs): thread.started, turn.started,
item.started/item.completed for reasoning, command_execution and agent_message items,
then turn.completed with usage; a failure is an `error` event, `turn.failed` and exit 1.

The variant comes from a `[fake:NAME]` marker in the prompt (else $FAKE_CODEX_VARIANT):

    ok           reasoning, a command, a first agent message, the final agent message
    slow         reasoning, then a child `sleep 300` (its pid in $FAKE_CODEX_LOG/child.pid)
                 and a sleep: only a timeout ends it
    hold         reasoning, then waits until $FAKE_CODEX_LOG/release exists, then answers
    transient    exits 75 (EX_TEMPFAIL) every time
    flaky        exits 75 the first time it sees a prompt, then answers
    crash        turn.failed and exit 1 (not transient)
    noauth       the CLI's upstream 401: an error event, turn.failed, exit 1
    nologin      "not logged in" on stderr before any event, exit 1
    malformed    noise, a partial line, a JSON array and odd items around a valid answer
    silent       turn.completed without an agent message

Each run appends {argv, prompt, pid, schema} as a JSON line to $FAKE_CODEX_LOG/calls.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_VALUE_FLAGS = {"-m", "--model", "-c", "--config", "--output-schema", "-s", "--sandbox",
                "--color", "-C", "--cd", "-o", "--output-last-message", "-p", "--profile"}
_BOOL_FLAGS = {"--json", "--experimental-json", "--skip-git-repo-check", "--ephemeral",
               "--full-auto", "--dangerously-bypass-approvals-and-sandbox"}


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def item(kind: str, number: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"item_{number}", "type": kind, **fields}


def parse(argv: list[str]) -> tuple[dict[str, list[str]], str | None]:
    if not argv or argv[0] != "exec":
        print("error: this stand-in only knows `codex exec`", file=sys.stderr)
        sys.exit(2)
    flags: dict[str, list[str]] = {}
    prompt: str | None = None
    args = iter(argv[1:])
    for arg in args:
        name, eq, inline = arg.partition("=")
        if name in _VALUE_FLAGS:
            flags.setdefault(name, []).append(inline if eq else next(args, ""))
        elif arg in _BOOL_FLAGS:
            flags.setdefault(arg, [])
        elif arg.startswith("-") and arg != "-":
            print(f"error: unexpected argument '{arg}' found", file=sys.stderr)
            sys.exit(2)
        else:
            prompt = arg
    return flags, prompt


def main() -> None:
    flags, prompt = parse(sys.argv[1:])
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    log = Path(os.environ.get("FAKE_CODEX_LOG", "."))
    with (log / "calls.jsonl").open("a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "prompt": prompt, "pid": os.getpid(),
                            "schema": _schema(flags)}) + "\n")
    marker = re.search(r"\[fake:([a-z]+)\]", prompt)
    variant = marker.group(1) if marker else os.environ.get("FAKE_CODEX_VARIANT", "ok")
    if variant == "nologin":
        print("Error: not logged in. Run `codex login` first.", file=sys.stderr)
        sys.exit(1)
    if "--json" not in flags:
        print("codex (human output) is not what this stand-in prints", file=sys.stderr)
        sys.exit(2)
    emit({"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"})
    emit({"type": "turn.started"})
    if variant == "transient" or (variant == "flaky" and _first_time(log, prompt)):
        emit({"type": "error", "message": "stream disconnected before completion"})
        sys.exit(75)
    if variant in ("crash", "noauth"):
        message = ("unexpected status 401 Unauthorized: Missing bearer or basic "
                   "authentication in header" if variant == "noauth" else "boom: the model "
                   "refused the tool output")
        emit({"type": "error", "message": message})
        emit({"type": "turn.failed", "error": {"message": message}})
        sys.exit(1)
    emit({"type": "item.completed", "item": item(
        "reasoning", 0, text="**Reading the task**\n\nThe user asks something small.")})
    if variant == "slow":
        child = subprocess.Popen(["sleep", "300"])
        (log / "child.pid").write_text(str(child.pid))
        time.sleep(300)
    if variant == "hold":
        while not (log / "release").exists():
            time.sleep(0.02)
    if variant == "malformed":
        print("Reading prompt from stdin...", flush=True)
        print('{"type": "item.completed", "item": {"id": "item_9", "type": "agent_mes',
              flush=True)
        print("[1, 2, 3]", flush=True)
        emit({"type": "item.completed", "item": "not an object"})
        emit({"type": "item.completed", "item": item("agent_message", 8)})
        emit({"type": "some.future.event", "payload": {}})
    command = "bash -lc 'ls'"
    emit({"type": "item.started", "item": item(
        "command_execution", 1, command=command, aggregated_output="", exit_code=None,
        status="in_progress")})
    emit({"type": "item.completed", "item": item(
        "command_execution", 1, command=command, aggregated_output="README.md\n",
        exit_code=0, status="completed")})
    emit({"type": "item.completed", "item": item(
        "reasoning", 2, text="**Answering**\n\nOne line will do.")})
    if variant != "silent":
        emit({"type": "item.completed", "item": item(
            "agent_message", 3, text="Let me look at the files first.")})
        emit({"type": "item.completed", "item": item("agent_message", 4, text=_answer(
            prompt, flags))})
    emit({"type": "turn.completed", "usage": {"input_tokens": 1200, "cached_input_tokens": 200,
                                              "output_tokens": 34}})


def _schema(flags: dict[str, list[str]]) -> Any:
    paths = flags.get("--output-schema")
    return json.loads(Path(paths[-1]).read_text()) if paths else None


def _answer(prompt: str, flags: dict[str, list[str]]) -> str:
    if flags.get("--output-schema"):
        return json.dumps({"answer": "ok"})
    last = [line for line in prompt.splitlines() if line.strip()][-1]
    return f"ANSWER: {last}"


def _first_time(log: Path, prompt: str) -> bool:
    mark = log / f"flaky-{hashlib.sha1(prompt.encode()).hexdigest()}.seen"
    if mark.exists():
        return False
    mark.write_text("1")
    return True


if __name__ == "__main__":
    main()
