"""SciLLM clients: typed async clients over gRPC, a sync facade, and LiteLLM-style helpers.

    from scillm.clients import ScillmClient, completion
"""

from . import openai_wire
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
from ._litellm import acompletion, completion, parallel_acompletions
from .errors import InvalidRequestError, RPCError, ScillmError

__all__ = [
    "AgentClient",
    "CodeWorldClient",
    "CompletionClient",
    "InvalidRequestError",
    "KeyClient",
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
]
