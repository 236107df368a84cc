"""Transcripts: a run saved as JSON Lines, and loaded back.

Format (``agentloop-transcript``, version 1), one JSON object per line:

* line 1: ``{"type": "header", "format": "agentloop-transcript", "version": 1, "model": ...,
  "task": ..., "started_at": <unix seconds>}``
* then one line per event, ``{"type": <event class name>, ...its fields}``. Consecutive
  reasoning or text deltas of a step are merged into one line.
* last: ``{"type": "RunFinished", "result": {...}}`` with the wire-format messages (reasoning
  included), per-step records, usage and cost, from which ``load`` rebuilds a ``RunResult``.

Readers must ignore unknown keys; a new event type or field does not change the version, a
changed meaning does.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import events as ev
from .errors import AgentloopError
from .messages import Usage
from .result import RunResult, StepRecord, ToolCallRecord

FORMAT = "agentloop-transcript"
VERSION = 1

_EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        ev.RunStarted,
        ev.StepStarted,
        ev.ReasoningDelta,
        ev.TextDelta,
        ev.Retry,
        ev.ToolCallStarted,
        ev.ToolCallFinished,
        ev.StepFinished,
        ev.ContextEdited,
        ev.LimitHit,
        ev.RunFinished,
    )
}


class TranscriptError(AgentloopError):
    """A file that is not a transcript this version can read."""


# -- to JSON ---------------------------------------------------------------------------------
def usage_to_dict(usage: Usage) -> dict[str, Any]:
    return dataclasses.asdict(usage)


def step_to_dict(step: StepRecord) -> dict[str, Any]:
    return dataclasses.asdict(step)


def result_to_dict(result: RunResult) -> dict[str, Any]:
    return {
        "output": result.output,
        "stop_reason": result.stop_reason,
        "messages": result.messages,
        "steps": [step_to_dict(s) for s in result.steps],
        "usage": usage_to_dict(result.usage),
        "cost_usd": result.cost_usd,
        "error": result.error,
        "detail": result.detail,
    }


def event_to_dict(event: ev.Event) -> dict[str, Any]:
    if isinstance(event, ev.RunFinished):
        return {"type": "RunFinished", "result": result_to_dict(event.result)}
    data: dict[str, Any] = {"type": type(event).__name__}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if isinstance(value, Usage):
            value = usage_to_dict(value)
        elif isinstance(value, StepRecord):
            value = step_to_dict(value)
        data[f.name] = value
    return data


# -- from JSON -------------------------------------------------------------------------------
def usage_from_dict(data: dict[str, Any]) -> Usage:
    return Usage(**{k: v for k, v in data.items() if k in Usage.__dataclass_fields__})


def step_from_dict(data: dict[str, Any]) -> StepRecord:
    fields = {k: v for k, v in data.items() if k in StepRecord.__dataclass_fields__}
    fields["usage"] = usage_from_dict(data["usage"])
    fields["tool_calls"] = [
        ToolCallRecord(**{k: v for k, v in c.items() if k in ToolCallRecord.__dataclass_fields__})
        for c in data.get("tool_calls", [])
    ]
    return StepRecord(**fields)


def result_from_dict(data: dict[str, Any]) -> RunResult:
    return RunResult(
        output=data["output"],
        stop_reason=data["stop_reason"],
        messages=data["messages"],
        steps=[step_from_dict(s) for s in data["steps"]],
        usage=usage_from_dict(data["usage"]),
        cost_usd=data["cost_usd"],
        error=data.get("error"),
        detail=data.get("detail"),
    )


def event_from_dict(data: dict[str, Any]) -> ev.Event | None:
    """The event a line describes, or None for a type this version does not know."""
    kind = data.get("type", "")
    if kind == "RunFinished":
        return ev.RunFinished(result_from_dict(data["result"]))
    cls = _EVENT_TYPES.get(kind)
    if cls is None:
        return None
    fields = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
    if "usage" in fields and isinstance(fields["usage"], dict):
        fields["usage"] = usage_from_dict(fields["usage"])
    if "usage_so_far" in fields and isinstance(fields["usage_so_far"], dict):
        fields["usage_so_far"] = usage_from_dict(fields["usage_so_far"])
    if "record" in fields and isinstance(fields["record"], dict):
        fields["record"] = step_from_dict(fields["record"])
    event: ev.Event = cls(**fields)
    return event


# -- writing and reading ---------------------------------------------------------------------
class TranscriptWriter:
    """Writes a run's events as they happen (flushes each line, so a crash keeps what was done)."""

    def __init__(self, target: str | Path | IO[str]) -> None:
        self._own = isinstance(target, str | Path)
        self._out: IO[str] = (
            open(target, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
            if isinstance(target, str | Path)
            else target
        )
        self._pending: dict[str, Any] | None = None

    def write(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self._line(
                {
                    "type": "header",
                    "format": FORMAT,
                    "version": VERSION,
                    "model": event.model,
                    "task": event.task,
                    "started_at": time.time(),
                }
            )
        if isinstance(event, ev.ReasoningDelta | ev.TextDelta):
            kind = type(event).__name__
            if (
                self._pending
                and self._pending["type"] == kind
                and self._pending["step"] == event.step
            ):
                self._pending["text"] += event.text
                return
            self._flush()
            self._pending = {"type": kind, "step": event.step, "text": event.text}
            return
        self._flush()
        self._line(event_to_dict(event))

    def _flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._line(pending)

    def _line(self, data: dict[str, Any]) -> None:
        self._out.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._out.flush()

    def close(self) -> None:
        self._flush()
        if self._own:
            self._out.close()

    def __enter__(self) -> TranscriptWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(slots=True)
class Transcript:
    header: dict[str, Any]
    events: list[ev.Event]
    result: RunResult | None  # None when the run did not finish (the file was cut short)


def iter_lines(path: str | Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise TranscriptError(f"{path}:{number} is not JSON: {exc.msg}") from None


def load(path: str | Path) -> Transcript:
    """Read a transcript; ``.result`` is the ``RunResult`` the run returned."""
    lines = iter_lines(path)
    header = next(lines, None)
    if not header or header.get("format") != FORMAT:
        raise TranscriptError(f"{path} is not an agentloop transcript (no header line)")
    if header.get("version") != VERSION:
        raise TranscriptError(
            f"{path} is transcript version {header.get('version')}; this agentloop reads "
            f"version {VERSION}. Upgrade agentloop to read it."
        )
    events: list[ev.Event] = []
    result: RunResult | None = None
    for data in lines:
        event = event_from_dict(data)
        if event is None:
            continue
        events.append(event)
        if isinstance(event, ev.RunFinished):
            result = event.result
    return Transcript(header, events, result)


__all__ = [
    "FORMAT",
    "VERSION",
    "Transcript",
    "TranscriptError",
    "TranscriptWriter",
    "load",
]
