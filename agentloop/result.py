"""What a run returns: the answer, why it stopped, the transcript, per-step records, cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .messages import Message, Usage

StopReason = Literal[
    "completed",
    "max_steps",
    "token_budget",
    "cost_budget",
    "deadline",
    "cancelled",
    "error",
    "loop_detected",
    "reasoning_exhausted",
    "empty_answer",
    "refused",
    "invalid_output",
    "approval_required",
]


@dataclass(slots=True)
class ToolCallRecord:
    call_id: str  # the id its tool message answers
    name: str
    arguments: str  # the model's text as sent (its head, if over tools.MAX_ARGUMENT_CHARS)
    ok: bool
    error: str | None
    duration_s: float
    # the model's own id, when it was empty or a duplicate and ``call_id`` replaced it
    model_call_id: str | None = None
    # the length of the model's text, when ``arguments`` holds only its head
    arguments_chars: int | None = None


@dataclass(frozen=True, slots=True)
class PendingCall:
    """A tool call waiting for a person's decision (``stop_reason="approval_required"``)."""

    call_id: str
    tool: str
    arguments: str  # the model's JSON text


@dataclass(frozen=True, slots=True)
class Edited:
    """Approve a pending call with other arguments (validated like the model's)."""

    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Reject a pending call, saying why (the model is told)."""

    reason: str = ""


Decision = bool | Edited | Rejected


@dataclass(slots=True)
class StepRecord:
    step: int
    request_id: str | None
    usage: Usage
    finish_reason: str | None
    max_tokens: int
    limiter_wait_s: float
    retries: int
    duration_s: float
    tool_calls: list[ToolCallRecord] = field(default_factory=list)

    @property
    def usage_estimated(self) -> bool:
        """The server reported no usage for this step: ``usage`` is the client's estimate."""
        return self.usage.estimated


@dataclass(slots=True)
class RunResult:
    # the answer's text; with ``Agent(output_type=T)``, the validated ``T`` (None if none came)
    output: Any
    stop_reason: StopReason
    messages: list[Message]
    steps: list[StepRecord]
    usage: Usage
    cost_usd: float
    error: str | None = None
    # why the run stopped where it did, in words (the limit and what it left, a skipped answer)
    detail: str | None = None
    # the calls waiting for approval (``stop_reason="approval_required"``); resume with
    # ``agent.run(history=result.messages, approvals={call_id: True | False | Edited(...)})``
    pending: list[PendingCall] = field(default_factory=list)

    @property
    def usage_estimated(self) -> bool:
        """Some step's usage (so ``usage`` and ``cost_usd``) is an estimate, not reported."""
        return self.usage.estimated

    @property
    def ok(self) -> bool:
        return self.stop_reason == "completed"
