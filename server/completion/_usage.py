"""An upstream's token usage, read so that no value an upstream sends breaks a call or a bill.

Usage comes from the upstream, and a careless or hostile one may send anything: `-5000`
(a negative charge would refill a key's budget), `1e30`, `"lots"`. Read as they came, such
values made the answered call an INTERNAL error when converted for the wire. Here a count
is a whole number from 0 to 2**53 (a digit string is read as one); a usage holding any
other count is no usage at all (None: the call goes on, and a key is charged the estimate,
as for an upstream that reports none), and the reason is logged. A missing
`total_tokens`, or one below the sum, is the sum.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_COUNT", "clean_usage", "count"]

log = logging.getLogger("scillm.completion")

#: The largest count taken as one (a double holds every whole number up to it).
MAX_COUNT = 2 ** 53
_DETAILS = (("prompt_tokens_details", "cached_tokens"),
            ("completion_tokens_details", "reasoning_tokens"))


def count(value: Any) -> int | None:
    """`value` as a token count (absent: 0), or None when it is not one."""
    if value is None:
        return 0
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if 0 <= value <= MAX_COUNT else None


def _well_formed(raw: Mapping[str, Any]) -> bool:
    """Counts that are ints in range, a total of at least their sum, details of the form."""
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    total = raw.get("total_tokens")
    if not (type(prompt) is int and type(completion) is int and type(total) is int
            and 0 <= prompt <= MAX_COUNT and 0 <= completion <= MAX_COUNT
            and prompt + completion <= total <= MAX_COUNT):
        return False
    for key, field in _DETAILS:
        details = raw.get(key)
        if details is not None and not (isinstance(details, dict) and (
                (value := details.get(field)) is None
                or (type(value) is int and 0 <= value <= MAX_COUNT))):
            return False
    return True


def clean_usage(raw: Any, where: str) -> dict[str, Any] | None:
    """An OpenAI usage object as the mesh counts it (see the module), or None."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        log.warning("%s reported a usage that is not an object (%.80r): counted as none",
                    where, raw)
        return None
    if _well_formed(raw):  # the common case, on the hot path: nothing to copy
        return dict(raw) if not isinstance(raw, dict) else raw
    prompt, completion = count(raw.get("prompt_tokens")), count(raw.get("completion_tokens"))
    if prompt is None or completion is None:
        log.warning("%s reported token counts that are not counts (%.80r, %.80r): the usage "
                    "is counted as none", where, raw.get("prompt_tokens"),
                    raw.get("completion_tokens"))
        return None
    total = count(raw.get("total_tokens")) if raw.get("total_tokens") is not None else None
    out: dict[str, Any] = {**raw, "prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": total if total is not None and
                           total >= prompt + completion else prompt + completion}
    for key, field in _DETAILS:
        details = raw.get(key)
        if details is None:
            continue
        value = count(details.get(field)) if isinstance(details, Mapping) else None
        if value is None:
            out.pop(key)
        else:
            out[key] = {**details, field: value}
    return out
