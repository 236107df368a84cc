"""Simulated models: a policy decides what the model "says" given the request it received."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, sent verbatim (it may be broken on purpose)
    id: str | None = None


@dataclass(slots=True)
class Turn:
    """One assistant turn. ``reasoning_tokens`` overrides the count of the reasoning text, so a
    test can simulate 40K tokens of thinking without sending them."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning_tokens: int | None = None


@dataclass(slots=True)
class PolicyContext:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    thinking: bool
    max_tokens: int
    request_number: int

    @property
    def step(self) -> int:
        """Assistant turns already in the history (the n-th call of a run sees n-1)."""
        return sum(
            1 for m in self.messages if m.get("role") == "assistant" and not m.get("partial")
        )

    @property
    def task(self) -> str:
        for m in self.messages:
            if m.get("role") == "user" and isinstance(m.get("content"), str):
                return str(m["content"])
        return ""

    def tool_results(self) -> list[str]:
        return [str(m.get("content", "")) for m in self.messages if m.get("role") == "tool"]

    def function_names(self) -> list[str]:
        return [
            t["function"]["name"]
            for t in self.tools
            if t.get("type") == "function" and isinstance(t.get("function"), dict)
        ]


Policy = Callable[[PolicyContext], Turn]


class ScriptedPolicy:
    """Replays a list of turns: the n-th assistant step of a conversation gets ``turns[n]``.

    Indexing by the history (not by request count) keeps a script in step when requests are
    retried. An item may be a callable that builds the turn from the context.
    """

    def __init__(self, turns: Sequence[Turn | Callable[[PolicyContext], Turn]]) -> None:
        self.turns = list(turns)
        self.contexts: list[PolicyContext] = []

    def __call__(self, ctx: PolicyContext) -> Turn:
        self.contexts.append(ctx)
        index = min(ctx.step, len(self.turns) - 1)
        item = self.turns[index]
        return item(ctx) if callable(item) else item


def example_value(
    schema: dict[str, Any], hint: str, defs: dict[str, Any] | None = None, seed: int = 0
) -> Any:
    """A small instance that validates against ``schema`` (for the tool-driving policy)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return example_value(defs.get(ref.split("/")[-1], {}), hint, defs, seed)
    if schema.get("enum"):
        return schema["enum"][0]
    if "anyOf" in schema:
        for branch in schema["anyOf"]:
            if branch.get("type") != "null":
                return example_value(branch, hint, defs, seed)
        return None
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        return hint
    if kind == "integer":
        return int(schema.get("minimum", 1)) + seed
    if kind == "number":
        return float(schema.get("minimum", 1.0)) + seed
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        count = max(1, int(schema.get("minItems", 1)))
        return [example_value(items, hint, defs, seed) for _ in range(count)]
    props = schema.get("properties", {})
    required = schema.get("required", list(props))
    return {
        name: example_value(props[name], hint, defs, seed) for name in required if name in props
    }


class ToolLoopPolicy:
    """Drives a multi-step tool-calling conversation from whatever tools the request offers.

    For ``steps`` steps it calls ``parallel`` tools (cycling through the offered functions, with
    arguments built from their schemas), then answers with a summary of the results it got.
    """

    def __init__(self, steps: int = 3, parallel: int = 1, reasoning_chars: int = 200) -> None:
        self.steps = steps
        self.parallel = parallel
        self.reasoning_chars = reasoning_chars

    def _reasoning(self, text: str) -> str:
        if len(text) >= self.reasoning_chars:
            return text[: self.reasoning_chars]
        return (text + " ") * (self.reasoning_chars // (len(text) + 1)) + text

    def __call__(self, ctx: PolicyContext) -> Turn:
        names = ctx.function_names()
        step = ctx.step
        if names and step < self.steps:
            by_name = {
                t["function"]["name"]: t["function"]
                for t in ctx.tools
                if t.get("type") == "function"
            }
            calls = []
            for k in range(self.parallel):
                name = names[(step * self.parallel + k) % len(names)]
                params = by_name[name].get("parameters") or {}
                n = step * self.parallel + k
                args = example_value(params, f"{ctx.task[:40]} (step {step + 1}.{k + 1})", seed=n)
                calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
            plan = ", ".join(c.name for c in calls)
            return Turn(
                reasoning=self._reasoning(f"Step {step + 1}: to answer I will call {plan}."),
                tool_calls=calls,
            )
        results = ctx.tool_results()
        summary = "; ".join(r[:60] for r in results[-3:]) if results else "no tools were needed"
        return Turn(
            reasoning=self._reasoning("I have what I need and can answer now."),
            content=f"Answer after {len(results)} tool result(s): {summary}",
        )


class EchoPolicy:
    """Answers at once, repeating the last user message."""

    def __call__(self, ctx: PolicyContext) -> Turn:
        last = next((m for m in reversed(ctx.messages) if m.get("role") == "user"), {"content": ""})
        return Turn(reasoning="Echoing.", content=f"echo: {last.get('content')}")


POLICIES: dict[str, Callable[[], Policy]] = {
    "tools": ToolLoopPolicy,
    "echo": EchoPolicy,
}
