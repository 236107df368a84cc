"""Simulated models: a policy decides what the model "says" given the request it received."""

from __future__ import annotations

import json
import re
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
    # a finish_reason to report instead of the natural one (e.g. "tool_calls" with no calls,
    # which Kimi endpoints send under load, or "content_filter")
    finish: str | None = None


@dataclass(slots=True)
class PolicyContext:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    thinking: bool
    max_tokens: int
    request_number: int
    tool_choice: Any = None

    @property
    def may_call_tools(self) -> bool:
        return bool(self.tool_choice != "none")

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
        """The functions the model may call now (none under ``tool_choice: "none"``)."""
        if not self.may_call_tools:
            return []
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


class ResearchPolicy:
    """A long multi-hop search whose answer needs facts found far apart.

    Each step calls ``search`` for the next page; how far it has got is read from the context it
    receives (page arguments of earlier calls, or a "searched up to page N" line in a summary or
    notes). When a tool result in the context holds ``FACT <key> = <value>``, the next turn notes
    it in visible text, as a model writing down a finding would. After ``pages`` pages, or when
    called without tools (a final-answer call), it answers with the facts it can see in the
    context it was sent and nothing else: a fact lost from the context is a wrong answer. Asked
    to "write a summary" (a compaction call), it writes its progress and every fact it sees.
    """

    FACT = re.compile(r"FACT (\w+) = (\w+)")
    PAGE = re.compile(r'"page":\s*(\d+)')
    PROGRESS = re.compile(r"[Ss]earched up to page (\d+)")

    def __init__(self, pages: int = 200, reasoning_tokens: int = 250, tool: str = "search") -> None:
        self.pages = pages
        self.reasoning_chars = reasoning_tokens * 4
        self.tool = tool

    def _facts(self, ctx: PolicyContext) -> dict[str, str]:
        found: dict[str, str] = {}
        for m in ctx.messages:
            for text in (m.get("content"), m.get("reasoning_content")):
                if isinstance(text, str):
                    found.update(self.FACT.findall(text))
        return found

    def _progress(self, ctx: PolicyContext) -> int:
        reached = 0
        for m in ctx.messages:
            for call in m.get("tool_calls") or ():
                for page in self.PAGE.findall(str(call.get("function", {}).get("arguments", ""))):
                    reached = max(reached, int(page))
            if isinstance(m.get("content"), str):
                for page in self.PROGRESS.findall(m["content"]):
                    reached = max(reached, int(page))
        return reached

    def _think(self, text: str) -> str:
        return (text + " ") * max(1, self.reasoning_chars // (len(text) + 1))

    def answer(self, ctx: PolicyContext) -> str:
        facts = self._facts(ctx)
        return "ANSWER: " + "; ".join(f"{k} = {v}" for k, v in sorted(facts.items()))

    def __call__(self, ctx: PolicyContext) -> Turn:
        last = ctx.messages[-1] if ctx.messages else {}
        reached = self._progress(ctx)
        if last.get("role") == "user" and "write a summary" in str(last.get("content", "")).lower():
            facts = self._facts(ctx)
            lines = [f"Searched up to page {reached}."]
            lines += [f"FACT {k} = {v}" for k, v in sorted(facts.items())]
            return Turn(reasoning=self._think("Summarising."), content="\n".join(lines))
        if self.tool not in ctx.function_names() or reached >= self.pages:
            return Turn(reasoning=self._think("I can answer now."), content=self.answer(ctx))
        # note what the newest tool results found, so it survives when they are cleared
        new: list[str] = []
        for m in reversed(ctx.messages):
            if m.get("role") != "tool":
                break
            new += [f"FACT {k} = {v}" for k, v in self.FACT.findall(str(m.get("content", "")))]
        page = reached + 1
        note = (" Noted " + "; ".join(new) + ".") if new else ""
        return Turn(
            reasoning=self._think(f"Page {reached} read; the next page may hold a missing fact."),
            content=f"Searched up to page {reached}.{note}",
            tool_calls=[ToolCall(self.tool, json.dumps({"query": ctx.task[:60], "page": page}))],
        )


class BrowsePolicy:
    """A small search-then-read model for ``search(query)`` / ``open(id)`` tools: searches for
    the task, opens the top ``read`` hits (in parallel), then answers by quoting the lines of
    what it read that share the most words with the task, naming where each came from."""

    STOP = frozenset(
        {
            "a",
            "an",
            "and",
            "are",
            "as",
            "at",
            "be",
            "by",
            "can",
            "do",
            "does",
            "for",
            "from",
            "how",
            "i",
            "in",
            "is",
            "it",
            "of",
            "on",
            "or",
            "that",
            "the",
            "this",
            "to",
            "what",
            "when",
            "which",
            "who",
            "why",
            "with",
            "you",
            "your",
        }
    )

    def __init__(self, read: int = 2, quote_lines: int = 3) -> None:
        self.read = read
        self.quote_lines = quote_lines

    def _words(self, text: str) -> set[str]:
        return {w for w in re.findall(r"[a-z0-9_]+", text.lower()) if w not in self.STOP}

    def __call__(self, ctx: PolicyContext) -> Turn:
        names = ctx.function_names()
        results = ctx.tool_results()
        if "search" in names and not results:
            return Turn(
                reasoning="I should search the collection for the task's key terms first.",
                tool_calls=[ToolCall("search", json.dumps({"query": ctx.task, "limit": 5}))],
            )
        last = results[-1] if results else ""
        hits = re.findall(r"^\[(\d+)\] ", last, re.MULTILINE)
        if "open" in names and hits and len(results) == 1:
            picked = hits[: self.read]
            return Turn(
                reasoning=f"The best hits look like {', '.join(picked)}; I will read them.",
                tool_calls=[ToolCall("open", json.dumps({"id": int(h)})) for h in picked],
            )
        wanted = self._words(ctx.task)
        scored: list[tuple[int, int, str, str]] = []
        for order, page in enumerate(results[1:] or results):
            source = page.split("\n", 1)[0]
            for line in page.splitlines()[1:]:
                score = len(wanted & self._words(line))
                if score and not line.startswith("["):
                    scored.append((-score, order, line.strip(), source))
        scored.sort()
        if not scored:
            return Turn(reasoning="Nothing relevant came back.", content="I could not find it.")
        quotes = [f"- {line} (from {source})" for _, _, line, source in scored[: self.quote_lines]]
        return Turn(
            reasoning="I have read the pages; these lines answer the question.",
            content="Here is what the documentation says:\n" + "\n".join(quotes),
        )


POLICIES: dict[str, Callable[[], Policy]] = {
    "tools": ToolLoopPolicy,
    "echo": EchoPolicy,
    "research": ResearchPolicy,
    "browse": BrowsePolicy,
}
