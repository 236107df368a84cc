"""Model clients: the provider-neutral interface, Kimi and OpenAI-compatible endpoints."""

from .base import (
    AnyTool,
    Assembler,
    BuiltinTool,
    Delta,
    FinishDelta,
    Model,
    ModelRequest,
    ModelResponse,
    ReasoningDelta,
    ResponseStarted,
    RetryDelta,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
    assemble,
)
from .kimi import CHINA, INTERNATIONAL, WEB_SEARCH, KimiModel
from .openai import OpenAIModel

__all__ = [
    "CHINA",
    "INTERNATIONAL",
    "WEB_SEARCH",
    "AnyTool",
    "Assembler",
    "BuiltinTool",
    "Delta",
    "FinishDelta",
    "KimiModel",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "OpenAIModel",
    "ReasoningDelta",
    "ResponseStarted",
    "RetryDelta",
    "TextDelta",
    "ToolCallDelta",
    "ToolSpec",
    "UsageDelta",
    "assemble",
]
