"""SciLLM clients: typed async clients over gRPC, a sync facade, and LiteLLM-style helpers.

    from scillm.clients import ScillmClient, completion

Batches: `parallel_as_completed` (results as they finish) and `parallel_acompletions`
(collected), under an optional `Budget`; model preflight: `ModelCatalog`.
"""

from . import openai_wire
from ._batch import BatchResult, Budget, parallel_acompletions, parallel_as_completed
from ._client import (
    AgentClient,
    CodeWorldClient,
    CompletionClient,
    KeyClient,
    ProveClient,
    ScillmClient,
    SyncScillmClient,
    TlsConfig,
    channel_target,
)
from ._litellm import acompletion, completion
from ._models import ModelCatalog, ModelResolution, resolve_model
from .errors import (
    BudgetExceeded,
    InvalidRequestError,
    ModelListError,
    ModelNotAvailable,
    RPCError,
    ScillmError,
)

__all__ = [
    "AgentClient",
    "BatchResult",
    "Budget",
    "BudgetExceeded",
    "CodeWorldClient",
    "CompletionClient",
    "InvalidRequestError",
    "KeyClient",
    "ModelCatalog",
    "ModelListError",
    "ModelNotAvailable",
    "ModelResolution",
    "ProveClient",
    "RPCError",
    "ScillmClient",
    "ScillmError",
    "SyncScillmClient",
    "TlsConfig",
    "acompletion",
    "channel_target",
    "completion",
    "openai_wire",
    "parallel_acompletions",
    "parallel_as_completed",
    "resolve_model",
]
