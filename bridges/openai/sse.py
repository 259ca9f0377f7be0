"""The one Server-Sent Events encoder of the shim."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DONE", "event"]

#: The terminal event of an OpenAI stream.
DONE = b"data: [DONE]\n\n"


def event(payload: Any) -> bytes:
    """One `data:` event carrying `payload` as compact JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":"),
                                  ensure_ascii=False).encode() + b"\n\n"
