"""The one Server-Sent Events encoder of the shim."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["DONE", "event"]

#: The terminal event of an OpenAI stream.
DONE = b"data: [DONE]\n\n"


def event(payload: Any) -> bytes:
    """One `data:` event carrying `payload` as compact JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"
