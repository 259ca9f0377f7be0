"""Which protocol a server speaks: TLS or not, asked with a handshake of our own.

A gRPC dial that fails says UNAVAILABLE whether nothing listens or a TLS server was dialed
in plaintext (or the reverse); a caller that knows which can say so (`scillm doctor
--target`, the client verbs) instead of "start it".
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

__all__ = ["first_address", "speaks_tls"]


def first_address(target: str) -> tuple[str, int] | None:
    """The host and port of `target`'s first address (None for a form not host:port)."""
    text = target.strip()
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        text = text.removeprefix(scheme)
    if "://" in text or text.startswith("unix:"):
        return None
    host, found, port = text.split(",", 1)[0].strip().rpartition(":")
    if not found or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


async def speaks_tls(target: str, timeout_s: float) -> bool | None:
    """Whether the server at `target` (its first address) answers a TLS handshake: True;
    False when it answers otherwise; None when it does not answer (refused, silent)."""
    address = first_address(target)
    if address is None:
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # which protocol it speaks, not who it is
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(*address, ssl=context), timeout_s)
    except ssl.SSLError as exc:
        # An alert is a TLS server refusing (a client certificate it wants); any other
        # failure (WRONG_VERSION_NUMBER, an EOF) is a server that does not speak TLS.
        return "ALERT" in str(exc.reason or "")
    except (OSError, TimeoutError):
        return None
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    return True
