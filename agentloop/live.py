"""Showing a run: a rich live view for terminals, plain lines otherwise, and the per-step table.

``RunView`` folds events into display state; the live view (``agentloop run``) and ``agentloop
replay`` both render it, so a replayed transcript looks like the run did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from . import events as ev
from .budget import Budget
from .messages import Usage


@dataclass
class _ToolRow:
    step: int
    call_id: str
    name: str
    arguments: str
    status: str = "running"
    duration_s: float | None = None


@dataclass
class RunView:
    """Display state of one run, fed event by event."""

    budget: Budget = field(default_factory=Budget)
    show_reasoning: bool = False
    reasoning_lines: int = 4
    # False when the caller reports the run's error itself (the CLI prints it once, on stderr)
    show_error: bool = True
    task: str = ""
    model: str = ""
    step: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    reasoning: str = ""
    answer: str = ""
    tools: list[_ToolRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stop: str | None = None
    step_costs: dict[int, float] = field(default_factory=dict)
    tool_time: dict[int, float] = field(default_factory=dict)

    def feed(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.task, self.model = event.task, event.model
        elif isinstance(event, ev.StepStarted):
            self.step = event.step
            self.reasoning = ""
            self.answer = ""
        elif isinstance(event, ev.ReasoningDelta):
            self.reasoning += event.text
        elif isinstance(event, ev.TextDelta):
            self.answer += event.text
        elif isinstance(event, ev.Retry):
            self.notes.append(
                f"step {event.step}: retry {event.attempt} in {event.wait:.1f}s ({event.error})"
            )
        elif isinstance(event, ev.ToolCallStarted):
            self.tools.append(_ToolRow(event.step, event.call_id, event.name, event.arguments))
        elif isinstance(event, ev.ToolCallFinished):
            for row in reversed(self.tools):
                if row.call_id == event.call_id:
                    row.status = "ok" if event.ok else f"error: {event.error}"
                    row.duration_s = event.duration_s
                    break
            self.tool_time[event.step] = self.tool_time.get(event.step, 0.0) + event.duration_s
        elif isinstance(event, ev.StepFinished):
            self.step_costs[event.step] = event.cost_so_far - self.cost
            self.usage = event.usage_so_far
            self.cost = event.cost_so_far
            if event.record.limiter_wait_s >= 0.05:
                self.notes.append(
                    f"step {event.step}: waited {event.record.limiter_wait_s:.1f}s "
                    "for the rate limit"
                )
        elif isinstance(event, ev.ContextEdited):
            self.notes.append(
                f"step {event.step}: context {event.strategy}: {event.detail} "
                f"({event.tokens_before:,} → {event.tokens_after:,} tokens)"
            )
        elif isinstance(event, ev.LimitHit):
            self.notes.append(f"limit: {event.reason} ({event.detail})")
        elif isinstance(event, ev.RunFinished):
            self.stop = event.result.stop_reason
            self.answer = event.result.output
            self.usage = event.result.usage
            self.cost = event.result.cost_usd
            if event.result.error and self.show_error:
                self.notes.append(f"error: {event.result.error}")

    # -- rendering ---------------------------------------------------------------------------
    def meters(self) -> Text:
        b = self.budget
        steps = f"step {self.step}" + (f"/{b.max_steps}" if b.max_steps else "")
        tokens = f"{self.usage.total_tokens:,} tokens"
        if b.max_billed_tokens:
            tokens += f"/{b.max_billed_tokens:,}"
        cached = (
            f" ({self.usage.cached_input_tokens / self.usage.input_tokens:.0%} cached input)"
            if self.usage.input_tokens
            else ""
        )
        cost = f"${self.cost:.4f}" + (f"/${b.max_cost_usd:g}" if b.max_cost_usd else "")
        text = Text()
        text.append(steps, style="bold")
        text.append(f"  ·  {tokens}{cached}  ·  {cost}")
        if self.stop:
            text.append(
                f"  ·  {self.stop}", style="bold green" if self.stop == "completed" else "bold red"
            )
        return text

    def render(self) -> RenderableType:
        parts: list[RenderableType] = [
            Panel(self.meters(), title=f"agentloop · {self.model}", subtitle=_clip(self.task, 70))
        ]
        if self.reasoning and self.stop is None:
            lines = self.reasoning.strip().splitlines() or [""]
            shown = lines if self.show_reasoning else lines[-self.reasoning_lines :]
            body = Text("\n".join(_clip(line, 200) for line in shown), style="dim")
            title = "reasoning" if self.show_reasoning else f"reasoning (last {len(shown)} lines)"
            parts.append(Panel(body, title=title, border_style="dim"))
        if self.tools:
            table = Table(box=None, expand=False, pad_edge=False)
            for column in ("step", "tool", "arguments", "time", "outcome"):
                table.add_column(column, no_wrap=column != "arguments")
            for row in self.tools[-8:]:
                took = f"{row.duration_s * 1000:.0f} ms" if row.duration_s is not None else "…"
                style = "red" if row.status.startswith("error") else None
                table.add_row(
                    str(row.step), row.name, _clip(row.arguments, 60), took, row.status, style=style
                )
            parts.append(table)
        parts.extend(Text(note, style="yellow") for note in self.notes[-5:])
        if self.answer:
            parts.append(Panel(Text(self.answer), title="answer", border_style="green"))
        return Group(*parts)

    def step_summary(self, event: ev.StepFinished) -> RenderableType:
        """A finished step, to print above the live view so that every step stays on screen
        however short it was: its reasoning when ``show_reasoning``, then one line (its tool
        calls and outcomes, tokens, cost)."""
        u = event.record.usage
        calls = [
            f"{row.name} {row.status}"
            + (f" {row.duration_s * 1000:.0f} ms" if row.duration_s is not None else "")
            for row in self.tools
            if row.step == event.step
        ]
        line = Text()
        line.append(f"step {event.step}:", style="bold")
        line.append(f" {', '.join(calls) if calls else event.record.finish_reason or 'done'}")
        line.append(
            f"  ·  {u.input_tokens:,} in ({u.cached_input_tokens:,} cached), "
            f"{u.output_tokens:,} out  ·  ${self.step_costs.get(event.step, 0.0):.5f}",
            style="dim",
        )
        if not (self.show_reasoning and self.reasoning.strip()):
            return line
        body = Text(self.reasoning.strip(), style="dim")
        return Group(Panel(body, title=f"reasoning · step {event.step}", border_style="dim"), line)


class PlainPrinter:
    """Events as plain lines (``plain_line``), with each step's reasoning as one block when
    ``show_reasoning`` (the deltas are gathered until the step moves on)."""

    def __init__(self, *, show_reasoning: bool = False, show_error: bool = True) -> None:
        self.show_reasoning = show_reasoning
        self.show_error = show_error
        self._reasoning: list[str] = []

    def lines(self, event: ev.Event) -> list[str]:
        if isinstance(event, ev.ReasoningDelta):
            if self.show_reasoning:
                self._reasoning.append(event.text)
            return []
        out = self.flush()
        line = plain_line(event, show_error=self.show_error)
        if line:
            out.append(line)
        return out

    def flush(self) -> list[str]:
        text, self._reasoning = "".join(self._reasoning).strip(), []
        if not text:
            return []
        return ["  reasoning: " + "\n    ".join(text.splitlines())]


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split()) if "\n" not in text else text
    return text if len(text) <= width else text[: width - 1] + "…"


def plain_line(event: ev.Event, *, show_error: bool = True) -> str | None:
    """One line per event that matters, for logs and pipes (``show_error=False``: the run's
    error is reported elsewhere)."""
    if isinstance(event, ev.RunStarted):
        return f"run: {event.task!r} on {event.model}"
    if isinstance(event, ev.StepStarted):
        return f"step {event.step} (budget {event.max_tokens:,} tokens)"
    if isinstance(event, ev.ToolCallStarted):
        return f"  -> {event.name}({_clip(event.arguments, 120)})"
    if isinstance(event, ev.ToolCallFinished):
        status = "ok" if event.ok else f"error: {event.error}"
        first = event.result.splitlines()[0] if event.result else ""
        return f"  <- {event.name} [{status}, {event.duration_s * 1000:.0f} ms] {_clip(first, 100)}"
    if isinstance(event, ev.Retry):
        return f"  retry {event.attempt} in {event.wait:.1f}s: {event.error}"
    if isinstance(event, ev.ContextEdited):
        return (
            f"  context {event.strategy}: {event.detail} "
            f"({event.tokens_before:,} -> {event.tokens_after:,} tokens)"
        )
    if isinstance(event, ev.StepFinished):
        u = event.record.usage
        return (
            f"  usage: {u.input_tokens:,} in ({u.cached_input_tokens:,} cached), "
            f"{u.output_tokens:,} out; finish={event.record.finish_reason}; "
            f"cost so far ${event.cost_so_far:.5f}"
        )
    if isinstance(event, ev.LimitHit):
        return f"limit: {event.reason} ({event.detail})"
    if isinstance(event, ev.RunFinished):
        r = event.result
        head = f"answer: {r.output}\n" if r.output else ""
        tail = f"\nerror: {r.error}" if r.error and show_error else ""
        return (
            f"{head}stop: {r.stop_reason} after {len(r.steps)} steps, "
            f"{r.usage.total_tokens:,} tokens, ${r.cost_usd:.5f}{tail}"
        )
    return None


def step_table(view: RunView, steps: Sequence[ev.StepFinished]) -> Table:
    """Per step: tokens in and out, cached share, cost, tool time."""
    table = Table(title="steps")
    for column in ("step", "input", "cached", "output", "cost $", "tool time", "finish"):
        table.add_column(column, justify="right" if column != "finish" else "left")
    for event in steps:
        u = event.record.usage
        share = f"{u.cached_input_tokens / u.input_tokens:.0%}" if u.input_tokens else "-"
        table.add_row(
            str(event.step),
            f"{u.input_tokens:,}",
            share,
            f"{u.output_tokens:,}",
            f"{view.step_costs.get(event.step, 0.0):.5f}",
            f"{view.tool_time.get(event.step, 0.0) * 1000:.0f} ms",
            str(event.record.finish_reason),
        )
    return table


def console_for(stream: IO[str] | None = None, width: int | None = None) -> Console:
    return Console(file=stream, width=width, highlight=False)


__all__ = ["PlainPrinter", "RunView", "console_for", "plain_line", "step_table"]
