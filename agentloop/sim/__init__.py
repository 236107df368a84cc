"""The Kimi API simulator: the test double for everything (see ``server.py``)."""

from .faults import RETRYABLE, FaultPlan
from .policies import (
    POLICIES,
    BrowsePolicy,
    EchoPolicy,
    PolicyContext,
    ResearchPolicy,
    ScriptedPolicy,
    ToolCall,
    ToolLoopPolicy,
    Turn,
)
from .server import SimConfig, SimServer, SimStats, count_tokens, message_tokens

__all__ = [
    "POLICIES",
    "RETRYABLE",
    "BrowsePolicy",
    "EchoPolicy",
    "FaultPlan",
    "PolicyContext",
    "ResearchPolicy",
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
