"""Who may see the runs UI, and how a browser presents its key.

The UI has the API's keys: with no master key configured it is open (as the API is);
with one, a caller needs the master key or a virtual key whose metadata grants
`{"runs": "read"}`. A script sends `Authorization: Bearer <key>` (or `x-api-key`) as it
does to the API; a browser signs in once on `/ui/login`, which keeps the key in an
HttpOnly, SameSite=Strict cookie scoped to `/ui` (Secure over TLS) until sign-out or
`MAX_AGE_S`. A replay that carries only the cookie must also carry the header
`x-scillm-ui: 1`, which another site's page cannot send; sign-in and sign-out forms are
refused when the browser says they came from another site (`Sec-Fetch-Site`, `Origin`).

    Denied            a refusal: 401 (no key, unknown key) or 403 (a key without runs)
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from scillm.server.keys import Authenticator, Forbidden, Unauthenticated, token_from_metadata

__all__ = ["COOKIE", "CSRF_HEADER", "MAX_AGE_S", "Caller", "Denied", "UiAccess"]

#: The cookie holding a signed-in browser's key.
COOKIE = "scillm_ui_key"
#: The header a cookie-authenticated request that changes something must carry.
CSRF_HEADER = "x-scillm-ui"
#: How long a sign-in lasts, seconds.
MAX_AGE_S = 8 * 3600


class Denied(Exception):
    """The caller may not read runs: `status` 401 (no or unknown key) or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who is asking: the key they presented (None without one) and how."""

    key: str | None
    #: Whether the key came from the sign-in cookie (not a header).
    from_cookie: bool = False


class UiAccess:
    """The API's keys applied to the UI (see the module docstring)."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    @property
    def enabled(self) -> bool:
        """Whether keys are enforced (a master key is configured)."""
        return self._auth.enabled

    @staticmethod
    def caller(request: Request) -> Caller:
        """The key a request presents: a header first, else the sign-in cookie."""
        headers = [(k, request.headers[k]) for k in ("authorization", "x-api-key")
                   if k in request.headers]
        token = token_from_metadata(headers)
        if token:
            return Caller(token)
        cookie = request.cookies.get(COOKIE)
        return Caller(cookie, from_cookie=True) if cookie else Caller(None)

    async def check(self, key: str | None) -> None:
        """Raise Denied unless `key` may read runs."""
        try:
            principal = await self._auth.authenticate(key)
            self._auth.authorize_runs(principal)
        except Forbidden as exc:
            raise Denied(403, str(exc)) from None
        except Unauthenticated as exc:
            raise Denied(401, str(exc)) from None

    @staticmethod
    def sign_in(response: Response, request: Request, key: str) -> None:
        """Keep `key` in the sign-in cookie."""
        response.set_cookie(COOKIE, key, max_age=MAX_AGE_S, path="/ui", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")

    @staticmethod
    def sign_out(response: Response) -> None:
        """Forget the sign-in cookie."""
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
