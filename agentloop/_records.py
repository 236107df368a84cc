"""Plain-JSON forms of what a durable run records: model calls, tool outcomes and results.

The store holds only these (never pickled objects of ours), so a record stays readable by a
later version of agentloop and by anyone inspecting the database, and it can hold nothing but
what is listed here: no client, no headers, no key.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import pydantic_core

from . import errors
from ._journal import CallRecord
from .messages import Usage
from .models.base import ModelResponse, RetryDelta
from .result import PendingCall, RunResult, StepRecord, ToolCallRecord
from .tools import ToolOutcome

FORMAT = 1  # bump when a record's shape changes incompatibly


def usage_to(u: Usage) -> dict[str, Any]:
    return asdict(u)


def usage_from(raw: dict[str, Any]) -> Usage:
    return Usage(**{f.name: raw[f.name] for f in fields(Usage) if f.name in raw})


def call_to(record: CallRecord) -> dict[str, Any]:
    response = record.response
    error = record.error
    return {
        "response": None
        if response is None
        else {
            "message": response.message,
            "finish_reason": response.finish_reason,
            "usage": usage_to(response.usage),
            "request_id": response.request_id,
            "attempts": response.attempts,
            "limiter_wait": response.limiter_wait,
            # the failed attempts before it (their errors as text, already redacted)
            "retries": [
                {"attempt": r.attempt, "error": str(r.error), "wait": r.wait}
                for r in response.retries
            ],
        },
        "billed": [usage_to(u) for u in record.billed],
        "assumed_tokens": record.assumed_tokens,
        "assumed_cost": record.assumed_cost,
        "stop": list(record.stop) if record.stop else None,
        "error": None
        if error is None
        else {
            "type": type(error).__name__,
            "message": str(error),
            "window": getattr(error, "window", None),
        },
        "window": record.window,
    }


def call_from(raw: dict[str, Any]) -> CallRecord:
    r = raw["response"]
    response = None
    if r is not None:
        response = ModelResponse(
            r["message"],
            r["finish_reason"],
            usage_from(r["usage"]),
            r["request_id"],
            r["attempts"],
            r["limiter_wait"],
            [
                RetryDelta(x["attempt"], errors.APIError(x["error"], hint=""), x["wait"])
                for x in r.get("retries", [])
            ],
        )
    stop = raw["stop"]
    return CallRecord(
        response,
        [usage_from(u) for u in raw["billed"]],
        raw["assumed_tokens"],
        raw["assumed_cost"],
        (stop[0], stop[1]) if stop else None,
        _error_from(raw["error"]) if raw["error"] else None,
        raw["window"],
    )


class RecordedError(errors.AgentloopError):
    """A model call that failed for good before a crash, as its record tells it."""


def _error_from(raw: dict[str, Any]) -> BaseException:
    if raw["type"] == "ContextLengthError":
        # the loop acts on this one (strategies, one more try), so it keeps its type
        error = errors.ContextLengthError(raw["message"], status=400, hint="")
        error.window = raw["window"]
        return error
    return RecordedError(raw["message"])


def outcome_to(outcome: ToolOutcome) -> dict[str, Any]:
    return asdict(outcome)


def outcome_from(raw: dict[str, Any]) -> ToolOutcome:
    return ToolOutcome(**raw)


def result_to(result: RunResult) -> dict[str, Any]:
    return {
        "format": FORMAT,
        # a structured output as JSON data (the store's reader validates it again)
        "output": result.output
        if isinstance(result.output, str | None)
        else pydantic_core.to_jsonable_python(result.output),
        "stop_reason": result.stop_reason,
        "messages": result.messages,
        "steps": [asdict(s) for s in result.steps],
        "usage": usage_to(result.usage),
        "cost_usd": result.cost_usd,
        "error": result.error,
        "detail": result.detail,
        "pending": [asdict(p) for p in result.pending],
    }


def result_from(raw: dict[str, Any]) -> RunResult:
    steps = []
    for s in raw["steps"]:
        s = dict(s)
        s["usage"] = usage_from(s["usage"])
        s["tool_calls"] = [ToolCallRecord(**c) for c in s["tool_calls"]]
        steps.append(StepRecord(**s))
    return RunResult(
        raw["output"],
        raw["stop_reason"],
        raw["messages"],
        steps,
        usage_from(raw["usage"]),
        raw["cost_usd"],
        raw["error"],
        raw["detail"],
        [PendingCall(**p) for p in raw.get("pending", [])],
    )
