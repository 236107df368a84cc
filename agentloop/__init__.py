"""agentloop: an asynchronous, multi-step, tool-calling agent runtime for Kimi K2.6 and any
OpenAI-compatible endpoint."""

from .agent import Agent, RunStream
from .batch import BatchSummary, abatch, batch
from .budget import PRESETS, Budget
from .clock import ManualClock, MonotonicClock, ScaledClock
from .errors import (
    AgentloopError,
    APIConnectionError,
    APIError,
    AuthenticationError,
    ConfigurationError,
    ContentFilterError,
    ContextLengthError,
    EmptyResponseError,
    EngineOverloadedError,
    EstimatedUsageWarning,
    InvalidRequestError,
    NotFoundError,
    NothingListeningError,
    PermissionDeniedError,
    ProtocolError,
    QuotaExceededError,
    RateLimitError,
    RetriesExhaustedError,
    ServerError,
    StreamInterruptedError,
    StreamStalledError,
    ToolSchemaError,
    UnexpectedResponseError,
)
from .limits import RateLimiter
from .messages import Usage
from .models import WEB_SEARCH, BuiltinTool, KimiModel, OpenAIModel
from .pricing import KIMI_K2_6, RateCard
from .result import Edited, PendingCall, Rejected, RunResult, StepRecord, ToolCallRecord
from .retry import RetryPolicy
from .tools import Tool, tool

__all__ = [
    "KIMI_K2_6",
    "PRESETS",
    "WEB_SEARCH",
    "APIConnectionError",
    "APIError",
    "Agent",
    "AgentloopError",
    "AuthenticationError",
    "BatchSummary",
    "Budget",
    "BuiltinTool",
    "ConfigurationError",
    "ContentFilterError",
    "ContextLengthError",
    "Edited",
    "EmptyResponseError",
    "EngineOverloadedError",
    "EstimatedUsageWarning",
    "InvalidRequestError",
    "KimiModel",
    "ManualClock",
    "MonotonicClock",
    "NotFoundError",
    "NothingListeningError",
    "OpenAIModel",
    "PendingCall",
    "PermissionDeniedError",
    "ProtocolError",
    "QuotaExceededError",
    "RateCard",
    "RateLimitError",
    "RateLimiter",
    "Rejected",
    "RetriesExhaustedError",
    "RetryPolicy",
    "RunResult",
    "RunStream",
    "ScaledClock",
    "ServerError",
    "StepRecord",
    "StreamInterruptedError",
    "StreamStalledError",
    "Tool",
    "ToolCallRecord",
    "ToolSchemaError",
    "UnexpectedResponseError",
    "Usage",
    "abatch",
    "batch",
    "tool",
]
