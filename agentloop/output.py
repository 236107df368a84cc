"""Structured output: ``Agent(..., output_type=T)`` makes ``result.output`` a validated ``T``.

Kimi in thinking mode accepts ``tool_choice`` "auto" or "none" only, so a tool cannot be forced
and the seeds document no JSON response format for Kimi. The output is therefore a tool the
model is offered beside the others, ``final_answer``, whose parameters are ``T``'s schema (sent
as Moonshot Flavored JSON Schema, like every tool's). Its arguments are validated by the same
machinery as any tool's (the schema, then pydantic), and the errors go back to the model as the
call's tool message, for a bounded number of tries. A plain-text answer is accepted when it is
valid JSON of ``T``; otherwise the model is asked, once per try, to call ``final_answer``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pydantic

from .errors import ConfigurationError
from .tools import Tool, _strict

TOOL_NAME = "final_answer"
NUDGE = (
    "Give your final answer by calling the {tool} tool with it (your last message was not a "
    "valid answer: {why})."
)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _never_called(**_: Any) -> str:  # the loop answers final_answer itself
    raise AssertionError("final_answer is answered by the run, not called")


class OutputSpec:
    """What an ``output_type`` means for a run: the tool that carries the answer and how to
    turn its arguments (or a plain-text answer) into a validated value."""

    def __init__(self, output_type: Any, *, retries: int = 2) -> None:
        if retries < 0:
            raise ConfigurationError(f"output_retries must be 0 or more; got {retries}")
        try:
            self.adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(output_type)
            schema = self.adapter.json_schema()
        except (pydantic.PydanticUserError, TypeError) as exc:
            raise ConfigurationError(
                f"output_type {output_type!r} has no JSON schema ({exc}): use a pydantic "
                "model, a dataclass, a TypedDict or a list of them"
            ) from None
        self.output_type = output_type
        self.retries = retries
        # a tool's parameters are an object: anything else travels as {"result": ...}
        self.wrapped = schema.get("type") != "object"
        if self.wrapped:
            defs = schema.pop("$defs", None)
            schema = {"type": "object", "properties": {"result": schema}, "required": ["result"]}
            if defs:
                schema["$defs"] = defs
        schema.pop("title", None)
        name = getattr(output_type, "__name__", str(output_type))
        self.tool = Tool.from_schema(
            _never_called,
            _strict(schema),
            name=TOOL_NAME,
            description=(
                f"Give your final answer ({name}) and end the task. Call it once, when you "
                "have the answer, with the answer as its arguments."
            ),
        )

    def from_arguments(self, raw: str) -> tuple[Any, str | None]:
        """(value, None), or (None, the error text to send back as the call's result)."""
        arguments, problem = self.tool.parse(raw)
        if problem is not None:
            return None, problem.content
        assert arguments is not None
        value = arguments["result"] if self.wrapped else arguments
        try:
            return self.adapter.validate_python(value), None
        except pydantic.ValidationError as exc:
            return None, _errors(exc)

    def from_text(self, text: str) -> tuple[Any, str | None]:
        """A plain-text answer read as the output: valid JSON of the type, fenced or not."""
        body = text.strip()
        fenced = _FENCE.match(body)
        if fenced:
            body = fenced.group(1)
        try:
            data = json.loads(body)
        except ValueError:
            return None, "it was text, not a call of the tool"
        if self.wrapped and isinstance(data, dict) and set(data) == {"result"}:
            data = data["result"]
        try:
            return self.adapter.validate_python(data), None
        except pydantic.ValidationError as exc:
            return None, _errors(exc)

    def dump(self, value: Any) -> Any:
        """The value as JSON data (what a durable store keeps)."""
        return self.adapter.dump_python(value, mode="json")


def _errors(exc: pydantic.ValidationError) -> str:
    lines = [
        f"{'/'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:20]
    ]
    return "Error: the answer does not validate: " + "; ".join(lines) + ". Call it again, fixed."


__all__ = ["TOOL_NAME", "OutputSpec"]
