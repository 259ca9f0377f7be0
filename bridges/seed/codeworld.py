"""The seed's CodeWorld envelope <-> CodeWorldRunRequest, and the reply it expects.

Accepted (through `/v1/chat/completions` with a `codeworld/...` model, or `/bridge/complete`):

    {"model": "codeworld/mcts:auto",            # codeworld | codeworld/mcts | .../mcts:auto
     "messages": [...],                          # the first user message describes the task
     "items": [{"task_id" | "id", "task" | "spec" | "description"?,
                "context": {input, expected, tests, entry_point,
                            code_variants?: {name: code | {code, language}}}}],
     "provider": {"name"?: "codeworld",
                  "args": {"strategies": [{name, language?, source | code}],
                           "score_source"? | "scoring"?: {lang: "py", code, entry?},
                           "volatile_metrics"?: [metric],
                           "judge"?: true | {mode, weights, order}, "judge_mode"?: "lex",
                           "limits"?: {timeout_s, memory_bytes, total_memory_bytes,
                                      max_disk_bytes, max_files, concurrency, strict},
                           "strategy"?: "mcts",
                           "strategy_config"?: {rollouts, depth, uct_c | exploration_constant,
                                                seed, autogenerate: bool | {enabled, n,
                                                generator_model, temperature}},
                           "rollouts", "depth", "uct_c" | "exploration_constant", "seed",
                           "num_variants", "generator_model", "temperature"}},
     "options": {"session_id", "track_id", "max_seconds"},
     # the seed's legacy fields
     "codeworld_metrics"?: ["correctness", "speed", ...],   # rank by these rubric metrics
     "codeworld_allowed_languages"?: ["python", ...],        # refuse other strategies
     "codeworld_iterations"?: 1,                             # echoed, as the seed did
     "request_timeout"?: 300}                                # seconds for the whole run

Strategies come from `provider.args.strategies` and from every item's
`context.code_variants` (Python unless a variant names its language); a run's strategies
are shared by all its items. `strategy: "mcts"` (or a `codeworld/mcts` model) searches;
an enabled `autogenerate` (or `:auto`) has a model write the variants. The MCTS settings
may also sit at the top level of the body (the seed's sugar). `request_timeout` and
`options.max_seconds` bound the whole run (the call's deadline).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from scillm.clients import openai_wire
from scillm.clients.errors import InvalidRequestError
from scillm.codeworld.v1 import codeworld_pb2 as pb

from ._fields import INT32, INT64, duration, flag, number, seconds, whole

__all__ = ["RUBRIC", "call_timeout", "request_from_envelope", "summary_text"]

_LANG = {"python": pb.LANGUAGE_PYTHON, "py": pb.LANGUAGE_PYTHON,
         "javascript": pb.LANGUAGE_JAVASCRIPT, "js": pb.LANGUAGE_JAVASCRIPT,
         "typescript": pb.LANGUAGE_TYPESCRIPT, "ts": pb.LANGUAGE_TYPESCRIPT,
         "c": pb.LANGUAGE_C, "cpp": pb.LANGUAGE_CPP, "c++": pb.LANGUAGE_CPP,
         "java": pb.LANGUAGE_JAVA, "rust": pb.LANGUAGE_RUST, "rs": pb.LANGUAGE_RUST,
         "go": pb.LANGUAGE_GO, "golang": pb.LANGUAGE_GO}
_MCTS_KEYS = ("rollouts", "depth", "uct_c", "exploration_constant", "seed", "num_variants",
              "n_variants", "generator_model", "temperature", "time_budget_s")
#: The default rubric's metrics, in the lexicographic order the seed's judge used.
RUBRIC = ("correctness", "speed", "brevity")


def _dict(value: Any, param: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"'{param}' must be an object", param=param)
    return value


def _strings(value: Any, param: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequestError(f"'{param}' must be an array of strings", param=param)
    return list(value)


def call_timeout(body: Mapping[str, Any]) -> float | None:
    """Seconds the whole run may take (`request_timeout` or `options.max_seconds`)."""
    options = _dict(body.get("options"), "options")
    for param, value in (("request_timeout", body.get("request_timeout")),
                         ("options.max_seconds", options.get("max_seconds"))):
        if value is not None:
            return seconds(value, param)
    return None


def _add_strategy(req: pb.CodeWorldRunRequest, name: str, source: Any, language: Any,
                  param: str) -> None:
    if not isinstance(source, str):
        raise InvalidRequestError(f"{param} needs 'source' (or 'code')", param=param)
    lang = str(language or "python").lower()
    if lang not in _LANG:
        raise InvalidRequestError(f"unknown language {lang!r}", param=f"{param}.language")
    for s in req.strategies:
        if s.name == name:
            if s.source != source or s.language != _LANG[lang]:
                raise InvalidRequestError(
                    f"{param}: strategy {name!r} differs from an earlier one of that name "
                    "(a run's strategies are shared by all its items)", param=param)
            return
    req.strategies.add(name=name, source=source, language=_LANG[lang])


def _variants(req: pb.CodeWorldRunRequest, variants: Any, param: str) -> None:
    """The seed's `context.code_variants`: {name: code | {code, language}} or a list."""
    if isinstance(variants, Mapping):
        entries = [(str(k), v) for k, v in variants.items()]
    elif isinstance(variants, list):
        entries = [(str(v.get("name") or v.get("id") or f"variant-{i}")
                    if isinstance(v, Mapping) else f"variant-{i}", v)
                   for i, v in enumerate(variants)]
    else:
        raise InvalidRequestError(f"'{param}' must be an object of name: code", param=param)
    for name, v in entries:
        if isinstance(v, Mapping):
            _add_strategy(req, name, v.get("source", v.get("code")), v.get("language"),
                          f"{param}.{name}")
        else:
            _add_strategy(req, name, v, None, f"{param}.{name}")


