"""Errors of the Codex sidecar; each carries the HTTP status and OpenAI error type it is
answered with::

    SidecarError(status, type, code)     base of everything raised on purpose
    ├── BadRequest            400  the request is malformed (names the field)
    ├── CodexUnauthorized     401  the Codex CLI reports no (or rejected) credentials
    ├── NotRunnable           501  this sidecar cannot serve the request (no CLI here)
    ├── CodexFailed           502  the CLI failed, or printed no agent message
    ├── UpstreamFailed        502  forward mode: the upstream could not be reached
    └── CodexTimeout          504  the CLI ran past the absolute timeout (its process
                                   group was killed)
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "CodexFailed",
    "CodexTimeout",
    "CodexUnauthorized",
    "NotRunnable",
    "SidecarError",
    "UpstreamFailed",
]


class SidecarError(Exception):
    """Base of the sidecar's errors: `status` and `type` are the HTTP answer's."""

    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(SidecarError):
    """The request is malformed."""

    status, type = 400, "invalid_request_error"


class CodexUnauthorized(SidecarError):
    """The Codex CLI has no credentials, or its credentials were refused."""

    status, type, code = 401, "authentication_error", "codex_not_logged_in"


class CallerUnauthorized(SidecarError):
    """The sidecar requires a key (`--require-key`) and the request did not carry it."""

    status, type, code = 401, "authentication_error", "invalid_api_key"


class NotRunnable(SidecarError):
    """The request needs something this sidecar does not run (the CLI)."""

    status, type = 501, "not_implemented_error"


class CodexFailed(SidecarError):
    """The Codex CLI failed (`exit_code`, None when it exited 0 without an answer)."""

    status, type, code = 502, "upstream_error", "codex_failed"

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UpstreamFailed(SidecarError):
    """Forward mode: the upstream could not be reached or answered garbage."""

    status, type, code = 502, "upstream_error", "upstream_unreachable"


class CodexTimeout(SidecarError):
    """The Codex CLI did not finish within the absolute timeout."""

    status, type, code = 504, "timeout_error", "codex_timeout"
