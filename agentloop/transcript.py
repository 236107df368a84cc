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
        ev.OutputDelta,
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


def _jsonable(value: Any) -> Any:
    """A structured output as JSON data."""
    import pydantic_core

    return pydantic_core.to_jsonable_python(value)


def result_to_dict(result: RunResult) -> dict[str, Any]:
    return {
        "output": result.output if isinstance(result.output, str) else _jsonable(result.output),
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
class _Malformed(Exception):
    """A line whose object lacks a field or holds one of the wrong kind (``load`` names it)."""


_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "StopReason": (str,),
    "list[Message]": (list,),
}


def _fields(cls: type[Any], data: Any, what: str) -> dict[str, Any]:
    """The fields of dataclass ``cls`` found in ``data``, each checked against its annotation
    (plain kinds only); a field without a default must be there."""
    if not isinstance(data, dict):
        raise _Malformed(f"{what} is a JSON {type(data).__name__}, not an object")
    found: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Malformed(f"{what} has no {f.name!r}")
            continue
        value = data[f.name]
        annotation = str(f.type)
        optional = annotation.endswith(" | None")
        kinds = _KINDS.get(annotation.removesuffix(" | None"))
        if kinds is not None and not (value is None and optional):
            bad_bool = isinstance(value, bool) and bool not in kinds
            if bad_bool or not isinstance(value, kinds):
                raise _Malformed(f"{what}'s {f.name!r} is {value!r}, not {annotation}")
        found[f.name] = value
    return found


def usage_from_dict(data: dict[str, Any]) -> Usage:
    return Usage(**_fields(Usage, data, "usage"))


def step_from_dict(data: dict[str, Any]) -> StepRecord:
    fields = _fields(StepRecord, data, "step record")
    fields["usage"] = usage_from_dict(fields["usage"])
    calls = fields.get("tool_calls", [])
    if not isinstance(calls, list):
        raise _Malformed("step record's 'tool_calls' is not a list")
    fields["tool_calls"] = [
        ToolCallRecord(**_fields(ToolCallRecord, call, "tool call")) for call in calls
    ]
    return StepRecord(**fields)


def result_from_dict(data: dict[str, Any]) -> RunResult:
    fields = _fields(RunResult, data, "result")
    steps = fields["steps"]
    if not isinstance(steps, list):
        raise _Malformed("result's 'steps' is not a list")
    fields["steps"] = [step_from_dict(s) for s in steps]
    fields["usage"] = usage_from_dict(fields["usage"])
    return RunResult(**fields)


def event_from_dict(data: dict[str, Any]) -> ev.Event | None:
    """The event a line describes, or None for a type this version does not know."""
    kind = data.get("type", "")
    if kind == "RunFinished":
        return ev.RunFinished(result_from_dict(data.get("result")))  # type: ignore[arg-type]
    cls = _EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return None
    fields = _fields(cls, data, f"{kind} event")
    for name in ("usage", "usage_so_far"):
        if name in fields:
            fields[name] = usage_from_dict(fields[name])
    if "record" in fields:
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
        if isinstance(event, ev.ReasoningDelta | ev.TextDelta | ev.OutputDelta):
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


def iter_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line; a line that is not a JSON object, or
    a file that is not UTF-8 text, is a ``TranscriptError``."""
    with open(path, encoding="utf-8") as source:
        number = 0
        try:
            for number, line in enumerate(source, 1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TranscriptError(f"{path}:{number} is not JSON: {exc.msg}") from None
                if not isinstance(data, dict):
                    raise TranscriptError(
                        f"{path}:{number} is a JSON {type(data).__name__}, not an object: "
                        "not an agentloop transcript line"
                    )
                yield number, data
        except UnicodeDecodeError:
            raise TranscriptError(
                f"{path}:{number + 1} is not UTF-8 text: not an agentloop transcript"
            ) from None


def load(path: str | Path) -> Transcript:
    """Read a transcript; ``.result`` is the ``RunResult`` the run returned. A file this
    version cannot read (not text, not JSON objects, events or a result missing fields) raises
    ``TranscriptError`` naming the line."""
    lines = iter_lines(path)
    first = next(lines, None)
    header = first[1] if first else None
    if not header or header.get("format") != FORMAT:
        raise TranscriptError(f"{path} is not an agentloop transcript (no header line)")
    if header.get("version") != VERSION:
        raise TranscriptError(
            f"{path} is transcript version {header.get('version')}; this agentloop reads "
            f"version {VERSION}. Upgrade agentloop to read it."
        )
    events: list[ev.Event] = []
    result: RunResult | None = None
    for number, data in lines:
        try:
            event = event_from_dict(data)
        except _Malformed as exc:
            kind = data.get("type")
            raise TranscriptError(f"{path}:{number}: a damaged {kind} line: {exc}") from None
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