def _items(req: pb.CodeWorldRunRequest, body: Mapping[str, Any]) -> None:
    items = body.get("items")
    if not isinstance(items, list) or not items:
        raise InvalidRequestError("'items' must be a non-empty array", param="items")
    task = ""
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise InvalidRequestError("'messages' must be an array", param="messages")
    for message in messages or []:
        if isinstance(message, Mapping) and message.get("role") == "user":
            task = str(message.get("content") or "")
            break
    for i, item in enumerate(items):
        item = _dict(item, f"items[{i}]")
        text = item.get("description", item.get("task", item.get("spec")))
        if text is not None and not isinstance(text, str):
            text = json.dumps(text, sort_keys=True)
        t = req.items.add(task_id=str(item.get("task_id") or item.get("id") or f"item-{i}"),
                          description=text or task)
        context = dict(_dict(item.get("context"), f"items[{i}].context"))
        tests = item.get("tests", context.pop("tests", None))
        entry = item.get("entry_point", context.pop("entry_point", None))
        variants = context.pop("code_variants", None)
        if variants:
            _variants(req, variants, f"items[{i}].context.code_variants")
        if tests is not None:
            t.tests = str(tests)
        if entry is not None:
            t.entry_point = str(entry)
        if context:
            t.context.CopyFrom(openai_wire.struct_from_json(context, f"items[{i}].context"))


def _scoring(req: pb.CodeWorldRunRequest, body: Mapping[str, Any],
             args: Mapping[str, Any]) -> None:
    if args.get("score_source"):
        req.scoring.score_source = str(args["score_source"])
    scoring = _dict(args.get("scoring"), "provider.args.scoring")
    if scoring.get("code"):
        if str(scoring.get("lang") or "py").lower() not in ("py", "python"):
            raise InvalidRequestError("provider.args.scoring: only Python scorers (lang "
                                      "'py') are supported", param="provider.args.scoring.lang")
        entry = str(scoring.get("entry") or "score")
        req.scoring.score_source = str(scoring["code"]) + (
            f"\nscore = {entry}\n" if entry != "score" else "")
    req.scoring.volatile_metrics.extend(str(m) for m in args.get("volatile_metrics") or [])
    judge = args.get("judge")
    judge = {} if isinstance(judge, bool) else _dict(judge, "provider.args.judge")
    metrics = _strings(body.get("codeworld_metrics"), "codeworld_metrics")
    if judge.get("mode") == "lexicographic" or str(args.get("judge_mode") or "").lower() in (
            "lex", "lexicographic"):
        req.scoring.judge.mode = pb.JUDGE_MODE_LEXICOGRAPHIC
        if not judge.get("order"):
            req.scoring.judge.order.extend(metrics or RUBRIC)
    for key, weight in _dict(judge.get("weights"), "judge.weights").items():
        req.scoring.judge.weights[str(key)] = number(
            weight, f"provider.args.judge.weights.{key}")
    req.scoring.judge.order.extend(str(k) for k in judge.get("order") or [])
    for metric in RUBRIC:  # rank by the listed metrics only
        if metrics and metric not in metrics and metric not in req.scoring.judge.weights:
            req.scoring.judge.weights[metric] = 0.0


