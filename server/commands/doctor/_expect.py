"""`--expect` and `--strict`: which parts each expectation needs, and why they are unmet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._check import Check, Status

__all__ = ["EXPECTATIONS", "missing_optional", "unmet"]

EXPECTATIONS: dict[str, str] = {
    "completion": "every provider:* (and live:*) part OK",
    "certainly": "z3 or coqc OK (a prover can check obligations)",
    "prove": "same as certainly",
    "codeworld": "bubblewrap OK (isolation with namespaces, not the rlimits fallback)",
    "agent": "completion and codeworld (its code tools run in the sandbox)",
    "smt": "z3 OK",
    "cvc5": "cvc5 OK (smt items with smt_solver cvc5 or both)",
    "coq": "coqc and coqtop OK",
    "lean4": "lean OK",
    "redis": "redis configured and answering PING",
    "otlp": "OTLP endpoint set and its TraceService answering",
}

#: Health entries an expectation needs when a mesh was asked: the service's entry (first),
#: then its part entries, counted when the server lists them.
_HEALTH = {
    "completion": ("scillm.completion.v1.CompletionService",),
    "certainly": ("scillm.prove.v1.ProveService",),
    "prove": ("scillm.prove.v1.ProveService",),
    "codeworld": ("scillm.codeworld.v1.CodeWorldService",
                  "scillm.codeworld.v1.CodeWorldService/bubblewrap"),
    "agent": ("scillm.agent.v1.AgentService",),
    "smt": ("scillm.prove.v1.ProveService", "scillm.prove.v1.ProveService/smt"),
    "cvc5": ("scillm.prove.v1.ProveService", "scillm.prove.v1.ProveService/cvc5"),
    "coq": ("scillm.prove.v1.ProveService", "scillm.prove.v1.ProveService/coq"),
    "lean4": ("scillm.prove.v1.ProveService", "scillm.prove.v1.ProveService/lean4"),
}


def _ok(by_part: Mapping[str, Check], part: str) -> bool:
    check = by_part.get(part)
    return check is not None and check.status is Status.OK


def _why(by_part: Mapping[str, Check], part: str) -> str:
    check = by_part.get(part)
    return f"{part} is {check.status.value}" if check else f"{part} was not checked"


def unmet(checks: Sequence[Check], expect: Sequence[str] | None) -> list[str]:
    """Why the expected parts are not ready ([] when they are).

    Without `expect`, every part that is not SKIPPED must be OK, but for an optional part
    that is missing (`missing_optional`). Names are the keys of `EXPECTATIONS` or exact
    part names; an unknown name raises ValueError.
    """
    by_part = {c.part: c for c in checks}
    if not expect:
        return [f"{c.part} is {c.status.value}" for c in checks
                if c.status not in (Status.OK, Status.SKIPPED)
                and not (c.optional and c.status is Status.MISSING)]
    reasons: list[str] = []
    for name in expect:
        if name not in EXPECTATIONS and name not in by_part:
            raise ValueError(f"unknown --expect name {name!r}; use a part name or one of "
                             f"{', '.join(EXPECTATIONS)}")
        why = _expectation(name, by_part, checks)
        why.extend(_health_story(name, by_part))
        reasons.extend(f"{name}: {w}" for w in why)
    return reasons


def missing_optional(checks: Sequence[Check]) -> list[str]:
    """The optional parts that are missing (reported, not counted against readiness)."""
    return [c.part for c in checks if c.optional and c.status is Status.MISSING]


def _health_story(name: str, by_part: Mapping[str, Check]) -> list[str]:
    """With a mesh asked (`--target`), its health entries for `name` must be OK too."""
    entries = _HEALTH.get(name, ())
    mesh = by_part.get("mesh")
    if not entries or mesh is None or mesh.status is Status.SKIPPED:
        return []
    if mesh.status is not Status.OK:
        return [_why(by_part, "mesh")]
    service, *parts = entries
    why = [] if _ok(by_part, service) else [
        _why(by_part, service) if service in by_part else f"the mesh does not serve {service}"]
    return why + [_why(by_part, p) for p in parts if p in by_part and not _ok(by_part, p)]


def _expectation(name: str, by_part: Mapping[str, Check], checks: Sequence[Check]) -> list[str]:
    def all_of(*parts: str) -> list[str]:
        return [_why(by_part, p) for p in parts if not _ok(by_part, p)]

    if name in ("certainly", "prove"):
        return [] if _ok(by_part, "z3") or _ok(by_part, "coqc") else [
            f"no prover: {_why(by_part, 'z3')}, {_why(by_part, 'coqc')}"]
    if name in ("completion", "agent"):
        models = [c for c in checks if c.part.startswith(("provider:", "live:"))]
        why = [f"{c.part} is {c.status.value}" for c in models
               if c.status not in (Status.OK, Status.SKIPPED)]
        if not any(c.status is Status.OK for c in models):
            why.append("no configured provider is OK")
        return why + (all_of("bubblewrap") if name == "agent" else [])
    parts = {"smt": ("z3",), "coq": ("coqc", "coqtop"), "lean4": ("lean",),
             "codeworld": ("bubblewrap",)}.get(name, (name,))
    return all_of(*parts)

