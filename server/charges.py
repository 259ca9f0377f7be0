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
  nothing, so before, an agent run spent tokens no key paid for. Such a call reserves its
  estimate (`completion_estimate`) while it runs, as `CallContext` has a completion
  reserve its own: ten agent runs at once each had their model call admitted beside
  what the key's completions reserved, and spent past the budget together;
- the response cache says when it answers the call (`report_cache_hit`): a cache hit
  costs nothing upstream, and its key is charged nothing for it, as LiteLLM's proxy
  charges a cache hit nothing: neither the usage its reply reports (the interceptor also
  reads the reply's `routing.cache_hit`) nor an estimate (a caller who leaves a replayed
  stream before its end, which says it was a cache hit), nor tokens of its minute;
- ListModels shows a key limited to some models those it may call (`caller_models`);
- CodeWorld keeps a virtual key's sessions apart from every other caller's
  (`caller_key_id`).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from .keys import Authenticator, Principal, Reservation

__all__ = ["DEFAULT_COMPLETION_TOKENS", "Caller", "admit_model_call", "best_of",
           "caller_key_id", "caller_models", "charge_model_call", "completion_estimate", "current",
           "report_cache_hit", "report_usage_estimate", "usage_estimate_wanted"]

#: The answer a completion that sets no `max_tokens` is expected to write, in tokens.
DEFAULT_COMPLETION_TOKENS = 1024


def completion_estimate(request: Any, size: int | None = None) -> tuple[int, int]:
    """What a `CompletionRequest` is expected to use, (prompt, completion) tokens: a token
    per four bytes of it (`size`, else its own; its messages and the rest: more than its
    prompt's tokens for most text), and its `max_completion_tokens` or `max_tokens` (or
    `DEFAULT_COMPLETION_TOKENS`) for each of its `n` answers, or of its `best_of` (an
    upstream's own field, in `extra_body`) when that is more. A negative number (refused
    later, as invalid) counts as 0: an estimate is never less than nothing."""
    answer = max(0, request.max_completion_tokens if request.HasField("max_completion_tokens")
                 else request.max_tokens if request.HasField("max_tokens")
                 else DEFAULT_COMPLETION_TOKENS)
    answers = max(request.n if request.HasField("n") else 1, best_of(request))
    return -(-(request.ByteSize() if size is None else size) // 4), answer * answers


def best_of(request: Any) -> int:
    """A request's `best_of` (in its `extra_body`): the answers an upstream that takes it
    makes and bills, of which it returns `n` (OpenAI's text completions; vLLM's chat). At
    most 20, the most text completions accept (more is refused later, as invalid); 1
    when unset or not a number."""
    if not request.HasField("extra_body"):
        return 1
    value = request.extra_body.fields.get("best_of")
    if value is None or value.WhichOneof("kind") != "number_value":
        return 1
    number = value.number_value
    return int(min(max(number, 1), 20)) if number == number else 1  # NaN: refused later


class Caller:
    """The virtual key a call is served for (none for the master key or with keys off):
    what its handler estimates the call has used so far, and what the model calls a service
    makes on its behalf are admitted by and charged to."""

    __slots__ = ("auth", "cache_hit", "completion_tokens", "principal", "prompt_tokens")

    def __init__(self, auth: Authenticator, principal: Principal) -> None:
        self.auth = auth
        self.principal = principal
        self.prompt_tokens = self.completion_tokens = 0
        #: The call is answered from the response cache: it is charged nothing.
        self.cache_hit = False


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


def report_cache_hit() -> None:
    """The call being served is answered from the response cache (see the module
    docstring): its key is charged nothing for it, however it ends."""
    caller = current.get()
    if caller is not None:
        caller.cache_hit = True


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


async def admit_model_call(model: str, estimate: tuple[int, int] = (0, 0),
                           ) -> Reservation | None:
    """Raise unless the caller being served may have a service call `model` for it now
    (see `Authenticator.admit_model_call`), reserving `estimate` (prompt, completion
    tokens) of its key's limits: release what is returned when the call ends. Nothing to
    check for the master key."""
    caller = current.get()
    if caller is None:
        return None
    return await caller.auth.admit_model_call(caller.principal, model, estimate)


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
