"""Text from untrusted code and tool servers, made safe for UTF-8 wires."""

from __future__ import annotations


def utf8_safe(text: str) -> str:
    """``text`` with each lone surrogate written as its escape (``\\ud800``).

    JSON's ``"\\ud800"`` escape decodes to a lone surrogate, which no UTF-8 wire carries: a
    protobuf string field holding one failed the whole call (INTERNAL), and so did a JSON
    body encoded as UTF-8. Untrusted text (a strategy's exception, a ``score()`` metric
    name, a tool's answer) passes through this once where it enters the service. Valid
    text, non-ASCII included, is returned unchanged (the same object); only text holding a
    lone surrogate is copied.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
