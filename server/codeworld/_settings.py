"""Settings of the CodeWorld engine, read once at start-up and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._scoring import Rubric
from .sandbox import SandboxSettings


@dataclass(frozen=True, slots=True)
class CodeWorldSettings:
    """How the engine runs.

    Attributes:
        sandbox: isolation, workers and default limits.
        max_strategies, max_items: request bounds (``TooManyStrategies``/``TooManyItems``).
        rubric: references of the default rubric.
        session_db: SQLite path of session history (``":memory:"`` keeps it in memory).
        plateau_window, plateau_threshold: a plateau is a gain below ``threshold`` over
            the mean of the previous ``window`` runs.
        session_retention_days: keep session history this many days (the serving
            process's ``run_retention_days``): SQLite rows recorded before are deleted at
            start and hourly, Redis lists expire this long after their last run; 0 keeps
            it for ever (see ``_sessions``).
    """

    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    max_strategies: int = 64
    max_items: int = 1000
    rubric: Rubric = field(default_factory=Rubric)
    session_db: str = ":memory:"
    #: Redis URL for session history shared by replicas; overrides session_db when set.
    session_redis_url: str = ""
    plateau_window: int = 5
    plateau_threshold: float = 0.01
    session_retention_days: int = 0
