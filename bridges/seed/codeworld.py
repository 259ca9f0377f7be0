"""The seed's CodeWorld envelope <-> CodeWorldRunRequest, and the reply it expects.

Accepted (through `/v1/chat/completions` with a `codeworld/...` model, or `/bridge/complete`):

    {"model": "codeworld/mcts:auto",            # codeworld | codeworld/mcts | .../mcts:auto
     "messages": [...],                          # the first user message describes the task
     "items": [{"task_id", "description"?, "context": {input, expected, tests, entry_point}}],
     "provider": {"args": {"strategies": [{name, language?, source | code}],
                           "score_source"?, "volatile_metrics"?: [metric],
                           "judge"?: {mode, weights, order},
                           "limits"?: {timeout_s, memory_bytes, concurrency, strict},
                           "rollouts", "depth", "uct_c" | "exploration_constant", "seed",
                           "num_variants", "generator_model", "temperature"}},
     "options": {"session_id", "track_id", "max_seconds"}}

The MCTS settings may also sit at the top level of the body (the seed's sugar).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from scillm.clients.errors import InvalidRequestError
from scillm.codeworld.v1 import codeworld_pb2 as pb

__all__ = ["request_from_envelope", "summary_text"]

_LANG = {"python": pb.LANGUAGE_PYTHON, "py": pb.LANGUAGE_PYTHON,
         "javascript": pb.LANGUAGE_JAVASCRIPT, "js": pb.LANGUAGE_JAVASCRIPT,
         "typescript": pb.LANGUAGE_TYPESCRIPT, "ts": pb.LANGUAGE_TYPESCRIPT,
         "c": pb.LANGUAGE_C, "cpp": pb.LANGUAGE_CPP, "c++": pb.LANGUAGE_CPP,
         "java": pb.LANGUAGE_JAVA, "rust": pb.LANGUAGE_RUST, "rs": pb.LANGUAGE_RUST,
         "go": pb.LANGUAGE_GO, "golang": pb.LANGUAGE_GO}
_MCTS_KEYS = ("rollouts", "depth", "uct_c", "exploration_constant", "seed", "num_variants",
              "generator_model", "temperature", "time_budget_s")


def _dict(value: Any, param: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"'{param}' must be an object", param=param)
    return value


def _number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"'{param}' must be a number", param=param)
    return float(value)


def request_from_envelope(body: Mapping[str, Any]) -> pb.CodeWorldRunRequest:
    """A CodeWorldRunRequest from the seed's envelope (see the module docstring)."""
    model = str(body.get("model") or "codeworld")
    args = _dict(_dict(body.get("provider"), "provider").get("args"), "provider.args")
    options = _dict(body.get("options"), "options")
    items = body.get("items")
    if not isinstance(items, list) or not items:
        raise InvalidRequestError("'items' must be a non-empty array", param="items")
    req = pb.CodeWorldRunRequest()
    task = ""
    for message in body.get("messages") or []:
        if isinstance(message, Mapping) and message.get("role") == "user":
            task = str(message.get("content") or "")
            break
    for i, item in enumerate(items):
        item = _dict(item, f"items[{i}]")
        t = req.items.add(task_id=str(item.get("task_id") or item.get("id") or f"item-{i}"),
                          description=str(item.get("description") or task))
        context = dict(_dict(item.get("context"), f"items[{i}].context"))
        tests = item.get("tests", context.pop("tests", None))
        entry = item.get("entry_point", context.pop("entry_point", None))
        if tests is not None:
            t.tests = str(tests)
        if entry is not None:
            t.entry_point = str(entry)
        if context:
            json_format.ParseDict(context, t.context)
    strategies = args.get("strategies", body.get("strategies")) or []
    if not isinstance(strategies, list):
        raise InvalidRequestError("'strategies' must be an array", param="strategies")
    for i, s in enumerate(strategies):
        s = _dict(s, f"strategies[{i}]")
        source = s.get("source", s.get("code"))
        if not isinstance(source, str):
            raise InvalidRequestError(f"strategies[{i}] needs 'source' (or 'code')",
                                      param=f"strategies[{i}].source")
        lang = str(s.get("language") or "python").lower()
        if lang not in _LANG:
            raise InvalidRequestError(f"unknown language {lang!r}",
                                      param=f"strategies[{i}].language")
        req.strategies.add(name=str(s.get("name") or f"strategy-{i}"), source=source,
                           language=_LANG[lang])
    if args.get("score_source"):
        req.scoring.score_source = str(args["score_source"])
    req.scoring.volatile_metrics.extend(str(m) for m in args.get("volatile_metrics") or [])
    judge = _dict(args.get("judge"), "provider.args.judge")
    if judge.get("mode") == "lexicographic":
        req.scoring.judge.mode = pb.JUDGE_MODE_LEXICOGRAPHIC
    for key, weight in _dict(judge.get("weights"), "judge.weights").items():
        req.scoring.judge.weights[str(key)] = _number(weight, f"judge.weights.{key}")
    req.scoring.judge.order.extend(str(k) for k in judge.get("order") or [])
    limits = _dict(args.get("limits"), "provider.args.limits")
    if "timeout_s" in limits:
        req.limits.timeout.FromNanoseconds(int(_number(limits["timeout_s"], "timeout_s") * 1e9))
    if "memory_bytes" in limits:
        req.limits.memory_bytes = int(_number(limits["memory_bytes"], "memory_bytes"))
    if "concurrency" in limits:
        req.limits.concurrency = int(_number(limits["concurrency"], "concurrency"))
    req.limits.strict = bool(limits.get("strict", False))
    if "/mcts" in model:
        req.mode = pb.SEARCH_MODE_MCTS
        mcts = {k: args.get(k, body.get(k)) for k in _MCTS_KEYS}
        m = req.mcts
        if mcts["rollouts"] is not None:
            m.rollouts = int(_number(mcts["rollouts"], "rollouts"))
        if mcts["depth"] is not None:
            m.depth = int(_number(mcts["depth"], "depth"))
        uct = mcts["uct_c"] if mcts["uct_c"] is not None else mcts["exploration_constant"]
        if uct is not None:
            m.uct_c = _number(uct, "uct_c")
        if mcts["seed"] is not None:
            m.seed = int(_number(mcts["seed"], "seed"))
        if mcts["time_budget_s"] is not None:
            m.time_budget.FromNanoseconds(int(_number(mcts["time_budget_s"], "time_budget_s")
                                              * 1e9))
        if mcts["temperature"] is not None:
            m.temperature = _number(mcts["temperature"], "temperature")
        m.model = str(mcts["generator_model"] or args.get("model") or "")
        if model.endswith(":auto"):
            m.autogenerate = True
            m.num_variants = int(_number(mcts["num_variants"] or 3, "num_variants"))
    req.context.session_id = str(options.get("session_id") or "")
    req.context.track = str(options.get("track_id") or options.get("track") or "")
    return req


def summary_text(summary: pb.CodeWorldRunSummary) -> str:
    """The seed's reply line."""
    return (f"CodeWorld: {summary.items} items, {summary.succeeded} succeeded, "
            f"{summary.failed} failed")
