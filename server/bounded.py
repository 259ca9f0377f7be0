"""Bodies read no further than a limit: what a peer sends (a caller's request, a provider's
or a tool server's reply) must not fill the memory before its size is known.

`read_bounded` joins the chunks of a body as they come and raises the caller's own error
as soon as they pass the limit, without reading the rest. `decoded_response` gives an
httpx response whose body was read that way back its `.content` and `.text`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable

import httpx

__all__ = ["decoded_response", "read_bounded"]


async def read_bounded(chunks: AsyncIterable[bytes], limit: int,
                       too_large: Callable[[], BaseException]) -> bytes:
    """The chunks joined; `too_large()` is raised as soon as they pass `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large()
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def decoded_response(response: httpx.Response, body: bytes) -> httpx.Response:
    """`response` with `body` (read from it, decoded) as its content, for what reads
    `.content` or `.text`."""
    headers = [(k, v) for k, v in response.headers.multi_items()  # the body is decoded now
               if k.lower() not in ("content-encoding", "content-length")]
    return httpx.Response(response.status_code, headers=headers, content=body,
                          request=response.request)
