"""The seed's Certainly envelope <-> ProveRequest, and its reply line.

Accepted through `/v1/chat/completions` with a `certainly/<backend>` or `lean4/...` model,
or through `/bridge/complete`:

    {"model": "certainly/coq",
     "messages": [...],                 # the chat; not sent to the formalizer, which gets
                                        # each item's requirement, preamble and imports
     "items": [{"item_id"?, "requirement_text"?, "statement"?, "proof"?, "preamble"?,
                "imports"?: [...], "backend"?: "smt" | "coq" | "lean4",
                "smt_solver"?: "z3" | "cvc5" | "both",
                "context"?: {...}, "metadata"?: {...}}],
     "options": {"session_id", "track_id", "max_seconds", "model", "max_attempts",
                 "no_cache", "smt_solver"},
     # the seed's legacy fields
     "lean4_requirements"?: [{"requirement_text", "context"?, "metadata"?} | "text"],
     "lean4_flags"?: ["--deterministic", "--no-llm"],
     "max_seconds"?: 180}

`no_cache: true` checks every item again instead of answering from the verdict cache.
`smt_solver` (an item's, else the options') picks the SMT solver of smt items: "z3" (the
default), "cvc5", or "both" (a cross-check: PROVED only when both prove it).
`lean4_requirements` are items of requirement text (`requirement` is accepted for
`requirement_text`); `--deterministic` formalizes at temperature 0, `--no-llm` refuses to
formalize (an item without a statement is then an error). `max_seconds` at the top level
is `options.max_seconds`: each item's time limit.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from scillm.clients import openai_wire
from scillm.clients.errors import InvalidRequestError
from scillm.prove.v1 import prove_pb2 as pb

__all__ = ["BACKENDS", "LEAN4_FLAGS", "SMT_SOLVERS", "request_from_envelope", "summary_text"]

BACKENDS = {"smt": pb.BACKEND_SMT, "z3": pb.BACKEND_SMT, "coq": pb.BACKEND_COQ,
            "lean4": pb.BACKEND_LEAN4, "lean": pb.BACKEND_LEAN4}
SMT_SOLVERS = {"z3": pb.SMT_SOLVER_Z3, "cvc5": pb.SMT_SOLVER_CVC5, "both": pb.SMT_SOLVER_BOTH}
#: The seed's Lean CLI flags that mean something here.
LEAN4_FLAGS = ("--deterministic", "--no-llm")


def _flags(body: Mapping[str, Any]) -> set[str]:
    flags = body.get("lean4_flags") or []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise InvalidRequestError("'lean4_flags' must be an array of strings",
                                  param="lean4_flags")
    unknown = [f for f in flags if f not in LEAN4_FLAGS]
    if unknown:
        raise InvalidRequestError(f"lean4_flags {unknown} are not supported; supported: "
                                  f"{', '.join(LEAN4_FLAGS)}", param="lean4_flags")
    return set(flags)


def _backend(name: Any, param: str) -> int:
    if name in (None, "", "auto", "default"):
        return pb.BACKEND_UNSPECIFIED
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise InvalidRequestError(f"unknown backend {name!r}; choose from smt, coq, lean4",
                                  param=param)
    return BACKENDS[name.lower()]


def _smt_solver(name: Any, param: str) -> int:
    if name in (None, ""):
        return pb.SMT_SOLVER_UNSPECIFIED
    if not isinstance(name, str) or name.lower() not in SMT_SOLVERS:
        raise InvalidRequestError(f"unknown smt_solver {name!r}; choose from z3, cvc5, both",
                                  param=param)
    return SMT_SOLVERS[name.lower()]


def request_from_envelope(body: Mapping[str, Any]) -> pb.ProveRequest:
    """A ProveRequest from the seed's envelope (see the module docstring)."""
    model = str(body.get("model") or "certainly")
    prefix, _, rest = model.partition("/")
    req = pb.ProveRequest()
    if prefix == "lean4":
        req.default_backend = pb.BACKEND_LEAN4
    else:
        req.default_backend = _backend(rest or None, "model")  # type: ignore[assignment]
    items = body.get("items")
    if items is None:
        items = body.get("lean4_requirements")
    flags = _flags(body)
    if not isinstance(items, list) or not items:
        raise InvalidRequestError("'items' (or 'lean4_requirements') must be a non-empty array",
                                  param="items")
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"requirement_text": item}
        if not isinstance(item, Mapping):
            raise InvalidRequestError(f"items[{i}] must be an object", param=f"items[{i}]")
        _check_something(item, i)
        o = req.items.add(
            item_id=str(item.get("item_id") or item.get("id") or f"item-{i}"),
            requirement_text=str(item.get("requirement_text") or item.get("requirement") or ""),
            statement=str(item.get("statement") or ""), proof=str(item.get("proof") or ""),
            preamble=str(item.get("preamble") or ""),
            imports=[str(x) for x in item.get("imports") or []],
            backend=_backend(item.get("backend"), f"items[{i}].backend"),  # type: ignore[arg-type]
            smt_solver=_smt_solver(item.get("smt_solver"),  # type: ignore[arg-type]
                                   f"items[{i}].smt_solver"),
            metadata=_metadata(item.get("metadata"), f"items[{i}].metadata"))
        if isinstance(item.get("context"), Mapping):
            o.context.CopyFrom(openai_wire.struct_from_json(item["context"],
                                                            f"items[{i}].context"))
        if "--no-llm" in flags and not (o.statement or o.proof):
            raise InvalidRequestError(f"items[{i}] has no statement to check, and lean4_flags "
                                      "--no-llm forbids formalizing its requirement",
                                      param=f"items[{i}].statement")
    options = body.get("options") or {}
    if not isinstance(options, Mapping):
        raise InvalidRequestError("'options' must be an object", param="options")
    if "--deterministic" in flags:
        req.formalize.temperature = 0.0
    seconds = options.get("max_seconds", body.get("max_seconds"))
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or \
                not 0 < seconds <= _MAX_SECONDS:
            raise InvalidRequestError(f"'max_seconds' must be a number of seconds in "
                                      f"(0, {_MAX_SECONDS}]", param="options.max_seconds")
        req.limits.timeout.FromNanoseconds(int(seconds * 1e9))
    if options.get("model"):
        req.formalize.model = str(options["model"])
    attempts = options.get("max_attempts")
    if attempts is not None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
            raise InvalidRequestError("'max_attempts' must be a whole number from 1 to 100",
                                      param="options.max_attempts")
        req.formalize.max_attempts = attempts
    no_cache = options.get("no_cache", False)
    if not isinstance(no_cache, bool):
        raise InvalidRequestError("'options.no_cache' must be true or false",
                                  param="options.no_cache")
    req.no_cache = no_cache
    req.default_smt_solver = _smt_solver(options.get("smt_solver"),  # type: ignore[assignment]
                                         "options.smt_solver")
    req.context.session_id = str(options.get("session_id") or "")
    req.context.track = str(options.get("track_id") or options.get("track") or "")
    return req


