"""Events: small typed values describing a run as it happens.

``Agent.stream`` yields them; ``Agent.run`` consumes the same stream. Telemetry, the CLI's live
view and transcripts are consumers of this stream, not hooks inside the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .messages import Usage

if TYPE_CHECKING:
    from .result import RunResult, StepRecord


@dataclass(slots=True)
class RunStarted:
    task: str
    model: str


@dataclass(slots=True)
class StepStarted:
    step: int
    max_tokens: int


@dataclass(slots=True)
class ReasoningDelta:
    step: int
    text: str


@dataclass(slots=True)
class TextDelta:
    step: int
    text: str


@dataclass(slots=True)
class OutputDelta:
    """A fragment of the structured output (the ``final_answer`` call's arguments) as the model
    writes it (an ``output_type`` run)."""

    step: int
    text: str


@dataclass(slots=True)
class Retry:
    step: int
    attempt: int
    error: str
    wait: float


@dataclass(slots=True)
class ToolCallStarted:
    step: int
    call_id: str
    name: str
    arguments: str
    source: str | None = None  # where the tool comes from: None (Python), "mcp:<server>"


@dataclass(slots=True)
class ToolCallFinished:
    step: int
    call_id: str
    name: str
    ok: bool
    error: str | None
    duration_s: float
    result: str
    source: str | None = None


@dataclass(slots=True)
class StepFinished:
    step: int
    record: StepRecord
    usage_so_far: Usage
    cost_so_far: float


@dataclass(slots=True)
class ContextEdited:
    """A context strategy edited the history before ``step``; ``usage`` is the cost of any model
    call the edit made (a compaction summary)."""

    step: int
    strategy: str
    tokens_before: int
    tokens_after: int
    detail: str
    usage: Usage


@dataclass(slots=True)
class LimitHit:
    reason: str
    detail: str


@dataclass(slots=True)
class RunFinished:
    result: RunResult


Event = (
    RunStarted
    | StepStarted
    | ReasoningDelta
    | TextDelta
    | OutputDelta
    | Retry
    | ToolCallStarted
    | ToolCallFinished
    | StepFinished
    | ContextEdited
    | LimitHit
    | RunFinished
)

__all__ = ["Event"]
