"""Which service a `/bridge/complete` body goes to, and whether a request is the seed's own.

Both doors accept the seed's fields and ours alike; what differs is the reply. A request is
*seed-shaped*, and answered in the seed's shape, when

- `/bridge/complete`: the body names `provider.name`, or carries one of the seed's legacy
  fields (`codeworld_metrics`, `codeworld_iterations`, `codeworld_allowed_languages`,
  `request_timeout`, `lean4_requirements`, `lean4_flags`), and does not ask to stream;
- `/agent/run`: the body carries a field only the seed's agent app had (`tool_backend`,
  `tool_http_base_url`, `tool_http_headers`, `auto_run_code_on_code_block`,
  `escalate_on_budget_exceeded`, `escalate_model`);

and in either door the header `x-scillm-envelope: seed` (or `scillm`) decides instead.
Everything else is answered in ours (a `chat.completion` with the result in `scillm`, or
the AgentFinal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scillm.clients.errors import InvalidRequestError

__all__ = ["HEADER", "PROVIDERS", "is_seed_agent", "is_seed_bridge", "service_model"]

#: Request header choosing the reply's shape: `seed` or `scillm`.
HEADER = "x-scillm-envelope"
#: `provider.name` -> the model name that routes to its service.
PROVIDERS = {"codeworld": "codeworld", "certainly": "certainly", "lean4": "lean4"}

_BRIDGE_KEYS = ("codeworld_metrics", "codeworld_iterations", "codeworld_allowed_languages",
                "request_timeout", "lean4_requirements", "lean4_flags")
_CODEWORLD_KEYS = ("codeworld_metrics", "codeworld_iterations", "codeworld_allowed_languages",
                   "request_timeout", "strategies")
_AGENT_KEYS = ("tool_backend", "tool_http_base_url", "tool_http_headers",
               "auto_run_code_on_code_block", "escalate_on_budget_exceeded", "escalate_model")


def _forced(headers: Mapping[str, str]) -> bool | None:
    value = (headers.get(HEADER) or "").strip().lower()
    if not value:
        return None
    if value not in ("seed", "scillm"):
        raise InvalidRequestError(f"{HEADER} must be 'seed' or 'scillm'", param=HEADER)
    return value == "seed"


def _provider(body: Mapping[str, Any]) -> Mapping[str, Any]:
    provider = body.get("provider")
    return provider if isinstance(provider, Mapping) else {}


def is_seed_bridge(body: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    """Whether a `/bridge/complete` request is answered in the seed's shape."""
    forced = _forced(headers)
    if forced is not None:
        return forced
    return body.get("stream") is not True and (
        bool(_provider(body).get("name")) or any(k in body for k in _BRIDGE_KEYS))


def is_seed_agent(body: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    """Whether an `/agent/run` request is the seed's agent envelope."""
    forced = _forced(headers)
    return forced if forced is not None else any(k in body for k in _AGENT_KEYS)


def service_model(body: Mapping[str, Any]) -> str:
    """The model name routing a `/bridge/complete` body: its `model`, else its
    `provider.name`; else CodeWorld when it holds strategies (or code variants, or a
    CodeWorld legacy field) and Certainly otherwise."""
    if isinstance(body.get("model"), str) and body["model"]:
        return str(body["model"])
    name = _provider(body).get("name")
    if name:
        model = PROVIDERS.get(str(name).lower())
        if model is None:
            raise InvalidRequestError(f"provider.name {name!r}: choose from "
                                      f"{', '.join(PROVIDERS)}", param="provider.name")
        return model
    args = _provider(body).get("args")
    if isinstance(args, Mapping) and (args.get("strategies") or args.get("strategy")):
        return "codeworld"
    if any(k in body for k in _CODEWORLD_KEYS):
        return "codeworld"
    items = body.get("items")
    for item in items if isinstance(items, list) else ():
        context = item.get("context") if isinstance(item, Mapping) else None
        if isinstance(context, Mapping) and context.get("code_variants"):
            return "codeworld"
    return "certainly"
