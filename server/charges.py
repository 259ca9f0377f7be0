"""What a call is charged to a virtual key, kept for the call being served.

`CallContext` (server/interceptors.py) authenticates a call and, for a virtual key, sets a
`Caller` in the call's context for the time the call runs (None for the master key or
with keys off: an in-process call runs in its caller's context, and a call made with the
master key must not charge a key outside it). What runs inside the call uses it:

- the Completion servicer keeps a running estimate of the call's tokens
  (`report_usage_estimate`), charged when a call ends without the upstream's usage: a
  caller who left a stream after the text and before its last message (which carries the
  usage), or an upstream that reports none, paid nothing before;
- `CompletionLink` admits each model call a service (Agent, Prove, CodeWorld) makes for
  the caller by the caller's key and charges its usage to it (`admit_model_call`,
  `charge_model_call`): services reach Completion with the mesh's own key, which pays
  nothing, so before, an agent run spent tokens no key paid for. Such a call is admitted
  only while what the key's completions in flight reserve leaves room, and reserves
  nothing itself (its end is the service's to see; `CallContext` reserves a completion's
  estimate and releases it when the completion ends);
- ListModels shows a key limited to some models those it may call (`caller_models`);
- CodeWorld keeps a virtual key's sessions apart from every other caller's
  (`caller_key_id`).
"""

from __future__ import annotations

import asyncio
import contextvars

from .keys import Authenticator, Principal

__all__ = ["Caller", "admit_model_call", "caller_key_id", "caller_models", "charge_model_call",
           "current", "report_usage_estimate", "usage_estimate_wanted"]


class Caller:
    """The virtual key a call is served for (none for the master key or with keys off):
    what its handler estimates the call has used so far, and what the model calls a service
    makes on its behalf are admitted by and charged to."""

    __slots__ = ("auth", "completion_tokens", "principal", "prompt_tokens")

    def __init__(self, auth: Authenticator, principal: Principal) -> None:
        self.auth = auth
        self.principal = principal
        self.prompt_tokens = self.completion_tokens = 0


#: The call being served's Caller (set and reset by `CallContext`).
current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "scillm_caller", default=None)


def usage_estimate_wanted() -> bool:
    """Whether the call being served is charged to a virtual key (so an estimate of its
    tokens is worth keeping: `report_usage_estimate`)."""
    return current.get() is not None


def report_usage_estimate(prompt_tokens: int, completion_tokens: int) -> None:
    """A handler's (running) estimate of the tokens its call has used.

    A key is charged the usage a call ends with. A caller who leaves a stream before its
    last message (after the text, before the usage) paid nothing, nor did any call whose
    upstream reports no usage; such a call is charged this estimate instead."""
    caller = current.get()
    if caller is not None:
        caller.prompt_tokens = prompt_tokens
        caller.completion_tokens = completion_tokens


def caller_models() -> tuple[str, ...] | None:
    """The models the served caller's key is limited to; None when it is not (the master
    key, keys off, or a key for every model)."""
    caller = current.get()
    record = caller.principal.record if caller is not None else None
    return tuple(record.models) if record is not None and record.models else None


def caller_key_id() -> str:
    """The served caller's virtual key's id (the one `CallContext` counts its open streams
    by: stable, safe to log); empty for the master key or with keys off."""
    caller = current.get()
    return caller.principal.key_id if caller is not None else ""


async def admit_model_call(model: str) -> None:
    """Raise unless the caller being served may have a service call `model` for it now
    (see `Authenticator.admit_model_call`); nothing to check for the master key."""
    caller = current.get()
    if caller is not None:
        await caller.auth.admit_model_call(caller.principal, model)


async def charge_model_call(model: str, prompt_tokens: int, completion_tokens: int) -> None:
    """Charge a model call a service made on the served caller's behalf to the caller's key.

    Services reach Completion with the mesh's own key (`CompletionLink`), which pays
    nothing; before, an agent run, a formalize loop or an MCTS search spent tokens that no
    virtual key paid for."""
    caller = current.get()
    if caller is not None and (prompt_tokens or completion_tokens):
        # Shielded: tokens spent upstream are counted even if the caller leaves now.
        await asyncio.shield(caller.auth.account(caller.principal, model, prompt_tokens,
                                                 completion_tokens))
