"""The seam between a run and where its work is recorded.

A run does two kinds of work whose results it cannot recompute: model calls and tool calls.
It hands each to its ``Journal``, which runs it (``Direct``: nothing is kept) or, in a durable
run, records its result before the run goes on and, when the run is resumed, gives the
recorded result back instead of running it again (``agentloop.durable``). Everything else a
run does is a deterministic function of those results, so replaying them rebuilds the run.

Time is the one other input: ``now()`` is the run's clock, which a durable journal keeps as
*working time* — continuous across a crash, with the downtime left out — so durations and
``deadline_s`` mean the same before and after a resume.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .messages import Usage

if TYPE_CHECKING:
    from .models.base import ModelResponse
    from .tools import Tool, ToolOutcome


@dataclass(slots=True)
class CallRecord:
    """What one model call (HTTP retries included) did to a run: the response, and what its
    attempts count against the limits. ``stop``: a retry no longer fitted the limits (the
    ending's detail); ``error``: the call failed for good."""

    response: ModelResponse | None = None
    billed: list[Usage] = field(default_factory=list)  # failed attempts' reports, then its own
    assumed_tokens: int = 0  # failed attempts that reported nothing: their worst case
    assumed_cost: float = 0.0
    stop: tuple[str, str] | None = None  # (stop reason, detail)
    error: BaseException | None = None
    window: int | None = None  # the model's context window after the call (it may learn it)


class Journal:
    """No record: every call runs. The base of the durable journal."""

    durable = False

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()

    def bind(self, on_live: Callable[[float], None]) -> None:
        """``on_live(elapsed)`` is called when the run starts doing new work, with the working
        time already spent (0 for a run that is not being resumed)."""
        on_live(0.0)

    async def model_call(self, work: Callable[[], Awaitable[CallRecord]]) -> CallRecord:
        return await work()

    async def tool_call(
        self,
        call: dict[str, Any],
        tool: Tool,
        work: Callable[[], Awaitable[ToolOutcome]],
    ) -> ToolOutcome:
        return await work()


__all__ = ["CallRecord", "Journal"]