def _limits(req: pb.CodeWorldRunRequest, args: Mapping[str, Any]) -> None:
    limits = _dict(args.get("limits"), "provider.args.limits")
    if "timeout_s" in limits:
        req.limits.timeout.CopyFrom(duration(limits["timeout_s"],
                                            "provider.args.limits.timeout_s"))
    if "memory_bytes" in limits:
        req.limits.memory_bytes = whole(limits["memory_bytes"],
                                        "provider.args.limits.memory_bytes", high=INT64)
    for name in ("total_memory_bytes", "max_disk_bytes", "max_files"):
        if name in limits:
            setattr(req.limits, name, whole(limits[name], f"provider.args.limits.{name}",
                                            high=INT32 if name == "max_files" else INT64))
    if "concurrency" in limits:
        req.limits.concurrency = whole(limits["concurrency"], "provider.args.limits.concurrency")
    req.limits.strict = flag(limits, "strict", param="provider.args.limits.strict")


def _autogenerate(config: Mapping[str, Any], args: Mapping[str, Any]) -> Mapping[str, Any]:
    """The seed's autogenerate block as a dict with `enabled` ({} when absent)."""
    value = config.get("autogenerate", args.get("autogenerate"))
    if isinstance(value, bool):
        return {"enabled": value}
    return _dict(value, "strategy_config.autogenerate")


def _mcts(req: pb.CodeWorldRunRequest, body: Mapping[str, Any], args: Mapping[str, Any],
          model: str) -> None:
    config = _dict(args.get("strategy_config"), "provider.args.strategy_config")
    strategy = str(args.get("strategy") or config.get("name") or "").lower()
    auto = _autogenerate(config, args)
    if "/mcts" not in model and strategy != "mcts":
        return
    req.mode = pb.SEARCH_MODE_MCTS
    mcts = {k: config.get(k, args.get(k, body.get(k))) for k in _MCTS_KEYS}
    m = req.mcts
    if mcts["rollouts"] is not None:
        m.rollouts = whole(mcts["rollouts"], "rollouts")
    if mcts["depth"] is not None:
        m.depth = whole(mcts["depth"], "depth")
    uct = mcts["uct_c"] if mcts["uct_c"] is not None else mcts["exploration_constant"]
    if uct is not None:
        m.uct_c = number(uct, "uct_c")
    if mcts["seed"] is not None:
        m.seed = whole(mcts["seed"], "seed", low=-INT64 - 1, high=INT64)
    if mcts["time_budget_s"] is not None:
        m.time_budget.CopyFrom(duration(mcts["time_budget_s"], "time_budget_s"))
    temperature = auto.get("temperature", mcts["temperature"])
    if temperature is not None:
        m.temperature = number(temperature, "temperature")
    m.model = str(auto.get("generator_model") or auto.get("model") or mcts["generator_model"]
                  or args.get("model") or "")
    if model.endswith(":auto") or auto.get("enabled") is True:
        m.autogenerate = True
        n = auto.get("n", mcts["num_variants"] if mcts["num_variants"] is not None
                     else mcts["n_variants"])
        m.num_variants = whole(n if n is not None else 3, "num_variants")


def request_from_envelope(body: Mapping[str, Any]) -> pb.CodeWorldRunRequest:
    """A CodeWorldRunRequest from the seed's envelope (see the module docstring)."""
    if not isinstance(body, Mapping):  # a spec file may hold any JSON (`scillm codeworld`)
        raise InvalidRequestError("the envelope must be a JSON object, not "
                                  f"{type(body).__name__}")
    model = str(body.get("model") or "codeworld")
    args = _dict(_dict(body.get("provider"), "provider").get("args"), "provider.args")
    options = _dict(body.get("options"), "options")
    req = pb.CodeWorldRunRequest()
    strategies = args.get("strategies", body.get("strategies")) or []
    if not isinstance(strategies, list):
        raise InvalidRequestError("'strategies' must be an array", param="strategies")
    for i, s in enumerate(strategies):
        s = _dict(s, f"strategies[{i}]")
        _add_strategy(req, str(s.get("name") or f"strategy-{i}"), s.get("source", s.get("code")),
                      s.get("language"), f"strategies[{i}]")
    _items(req, body)
    allowed = _strings(body.get("codeworld_allowed_languages"), "codeworld_allowed_languages")
    if allowed:
        wanted = {_LANG.get(lang.lower()) for lang in allowed}
        for s in req.strategies:
            if s.language not in wanted:
                language = pb.Language.Name(s.language).removeprefix("LANGUAGE_").lower()
                raise InvalidRequestError(
                    f"strategy {s.name!r} is {language}, outside codeworld_allowed_languages "
                    f"{allowed}", param="codeworld_allowed_languages")
    _scoring(req, body, args)
    _limits(req, args)
    _mcts(req, body, args, model)
    req.context.session_id = str(options.get("session_id") or "")
    req.context.track = str(options.get("track_id") or options.get("track") or "")
    return req


def summary_text(summary: pb.CodeWorldRunSummary) -> str:
    """The seed's reply line."""
    return (f"CodeWorld: {summary.items} items, {summary.succeeded} succeeded, "
            f"{summary.failed} failed")
