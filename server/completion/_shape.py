"""Whether an upstream's reply fits the contract: it does when it reads into the proto the
servicer answers with (`openai_wire`); what does not is the upstream's fault (502)."""

from __future__ import annotations

from typing import Any

from scillm.clients import openai_wire as wire
from scillm.clients.errors import InvalidRequestError

__all__ = ["MISSHAPEN", "reply_fits"]

#: What reading an upstream's reply into the contract raises on a reply of another shape.
MISSHAPEN = (InvalidRequestError, ValueError, TypeError, AttributeError, OverflowError)


def reply_fits(reply: Any) -> bool:
    """Whether a `chat.completion` reads as a `CompletionResponse`."""
    try:
        wire.response_to_proto(reply)
    except MISSHAPEN:
        return False
    return True
