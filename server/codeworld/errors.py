"""The CodeWorld error hierarchy.

Every error CodeWorld raises on purpose is a ``CodeWorldError``; anything else is a bug.
A servicer maps the left column to a canonical status code::

    CodeWorldError                       (INTERNAL unless a subclass says otherwise)
    ├── InvalidRequest                   INVALID_ARGUMENT: the caller sent something wrong
    │   ├── InvalidLimits                a sandbox limit is out of its documented range
    │   ├── TooManyStrategies            more strategies than settings.max_strategies
    │   ├── TooManyItems                 more items than settings.max_items
    │   ├── InvalidSource                source that does not parse / unsupported language
    │   │   └── PolicyViolation          strict mode: source uses a denied construct
    │   └── InvalidScorer                score() source that does not parse or lacks score()
    ├── SandboxError                     UNAVAILABLE: the sandbox could not run the code
    │   ├── SandboxUnavailable           no worker could be started (or sandbox closed)
    │   └── WorkerCrashed                a worker died or answered garbage; it is replaced
    ├── GenerationFailed                 UNAVAILABLE: the model did not yield valid variants
    └── SessionStoreError                the session store failed: reported in the summary
                                         (SessionInfo.error), the run stands

Failures *inside* a strategy's run (an exception, a timeout, a memory bomb, a score()
that raises) are not raised: they are recorded on the run with a status and the error,
naming the strategy and the item.
"""

from __future__ import annotations


class CodeWorldError(Exception):
    """Base class of every error CodeWorld raises on purpose."""


class InvalidRequest(CodeWorldError):
    """The request is malformed; retrying it unchanged will fail again."""


class InvalidLimits(InvalidRequest):
    """A sandbox limit lies outside its allowed range."""


class TooManyStrategies(InvalidRequest):
    """The request holds more strategies than the engine accepts."""


class TooManyItems(InvalidRequest):
    """The request holds more items than the engine accepts."""


class InvalidSource(InvalidRequest):
    """Source code that cannot run: syntax error, unknown language, bad entry name."""

    def __init__(self, message: str, *, strategy: str | None = None) -> None:
        super().__init__(message if strategy is None else f"strategy {strategy!r}: {message}")
        self.strategy = strategy


class PolicyViolation(InvalidSource):
    """Strict mode rejected the source (denied import, call or write)."""


class InvalidScorer(InvalidRequest):
    """The user-supplied score() source is unusable before it even runs."""


class SandboxError(CodeWorldError):
    """The sandbox itself failed (as opposed to the code it ran)."""


class SandboxUnavailable(SandboxError):
    """No sandbox worker could be started, or the sandbox is closed."""


class WorkerCrashed(SandboxError):
    """A worker died or broke protocol during an execution; it has been replaced."""


class GenerationFailed(CodeWorldError):
    """The model's answer could not be turned into valid variants."""


class SessionStoreError(CodeWorldError):
    """The session store (SQLite) could not be read or written."""
