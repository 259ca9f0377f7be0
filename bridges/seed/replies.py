"""The seed bridges' replies to `/bridge/complete`, built from our terminal events.

CodeWorld (the seed's `canonical+codeworld@v1`):

    {"summary": {items, succeeded, failed},
     "statistics": {iterations, metrics, allowed_languages},
     "results": [{index, item_id, task_id, status, best_strategy, scores, outputs: {result},
                  timings: {duration_ms}, strategies: [{name, status, result, rank, score,
                  metrics, tests_passed, error}]}],
     "duration_ms", "stdout": "", "stderr": "",
     "run_manifest": {run_id, schema, options, item_ids, task_ids, provider,
                      strategy_name?, strategy_seed?, strategy_params?,
                      mcts_stats?: {rollouts, depth, uct_c, visits, explored, best_value,
                                    best_variant, seed, error, children, generation}},
     "signals"?: {session_id, plateau, current, error? (the run is not in its session)}}

Certainly / Lean 4 (the seed's `canonical+lean4@v1`):

    {"summary": {items, proved, failed, unproved, vacuous},
     "statistics": {successful_proofs, failed_proofs, unproved},
     "proof_results": [{item_id, id, ok, verdict, backend, requirement_text, source,
                        diagnostics, counterexample, error, cached, vacuous}],
     "results": (the same list), "duration_ms", "stdout": "", "stderr": "",
     "run_manifest": {run_id, schema, flags, options, provider: {name, backend}}}

Every reply also carries our whole terminal result under `scillm`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.prove.v1 import prove_pb2 as pv

__all__ = ["codeworld_reply", "prove_reply"]


def _json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _options(manifest: Any, max_seconds: float | None) -> dict[str, Any]:
    return {"max_seconds": max_seconds, "session_id": manifest.session_id or None,
            "track_id": manifest.track or None}


def _lower(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def _run_entry(run: cw.RunResult, ranked: Mapping[str, cw.RankedStrategy]) -> dict[str, Any]:
    entry = ranked.get(run.strategy)
    return {"name": run.strategy, "status": _lower(cw.RunStatus.Name(run.status), "RUN_STATUS_"),
            "result": json_format.MessageToDict(run.result) if run.HasField("result") else None,
            "rank": entry.rank if entry else None, "score": entry.score if entry else None,
            "metrics": dict(run.metrics),
            "tests_passed": run.tests_passed if run.HasField("tests_passed") else None,
            "error": run.error or None}


def _mcts_stats(summary: cw.CodeWorldRunSummary, request: cw.CodeWorldRunRequest
                ) -> dict[str, Any]:
    s, m = summary.mcts_stats, request.mcts
    best = next((c for c in s.children if c.variant_id == s.best_variant_id), None)
    generation = _json(s.generation) if s.HasField("generation") else None
    return {"rollouts": s.rollouts, "depth": m.depth or 1, "uct_c": m.uct_c or 1.4,
            "visits": sum(c.visits for c in s.children if c.depth == 1) or s.rollouts,
            "explored": s.explored, "best_value": best.mean if best else None,
            "best_variant": s.best_variant_id or None, "seed": m.seed,
            "error": (generation or {}).get("error") or None,
            "children": [_json(c) for c in s.children], "generation": generation}


def codeworld_reply(body: Mapping[str, Any], request: cw.CodeWorldRunRequest,
                    summary: cw.CodeWorldRunSummary, runs: Sequence[cw.RunResult],
                    duration_ms: float, max_seconds: float | None) -> dict[str, Any]:
    """The seed CodeWorld bridge's reply (see the module docstring)."""
    rankings = {r.task_id: r for r in summary.rankings}
    results: list[dict[str, Any]] = []
    for index, task in enumerate(request.items):
        ranking = rankings.get(task.task_id)
        ranked = {e.strategy: e for e in ranking.entries} if ranking else {}
        mine = [r for r in runs if r.task_id == task.task_id]
        best = ranking.entries[0] if ranking and ranking.entries else None
        best_run = next((r for r in mine if best and r.strategy == best.strategy), None)
        scores = {**dict(best.metrics), "aggregate": round(best.score, 3)} if best else {}
        results.append({
            "index": index, "item_id": task.task_id, "task_id": task.task_id,
            "status": "ok" if best_run and best_run.status == cw.RUN_STATUS_OK else "error",
            "best_strategy": best.strategy if best else None, "scores": scores,
            "outputs": {"result": _run_entry(best_run, ranked)["result"] if best_run else None},
            "timings": {"duration_ms": round(best_run.timings.wall.ToNanoseconds() / 1e6, 3)
                        if best_run else None},
            "strategies": [_run_entry(r, ranked) for r in mine]})
    manifest = summary.manifest
    run_manifest: dict[str, Any] = {
        "run_id": manifest.run_id, "schema": "canonical+codeworld@v1",
        "options": _options(manifest, max_seconds), "item_ids": list(manifest.item_ids),
        "task_ids": [t.task_id for t in request.items],
        "provider": {"name": "codeworld", "isolation": manifest.isolation}}
    if request.mode == cw.SEARCH_MODE_MCTS:
        stats = _mcts_stats(summary, request)
        run_manifest.update(strategy_name="mcts", strategy_seed=stats["seed"],
                            strategy_params={k: stats[k] for k in ("rollouts", "depth",
                                                                   "uct_c")},
                            mcts_stats=stats)
    reply: dict[str, Any] = {
        "summary": {"items": summary.items, "succeeded": summary.succeeded,
                    "failed": summary.failed},
        "statistics": {"iterations": body.get("codeworld_iterations") or 1,
                       "metrics": body.get("codeworld_metrics") or sorted(
                           {k for r in results for k in r["scores"] if k != "aggregate"}),
                       "allowed_languages": body.get("codeworld_allowed_languages") or sorted(
                           {_lower(cw.Language.Name(s.language), "LANGUAGE_")
                            for s in request.strategies})},
        "results": results, "duration_ms": round(duration_ms, 3), "stdout": "", "stderr": "",
        "run_manifest": run_manifest, "scillm": {"service": "codeworld",
                                                 "result": _json(summary)}}
    if summary.HasField("session"):
        reply["signals"] = {"session_id": summary.session.session_id,
                            "plateau": summary.session.plateau,
                            "current": round(summary.session.mean_aggregate, 3)}
        if summary.session.error:  # the run is not in its session (the store failed)
            reply["signals"]["error"] = summary.session.error
    return reply


