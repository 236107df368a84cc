"""What a step's model call can come to, and how each ends the run (over HTTP, strict)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from agentloop import Agent, Budget, tool
from agentloop.cli import EXIT_CODES
from agentloop.result import StopReason
from agentloop.sim import ScriptedPolicy, ToolCall, Turn

from .conftest import kimi

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]


@tool
async def lookup(query: str) -> str:
    """Look a thing up.

    Args:
        query: what to look for.
    """
    await anyio.lowlevel.checkpoint()
    return f"hits for {query}"


async def test_an_empty_answer_is_retried_once(sim_factory: SimFactory) -> None:
    def policy(ctx: Any) -> Turn:  # by request: a retry sees the same history
        return Turn(reasoning="hm") if ctx.request_number == 1 else Turn(content="the answer")

    sim = await sim_factory(strict=True, policy=policy)
    result = await Agent(kimi(sim)).run("go")
    assert result.stop_reason == "completed" and result.output == "the answer"
    assert len(sim.stats.bodies) == 2 and len(result.steps) == 1  # a retry is not a step
    assert result.usage.output_tokens == sum(u["completion_tokens"] for u in sim.stats.usages)
    # the empty attempt is not in the history
    assert [m["role"] for m in result.messages] == ["user", "assistant"]


async def test_two_empty_answers_end_the_run_as_empty_answer(sim_factory: SimFactory) -> None:
    sim = await sim_factory(strict=True, policy=ScriptedPolicy([Turn(content="   ")]))
    result = await Agent(kimi(sim)).run("go")
    assert result.stop_reason == "empty_answer" and result.output == ""
    assert len(sim.stats.bodies) == 2
    assert result.messages == [{"role": "user", "content": "go"}]  # resumable as it is
    assert EXIT_CODES[result.stop_reason] == 4


async def test_a_tool_calls_finish_without_calls_is_a_glitch_and_retried(
    sim_factory: SimFactory,
) -> None:
    glitch = Turn(content="I will call a tool.", finish="tool_calls")
    script = ScriptedPolicy(
        [Turn(tool_calls=[ToolCall("lookup", '{"query": "x"}')]), Turn(content="ok")]
    )
    sim = await sim_factory(
        strict=True, policy=lambda ctx: glitch if ctx.request_number == 1 else script(ctx)
    )
    result = await Agent(kimi(sim), tools=[lookup]).run("go")
    assert result.stop_reason == "completed" and result.output == "ok"
    assert len(sim.stats.bodies) == 3 and len(result.steps) == 2
    assert result.steps[0].tool_calls and result.steps[0].tool_calls[0].ok


async def test_a_content_filter_finish_ends_the_run_as_refused(sim_factory: SimFactory) -> None:
    sim = await sim_factory(
        strict=True, policy=ScriptedPolicy([Turn(content="I can't", finish="content_filter")])
    )
    result = await Agent(kimi(sim)).run("go")
    assert result.stop_reason == "refused" and "content filter" in (result.detail or "")
    assert EXIT_CODES[result.stop_reason] == 4


async def test_a_loop_gets_a_final_answer(sim_factory: SimFactory) -> None:
    def policy(ctx: Any) -> Turn:
        if ctx.may_call_tools:
            return Turn(tool_calls=[ToolCall("lookup", '{"query": "same"}')])
        return Turn(content="best effort answer")

    sim = await sim_factory(strict=True, policy=policy)
    result = await Agent(kimi(sim), tools=[lookup], loop_limit=2).run("go")
    assert result.stop_reason == "loop_detected" and result.output == "best effort answer"
    final = sim.stats.bodies[-1]
    assert final["tool_choice"] == "none" and "repeat limit" in final["messages"][-1]["content"]


async def test_tool_calls_in_a_final_answer_are_refused_and_answered(
    sim_factory: SimFactory,
) -> None:
    # a model that calls tools even under tool_choice "none"
    sim = await sim_factory(
        strict=True,
        honour_tool_choice=False,
        policy=ScriptedPolicy([Turn(tool_calls=[ToolCall("lookup", '{"query": "x"}')])]),
    )
    result = await Agent(kimi(sim), tools=[lookup], budget=Budget(max_steps=2)).run("go")
    assert result.stop_reason == "max_steps" and result.output == ""
    assert "no final answer" in (result.detail or "")
    assert result.messages[-1]["content"] == "Error: no more tool calls are allowed."
    resumed = await Agent(kimi(sim), budget=Budget(max_steps=1)).run(
        "answer now", history=result.messages
    )
    assert resumed.steps  # the strict simulator accepted the history


async def test_an_api_error_keeps_the_work_done(sim_factory: SimFactory) -> None:
    from agentloop.sim import FaultPlan

    sim = await sim_factory(
        strict=True,
        faults=FaultPlan(schedule={2: "403"}),
        policy=ScriptedPolicy([Turn(tool_calls=[ToolCall("lookup", '{"query": "x"}')])]),
    )
    result = await Agent(kimi(sim), tools=[lookup]).run("go")
    assert result.stop_reason == "error" and "permission" in (result.error or "")
    assert len(result.steps) == 1 and result.messages[-1]["role"] == "tool"


def test_every_stop_reason_has_an_exit_code() -> None:
    reasons = StopReason.__args__  # type: ignore[attr-defined]
    assert set(EXIT_CODES) == set(reasons)
    assert EXIT_CODES["completed"] == 0 and EXIT_CODES["cancelled"] == 130
