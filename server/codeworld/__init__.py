"""CodeWorld: run code strategies on items in a sandbox, score, judge and search them.

Plain typed domain code; it knows nothing of gRPC or HTTP. Entry point::

    async with CodeWorldEngine(CodeWorldSettings(), complete=my_model) as engine:
        async for event in engine.run(RunRequest(items=(...), strategies=(...))):
            ...  # RunResult | Generation | MctsProgress, then a terminal Summary

The sandbox alone (used by the agent loop's code tools) is ``scillm.server.codeworld.sandbox``.
Errors: ``scillm.server.codeworld.errors``.
"""

from ._autogen import Complete, Variant, parse_variants
from ._engine import CodeWorldEngine
from ._events import (
    Event,
    Generation,
    MctsProgress,
    MctsStats,
    NodeStats,
    Ranked,
    RunResult,
    SessionInfo,
    Summary,
)
from ._judge import rank
from ._model import (
    DEFAULT_WEIGHTS,
    AutogenSpec,
    Item,
    JudgeSpec,
    MctsSettings,
    RunRequest,
    Strategy,
)
from ._retention import SessionSweeper, prune_sessions, session_db_path
from ._scoring import Rubric, aggregate
from ._sessions import SessionStore
from ._settings import CodeWorldSettings
from .errors import CodeWorldError
from .sandbox import Execution, Language, Limits, Sandbox, SandboxSettings, Status

__all__ = [
    "DEFAULT_WEIGHTS",
    "AutogenSpec",
    "CodeWorldEngine",
    "CodeWorldError",
    "CodeWorldSettings",
    "Complete",
    "Event",
    "Execution",
    "Generation",
    "Item",
    "JudgeSpec",
    "Language",
    "Limits",
    "MctsProgress",
    "MctsSettings",
    "MctsStats",
    "NodeStats",
    "Ranked",
    "Rubric",
    "RunRequest",
    "RunResult",
    "Sandbox",
    "SandboxSettings",
    "SessionInfo",
    "SessionStore",
    "SessionSweeper",
    "Status",
    "Strategy",
    "Summary",
    "Variant",
    "aggregate",
    "parse_variants",
    "prune_sessions",
    "rank",
    "session_db_path",
]
