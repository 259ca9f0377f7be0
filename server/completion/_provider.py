"""The Provider protocol: how the router talks to one kind of upstream."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

from ._settings import DeploymentSettings
from ._types import Routing

__all__ = ["Provider", "ProviderCall", "completion_id", "text_of", "without_secret"]


@dataclass(frozen=True)
class ProviderCall:
    """One upstream call: the deployment, the upstream model name and the request body.

    `body` is the caller's OpenAI request without `model`, `stream` and `scillm`; it is
    shared, never mutated (providers copy the top level when they change it). `routing`
    is the request's routing record, for a provider that reports more about its call
    (codex-agent's `retry_stats`).
    """

    deployment: DeploymentSettings
    model: str
    body: dict[str, Any]
    timeout_s: float
    routing: Routing | None = None


class Provider(Protocol):
    """One kind of upstream. Errors are raised as `CompletionError` subclasses.

    A provider that serves embeddings has `async def embed(call) -> dict` too, answering
    OpenAI's embeddings list (read by `_embeddings`); one without it serves none. One that
    serves text completions has `async def text_complete(call) -> dict`, answering OpenAI's
    `text_completion` (read by `_text`), and streams them with `text_stream(call)`, an async
    generator of OpenAI's `text_completion` chunks (the usage in a last chunk with empty
    `choices`; read by `_text.StreamReader`; closing it closes the upstream request)."""

    name: str

    async def complete(self, call: ProviderCall) -> dict[str, Any]:
        """Return an OpenAI `chat.completion` object."""
        ...

    def stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        """Yield OpenAI `chat.completion.chunk` objects; usage may come in a last chunk
        with empty `choices`. Closing the iterator closes the upstream request."""
        ...

    async def close(self) -> None:
        """Release pooled connections, threads and models."""
        ...


def text_of(content: Any) -> str:
    """The text of an OpenAI message `content`: a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
    return "".join(parts)


def completion_id(prefix: str = "chatcmpl") -> str:
    """A fresh id for a locally made completion."""
    return f"{prefix}-{time.time_ns():x}"


def without_secret(text: str, deployment: DeploymentSettings) -> str:
    """`text` with the deployment's API key blanked out.

    An upstream's error may quote the key it was sent ("Incorrect API key provided:
    sk-..."), and the error's text reaches the caller, who must never see the operator's
    key; OpenAI's own servers mask it, other OpenAI-compatible ones need not."""
    secret = deployment.api_key
    value = secret.value if secret is not None else None
    if not value or value not in text:
        return text
    if len(value) >= _LONG_KEY:
        return text.replace(value, "[redacted]")
    # A short key (local servers take any: `x`, vLLM's `EMPTY`) where it stands alone:
    # everywhere, "maximum context" read "ma[redacted]imum conte[redacted]t".
    return re.sub(rf"(?<![A-Za-z0-9_-]){re.escape(value)}(?![A-Za-z0-9_-])", "[redacted]",
                  text)


#: Keys this long are blanked wherever they occur; shorter ones where they stand alone.
_LONG_KEY = 16
