"""The Kimi API simulator: the test double for everything (see ``server.py``)."""

from .faults import RETRYABLE, FaultPlan
from .policies import (
    POLICIES,
    EchoPolicy,
    PolicyContext,
    ScriptedPolicy,
    ToolCall,
    ToolLoopPolicy,
    Turn,
)
from .server import SimConfig, SimServer, SimStats, count_tokens, message_tokens

__all__ = [
    "POLICIES",
    "RETRYABLE",
    "EchoPolicy",
    "FaultPlan",
    "PolicyContext",
    "ScriptedPolicy",
    "SimConfig",
    "SimServer",
    "SimStats",
    "ToolCall",
    "ToolLoopPolicy",
    "Turn",
    "count_tokens",
    "message_tokens",
]
