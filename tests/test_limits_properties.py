"""Property: whatever the budgets, the model's output sizes and the tools' latencies, no request
is sent whose worst case exceeds a limit, and every ending resumes against the strict
simulator (a history with an unanswered or doubly answered tool call is a 400 there)."""

from __future__ import annotations

import json
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentloop import Agent, Budget, KimiModel, tool
from agentloop.context import default_strategies
from agentloop.sim import PolicyContext, SimConfig, SimServer, ToolCall, Turn

from .test_limits import CARD, assert_within


@tool
async def fetch(size: int, delay_ms: int) -> str:
    """Fetch a page of about ``size`` tokens after ``delay_ms``.

    Args:
        size: tokens.
        delay_ms: latency.
    """
    await anyio.sleep(delay_ms / 1000)
    return "w " * (2 * size)


@st.composite
def scripts(draw: Any) -> list[dict[str, Any]]:
    """A run as the model will play it: per step, reasoning size and tool calls (or the end)."""
    steps = draw(st.integers(0, 8))
    script = []
    for _ in range(steps):
        calls = [
            {"size": draw(st.integers(10, 6_000)), "delay_ms": draw(st.integers(0, 40))}
            for _ in range(draw(st.integers(1, 3)))
        ]
        script.append({"reasoning": draw(st.integers(0, 3_000)), "calls": calls})
    script.append({"reasoning": draw(st.integers(0, 3_000)), "calls": []})
    return script


budgets = st.builds(
    Budget,
    max_steps=st.none() | st.integers(1, 8),
    per_step_tokens=st.none() | st.integers(16_000, 40_000),
    total_tokens=st.none() | st.integers(20_000, 150_000),
    max_billed_tokens=st.none() | st.integers(15_000, 400_000),
    max_cost_usd=st.none() | st.floats(0.05, 2.0),
    deadline_s=st.none() | st.floats(0.05, 1.0),
    final_answer_on_limit=st.booleans(),
)


def policy_for(script: list[dict[str, Any]]) -> Any:
    def policy(ctx: PolicyContext) -> Turn:
        plan = script[min(ctx.step, len(script) - 1)]
        reasoning = "r " * plan["reasoning"]
        if plan["calls"] and ctx.may_call_tools:
            calls = [ToolCall("fetch", json.dumps(c)) for c in plan["calls"]]
            return Turn(reasoning=reasoning, tool_calls=calls)
        return Turn(reasoning=reasoning, content=f"answer after {len(ctx.tool_results())}")

    return policy


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(script=scripts(), budget=budgets, managed=st.booleans())
def test_no_request_exceeds_a_limit_and_every_ending_resumes(
    script: list[dict[str, Any]], budget: Budget, managed: bool
) -> None:
    async def main() -> None:
        config = SimConfig(strict=True, chunk_chars=512, policy=policy_for(script))
        async with SimServer(config) as sim:
            model = KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=None)
            agent = Agent(
                model,
                tools=[fetch],
                budget=budget,
                rate_card=CARD,
                context=default_strategies() if managed else [],
            )
            result = await agent.run("go")
            assert result.stop_reason != "error", result.error
            assert_within(sim, budget)
            if budget.max_steps is not None:
                assert len(result.steps) <= budget.max_steps
            calls = [c["id"] for m in result.messages for c in m.get("tool_calls") or ()]
            answers = [m["tool_call_id"] for m in result.messages if m["role"] == "tool"]
            assert sorted(calls) == sorted(answers)
            # resume: the strict simulator must accept the history as it is
            ended_with_answer = result.messages[-1]["role"] == "assistant"
            resume = Agent(model, tools=[fetch], budget=Budget(max_steps=1), context=[])
            resumed = await resume.run(
                "go on" if ended_with_answer else None, history=result.messages
            )
            assert sim.stats.by_status.get(400, 0) == 0, resumed.error
            await model.aclose()

    anyio.run(main)
