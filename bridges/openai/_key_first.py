"""The caller's key before its body: what the door refuses itself is answered once the mesh
has taken the caller's key.

The mesh checks a caller's key first in every call (its interceptor, before a servicer
reads the request). The door reads a request (its size, encoding, JSON, fields and query)
and translates it before it calls the mesh, so a request it refused itself never reached
that check: a caller with no key, or a wrong one, was told what was wrong with its body
(400, 413, 415) where any call would have answered 401. Every such refusal goes through
`KeyFirst.refusal`, on every route: it asks the mesh for the caller's own key
(`KeyService.GetKey` naming none, as `GET /key/info` without `key` does, which spends none
of a key's requests per minute), and a key the mesh does not take (401, or 403) is the
answer in place of the refusal. Any other outcome leaves the refusal as it was: the key
read; the master key, which no key store holds (NOT_FOUND); keys off (no master key:
FAILED_PRECONDITION); the mesh out of reach, which the call itself would have met.

A failure the mesh answered is passed on as it is (`error`): the mesh checked the key
before the body. A request the door sends on makes no call more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import grpc
from starlette.responses import Response

from scillm.clients import ScillmClient
from scillm.clients.errors import InvalidRequestError, RPCError

from .errors import error_response

__all__ = ["Credentials", "KeyFirst", "Refuse"]

#: The caller's key as gRPC metadata (app._credentials).
Credentials = Sequence[tuple[str, str]]
#: `KeyFirst.error`, as the routes' modules take it.
Refuse = Callable[[Credentials, InvalidRequestError | RPCError], Awaitable[Response]]

#: What the mesh answers a key it does not take.
_KEY_REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class KeyFirst:
    """The door's refusals, each answered after the caller's key (the module docstring)."""

    def __init__(self, client: ScillmClient) -> None:
        self._client = client

    async def refusal(self, credentials: Credentials, refused: Response) -> Response:
        """`refused`, the door's own answer to a request it did not send on; or, when the
        mesh does not take the caller's key, the mesh's answer to it (with `refused`'s
        `connection` header: a body left unread closes the connection)."""
        try:
            await self._client.keys.get("", metadata=credentials)
        except RPCError as exc:
            if exc.code in _KEY_REFUSED:
                answer = error_response(exc)
                if "connection" in refused.headers:
                    answer.headers["connection"] = refused.headers["connection"]
                return answer
        return refused

    async def error(self, credentials: Credentials,
                    exc: InvalidRequestError | RPCError) -> Response:
        """The answer to `exc`: a call's failure as the mesh gave it, or (InvalidRequestError)
        the door's own refusal, through `refusal`."""
        if isinstance(exc, RPCError):
            return error_response(exc)
        return await self.refusal(credentials, error_response(exc))