def prove_reply(body: Mapping[str, Any], request: pv.ProveRequest, summary: pv.ProveSummary,
                results: Sequence[pv.ItemResult], duration_ms: float) -> dict[str, Any]:
    """The seed Lean 4 / Certainly bridge's reply (see the module docstring)."""
    texts = {o.item_id: o.requirement_text for o in request.items}
    proofs: list[dict[str, Any]] = []
    for r in results:
        proofs.append({
            "item_id": r.item_id, "id": r.item_id, "ok": r.verdict == pv.VERDICT_PROVED,
            "verdict": _lower(pv.Verdict.Name(r.verdict), "VERDICT_"),
            "backend": _lower(pv.Backend.Name(r.backend), "BACKEND_"),
            "requirement_text": texts.get(r.item_id) or None, "source": r.source or None,
            "diagnostics": [_json(d) for d in r.diagnostics],
            "counterexample": r.counterexample or None, "error": r.error or None,
            "cached": r.cached, "vacuous": r.vacuous})
    unproved = summary.unknown
    failed = summary.failed + summary.refuted
    manifest = summary.manifest
    timeout = request.limits.timeout.ToNanoseconds() / 1e9 \
        if request.limits.HasField("timeout") else None
    backends = sorted({p["backend"] for p in proofs})
    return {
        "summary": {"items": summary.items, "proved": summary.proved, "failed": failed,
                    "unproved": unproved, "vacuous": summary.vacuous},
        "statistics": {"successful_proofs": summary.proved, "failed_proofs": failed,
                       "unproved": unproved},
        "proof_results": proofs, "results": proofs, "duration_ms": round(duration_ms, 3),
        "stdout": "", "stderr": "",
        "run_manifest": {
            "run_id": manifest.run_id, "schema": "canonical+lean4@v1",
            "flags": list(body.get("lean4_flags") or []),
            "options": _options(manifest, timeout),
            "provider": {"name": "certainly", "backend": ",".join(backends)}},
        "scillm": {"service": "prove", "result": _json(summary)}}
