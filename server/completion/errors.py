"""Errors raised by the Completion domain.

One hierarchy; servicers map each class to a canonical status code::

    CompletionError                      base of everything raised on purpose
    ├── InvalidRequest(param)            the request itself is malformed
    ├── ModelNotFound(model, suggestions)
    │                                    no deployment serves that model name
    ├── AuthenticationError(status)      the upstream refused our credentials (401/403)
    ├── ProviderUnavailable              the provider cannot run here: a missing extra
    │                                    (`scillm[litellm]`, `scillm[local]`) or API key
    └── UpstreamError(status, retry_after_s, body)
        │                                the upstream failed (HTTP status, or None for
        │                                connection errors and malformed replies)
        ├── RateLimited                  429, or every deployment cooling down
        ├── UpstreamTimeout              408, or our per-call timeout elapsed
        └── ContextWindowExceeded        the prompt does not fit the model's window

Any other exception escaping the domain is a bug, not a client error.
"""

from __future__ import annotations

from ..retry_after import clamp_wait

__all__ = [
    "AuthenticationError",
    "CompletionError",
    "ContextWindowExceeded",
    "InvalidRequest",
    "ModelNotFound",
    "ProviderUnavailable",
    "RateLimited",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamTimeout",
]


class CompletionError(Exception):
    """Base of every error the Completion domain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def after(self, model: str, first: CompletionError) -> None:
        """Say in this error (a fallback's, the one raised) why `model`, the one asked
        for, failed first: before, only the last fallback's reason reached the caller."""
        self.message = f"{self.message} (a fallback; {model!r} failed first: {first.message})"
        self.args = (self.message,)


class InvalidRequest(CompletionError):
    """The request is malformed; `param` names the offending field when known."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(CompletionError):
    """No configured deployment serves `model`; `suggestions` are close names."""

    def __init__(self, model: str, suggestions: list[str]) -> None:
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"model {model!r} is not configured{hint}")
        self.model = model
        self.suggestions = suggestions
        self.param = "model"


class AuthenticationError(CompletionError):
    """The upstream rejected the configured credentials; `status` is its HTTP status."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProviderUnavailable(CompletionError):
    """The provider cannot run here (missing optional extra or API key)."""


class UpstreamError(CompletionError):
    """The upstream call failed; `status` is its HTTP status, or None."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after_s: float | None = None, body: str = "",
                 upstream_code: str = "") -> None:
        super().__init__(message)
        self.status = status
        # Finite and at most a day, whoever made the error (see `server/retry_after.py`).
        self.retry_after_s = None if retry_after_s is None else clamp_wait(retry_after_s)
        self.body = body
        #: The `code` of the upstream's OpenAI error body (`insufficient_quota`), if any.
        self.upstream_code = upstream_code


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (HTTP 400 or 422: a value it does not
    take): the caller's error, not the gateway's; `param` is the field it named."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "",
                 upstream_code: str = "", param: str | None = None) -> None:
        super().__init__(message, status=status, body=body, upstream_code=upstream_code)
        self.param = param


class RateLimited(UpstreamError):
    """The upstream answered 429, or every deployment of the model is cooling down."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the per-call timeout."""


class ContextWindowExceeded(UpstreamError):
    """The prompt is longer than the model's context window."""
