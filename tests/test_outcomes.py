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


# -- found by attacking the loop: each failed before its fix ----------------------------------
@tool(timeout_s=None)
async def own_timeout(url: str) -> str:
    """Fails with a timeout of its own (a socket's, say).

    Args:
        url: where.
    """
    raise TimeoutError("connect timed out")


@pytest.mark.parametrize("timeout_s", [None, 30.0])
async def test_a_tools_own_timeout_error_is_its_failure_not_a_timeout(
    sim_factory: SimFactory, timeout_s: float | None
) -> None:
    own_timeout.timeout_s = timeout_s
    sim = await sim_factory(
        strict=True,
        policy=ScriptedPolicy(
            [Turn(tool_calls=[ToolCall("own_timeout", '{"url": "x"}')]), Turn(content="ok")]
        ),
    )
    result = await Agent(kimi(sim), tools=[own_timeout]).run("go")
    assert result.stop_reason == "completed"
    assert result.steps[0].tool_calls[0].error == "exception"
    assert "raised TimeoutError: connect timed out" in result.messages[2]["content"]


class ShapeFails:
    name = "shape_fails"

    def shape_result(self, content: str, tool_name: str, arguments: str) -> str:
        raise ValueError("a strategy's bug")

    async def manage(self, ctx: Any) -> None:
        return None


async def test_a_failing_strategy_leaves_no_call_unanswered(sim_factory: SimFactory) -> None:
    calls = [ToolCall("lookup", '{"query": "a"}'), ToolCall("lookup", '{"query": "b"}')]
    sim = await sim_factory(strict=True, policy=ScriptedPolicy([Turn(tool_calls=calls)]))
    result = await Agent(kimi(sim), tools=[lookup], context=[ShapeFails()]).run("go")
    assert result.stop_reason == "error" and "ValueError" in (result.error or "")
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "tool"]
    resumed = await Agent(kimi(sim), tools=[lookup], context=[]).run(history=result.messages)
    assert resumed.steps and sim.stats.by_status.get(400, 0) == 0


async def test_an_empty_final_answer_takes_its_request_back(sim_factory: SimFactory) -> None:
    def policy(ctx: Any) -> Turn:
        if ctx.may_call_tools:
            return Turn(tool_calls=[ToolCall("lookup", '{"query": "a"}')])
        return Turn(reasoning="nothing to say")

    sim = await sim_factory(strict=True, policy=policy)
    result = await Agent(kimi(sim), tools=[lookup], budget=Budget(max_steps=2)).run("go")
    assert result.stop_reason == "max_steps" and "no final answer" in (result.detail or "")
    assert result.messages[-1]["role"] == "tool"  # the final-answer request is not left behind


async def test_a_summary_retry_is_fitted_to_the_budget(sim_factory: SimFactory) -> None:
    from agentloop.context import ContextEdit
    from agentloop.sim import FaultPlan

    class SummariseOnce:
        name = "summarise_once"
        done = False

        def shape_result(self, content: str, tool_name: str, arguments: str) -> str:
            return content

        async def manage(self, ctx: Any) -> ContextEdit | None:
            if self.done:
                return None
            self.done = True
            text = await ctx.summarise(list(ctx.messages), 16_000)
            return ContextEdit(self.name, 0, 0, text[:20])

    sim = await sim_factory(
        strict=True,
        faults=FaultPlan(schedule={1: "cut"}),
        policy=ScriptedPolicy([Turn(reasoning="r " * 20_000, content="summary")]),
    )
    budget = Budget(max_billed_tokens=20_000)
    result = await Agent(kimi(sim), budget=budget, context=[SummariseOnce()]).run("go")
    # the cut summary may have been billed in full (16K): no second 16K attempt fits in 20K
    assert len(sim.stats.bodies) == 1 and result.stop_reason == "token_budget"


async def test_a_measured_prompt_never_counts_less_than_the_message_sent_back(
    sim_factory: SimFactory,
) -> None:
    # the server reports 100 output tokens for a message whose reasoning is 20K tokens long
    thin = Turn(reasoning="r" * 80_000, reasoning_tokens=100, tool_calls=[ToolCall("lookup", "{}")])
    sim = await sim_factory(strict=True, policy=ScriptedPolicy([thin, Turn(content="ok")]))
    budget = Budget(total_tokens=50_000)
    await Agent(kimi(sim), tools=[lookup], budget=budget, context=[]).run("go")
    for body, usage in zip(sim.stats.bodies, sim.stats.usages, strict=True):
        assert usage is None or usage["prompt_tokens"] + body["max_tokens"] <= 50_000


async def test_a_model_can_ask_for_final_answers_without_tools(sim_factory: SimFactory) -> None:
    sim = await sim_factory(
        strict=True,
        honour_tool_choice=False,  # a model that calls tools even under tool_choice "none"
        policy=lambda ctx: (
            Turn(tool_calls=[ToolCall("lookup", '{"query": "x"}')])
            if ctx.function_names()
            else Turn(content="answer without tools")
        ),
    )
    model = kimi(sim, final_answer_keeps_tools=False)
    result = await Agent(model, tools=[lookup], budget=Budget(max_steps=2)).run("go")
    assert result.stop_reason == "max_steps" and result.output == "answer without tools"
    final = sim.stats.bodies[-1]
    assert "tools" not in final and "tool_choice" not in final