#: The longest time limit an item may ask for (a day).
_MAX_SECONDS = 86_400


#: An item's fields (other keys pass unread, as the seed let them).
_ITEM_KEYS = ("item_id", "id", "requirement_text", "requirement", "statement", "proof",
              "preamble", "imports", "backend", "smt_solver", "context", "metadata")


def _check_something(item: Mapping[str, Any], i: int) -> None:
    """An item with nothing to check whose keys include one this envelope does not know is
    a misspelling (`statment`): named, with the field it may mean. Before, the call
    failed as if no statement had been written."""
    if any(item.get(k) for k in ("requirement_text", "requirement", "statement", "proof")):
        return
    unknown = [str(k) for k in item if k not in _ITEM_KEYS]
    if unknown:
        guesses = {k: difflib.get_close_matches(k, _ITEM_KEYS, n=1) for k in unknown}
        named = ", ".join(f"{k!r}" + (f" (did you mean {g[0]!r}?)" if g else "")
                          for k, g in guesses.items())
        raise InvalidRequestError(f"items[{i}] has nothing to check (no statement, proof or "
                                  f"requirement_text) and fields this envelope does not "
                                  f"know: {named}", param=f"items[{i}]")


def _metadata(value: Any, param: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"'{param}' must be an object of string values", param=param)
    return {str(k): str(v) for k, v in value.items()}


def summary_text(summary: pb.ProveSummary) -> str:
    """The seed's reply line: proved, failed (checked and rejected), unproved (undecided);
    proofs that hold only because the assumptions are inconsistent, and the failures that
    are refutations (a counterexample: the statement is false), are counted apart in
    parentheses, so the seed's words and numbers stay where its readers look for them."""
    vacuous = f" ({summary.vacuous} vacuously)" if summary.vacuous else ""
    refuted = f" ({summary.refuted} refuted)" if summary.refuted else ""
    return (f"Certainly: {summary.items} items, {summary.proved} proved{vacuous}, "
            f"{summary.failed + summary.refuted} failed{refuted}, {summary.unknown} unproved")
