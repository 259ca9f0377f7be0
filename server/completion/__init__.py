"""Completion domain: route OpenAI chat completion requests to upstream providers.

Plain typed Python, no gRPC or HTTP server knowledge. Build a `CompletionEngine` from
`CompletionSettings`, `await engine.start()`, then `complete(request)` or iterate
`stream(request)`, `embed(request)` for embeddings, `text_complete(request)` or iterate
`text_stream(request)` for text completions; `await engine.close()` at shutdown. Errors are
in `errors`.
"""

from ._embeddings import Embedded
from ._engine import CompletionEngine
from ._estimate import estimated_usage
from ._retry import RetryHooks
from ._settings import (
    CacheSettings,
    CompletionSettings,
    DeploymentSettings,
    RouterSettings,
    Secret,
    model_prices,
    resolve_env,
)
from ._types import CacheStats, Completed, Routing, StreamChunk, StreamEnd, StreamEvent
from .errors import (
    AuthenticationError,
    CompletionError,
    ContextWindowExceeded,
    InvalidRequest,
    ModelNotFound,
    ProviderUnavailable,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = [
    "AuthenticationError",
    "CacheSettings",
    "CacheStats",
    "Completed",
    "CompletionEngine",
    "CompletionError",
    "CompletionSettings",
    "ContextWindowExceeded",
    "DeploymentSettings",
    "Embedded",
    "InvalidRequest",
    "ModelNotFound",
    "ProviderUnavailable",
    "RateLimited",
    "RetryHooks",
    "RouterSettings",
    "Routing",
    "Secret",
    "StreamChunk",
    "StreamEnd",
    "StreamEvent",
    "UpstreamError",
    "UpstreamTimeout",
    "estimated_usage",
    "model_prices",
    "resolve_env",
]
