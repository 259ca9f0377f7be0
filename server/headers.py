"""What an HTTP/1.1 header the mesh sends for someone else may hold: the check on an
operator's configured upstream headers and on a run's tool headers, before any request.

Left to the HTTP client, a CR LF in a value failed each call as a protocol error blamed on
the server ("unreachable: LocalProtocolError"), and a non-ASCII value raised
UnicodeEncodeError out of the call (an INTERNAL error)."""

from __future__ import annotations

import re

__all__ = ["header_problem"]

#: An HTTP field name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: A value an HTTP/1.1 line carries: visible ASCII, spaces and tabs.
_VALUE = re.compile(r"[\t\x20-\x7e]*")


def header_problem(name: object, value: object) -> str | None:
    """What is wrong with the header `name: value`, or None when HTTP carries it."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        return f"{name!r} is not an HTTP header name"
    if not isinstance(value, str) or not _VALUE.fullmatch(value):
        return (f"the value of {name!r} must be text of printable ASCII, spaces and tabs "
                "(what an HTTP header carries)")
    return None
