"""Hard limits over real HTTP against the simulator: no request is sent whose worst case (its
prompt plus its whole max_tokens) could take the run past a limit, the final-answer call
included; the step cap counts model calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.lowlevel
import pytest

from agentloop import Agent, Budget, ConfigurationError, OpenAIModel, RateCard, tool
from agentloop.sim import ScriptedPolicy, SimServer, ToolLoopPolicy, Turn

from .conftest import kimi

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]
CARD = RateCard(input_per_m=1.0, cached_input_per_m=0.1, output_per_m=10.0)


@tool
async def page(query: str) -> str:
    """Read a long page.

    Args:
        query: what to read.
    """
    await anyio.lowlevel.checkpoint()
    return f"{query}: " + "lorem ipsum dolor sit amet " * 600  # about 4K tokens


def calls(sim: SimServer) -> list[tuple[dict[str, Any], dict[str, int]]]:
    """(body, reported usage) of every completion the simulator generated."""
    return [(b, u) for b, u in zip(sim.stats.bodies, sim.stats.usages, strict=True) if u]


def worst_cost(usage: dict[str, int], max_tokens: int, cached_before: int) -> float:
    prompt = usage["prompt_tokens"]
    hit = min(cached_before, prompt)
    return (
        (prompt - hit) * CARD.input_per_m
        + hit * CARD.cached_input_per_m
        + max_tokens * CARD.output_per_m
    ) / 1e6


def assert_within(sim: SimServer, budget: Budget) -> None:
    """Every request's worst case fits every limit, given what was billed before it."""
    billed = 0
    spent = 0.0
    cached_before = 0
    for body, usage in calls(sim):
        worst = usage["prompt_tokens"] + body["max_tokens"]
        if budget.total_tokens is not None:
            assert worst <= budget.total_tokens
        if budget.max_billed_tokens is not None:
            assert billed + worst <= budget.max_billed_tokens
        if budget.max_cost_usd is not None:
            assert spent + worst_cost(usage, body["max_tokens"], cached_before) <= (
                budget.max_cost_usd + 1e-12
            )
        billed += usage["prompt_tokens"] + usage["completion_tokens"]
        spent += CARD.cost(_usage(usage))
        cached_before = usage["cached_tokens"]


def _usage(raw: dict[str, int]) -> Any:
    from agentloop import Usage

    return Usage.from_wire(raw)


async def test_max_steps_is_the_number_of_model_calls(sim_factory: SimFactory) -> None:
    sim = await sim_factory(strict=True, policy=ToolLoopPolicy(steps=100))
    agent = Agent(kimi(sim), tools=[page], budget=Budget(max_steps=3))
    result = await agent.run("go")
    assert result.stop_reason == "max_steps" and len(sim.stats.bodies) == 3
    assert len(result.steps) == 3
    assert result.output.startswith("Answer after 2 tool result(s)")
    final = sim.stats.bodies[-1]
    # the final-answer call keeps the tools and the history prefix, so the cache covers it
    assert final["tool_choice"] == "none" and final["tools"] == sim.stats.bodies[-2]["tools"]
    before = sim.stats.bodies[-2]["messages"]
    assert final["messages"][: len(before)] == before
    assert final["messages"] == result.messages[:-1]
    assert "final answer" in final["messages"][-1]["content"]
    # all of the previous prompt (tools first) was a cache hit
    previous = [u for u in sim.stats.usages if u][-2]
    assert result.steps[-1].usage.cached_input_tokens == previous["prompt_tokens"]


async def test_max_steps_without_final_answers_runs_n_ordinary_steps(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(strict=True, policy=ToolLoopPolicy(steps=100))
    budget = Budget(max_steps=3, final_answer_on_limit=False)
    result = await Agent(kimi(sim), tools=[page], budget=budget).run("go")
    assert result.stop_reason == "max_steps" and len(sim.stats.bodies) == 3
    assert all("tool_choice" not in b for b in sim.stats.bodies)
    assert result.messages[-1]["role"] == "tool"  # every call answered: resumable


async def test_total_tokens_holds_for_every_call_the_final_answer_included(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(strict=True, policy=ToolLoopPolicy(steps=100))
    budget = Budget(total_tokens=60_000)
    result = await Agent(kimi(sim), tools=[page], budget=budget, context=[]).run("go")
    assert result.stop_reason == "token_budget"
    assert_within(sim, budget)
    assert sim.stats.bodies[-1].get("tool_choice") == "none"  # a final answer was asked for
    assert result.output.startswith("Answer after")


async def test_billed_tokens_hold_for_every_call_the_final_answer_included(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(strict=True, policy=ToolLoopPolicy(steps=100))
    budget = Budget(max_billed_tokens=100_000)
    result = await Agent(kimi(sim), tools=[page], budget=budget).run("go")
    assert result.stop_reason == "token_budget"
    assert_within(sim, budget)
    assert result.usage.total_tokens <= 100_000
    assert result.output.startswith("Answer after")


async def test_cost_holds_for_every_call_the_final_answer_included(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(strict=True, policy=ToolLoopPolicy(steps=100))
    budget = Budget(max_cost_usd=0.6)
    result = await Agent(kimi(sim), tools=[page], budget=budget, rate_card=CARD).run("go")
    assert result.stop_reason == "cost_budget"
    assert_within(sim, budget)
    assert result.cost_usd <= 0.6
    assert result.output.startswith("Answer after")


async def test_a_final_answer_that_cannot_fit_is_skipped_and_says_why(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(strict=True, policy=ToolLoopPolicy(steps=100))
    # 10K billed cannot pay for even one call at Kimi's 16,000-token floor
    budget = Budget(max_billed_tokens=10_000)
    result = await Agent(kimi(sim), tools=[page], budget=budget).run("go")
    assert result.stop_reason == "token_budget" and result.output == ""
    assert result.detail is not None and "no final answer" in result.detail
    assert "max_billed_tokens" in result.detail and "16,000" in result.detail
    assert sim.stats.bodies == []
    assert result.messages == [{"role": "user", "content": "go"}]  # no unanswered request


async def test_a_step_the_budget_stops_is_followed_by_a_final_answer(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(strict=True, policy=ToolLoopPolicy(steps=100))
    budget = Budget(max_billed_tokens=40_000)
    result = await Agent(kimi(sim), tools=[page], budget=budget).run("go")
    # a 32K step would leave no room for a 16K answer after it: the only call is the answer
    assert result.stop_reason == "token_budget" and len(sim.stats.bodies) == 1
    assert result.output.startswith("Answer after 0 tool result(s)")
    assert_within(sim, budget)


def test_max_cost_without_a_rate_card_is_a_configuration_error() -> None:
    model = OpenAIModel("local", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigurationError, match="rate_card"):
        Agent(model, budget=Budget(max_cost_usd=1.0))
    agent = Agent(model, budget=Budget(max_cost_usd=1.0), rate_card=CARD)
    assert agent.budget.max_cost_usd == 1.0


async def test_a_length_retry_counts_against_the_budget(sim_factory: SimFactory) -> None:
    thinker = Turn(reasoning="hmm " * 20, reasoning_tokens=40_000, content="the answer")
    sim = await sim_factory(policy=ScriptedPolicy([thinker]))
    budget = Budget(max_billed_tokens=80_000)
    result = await Agent(kimi(sim), budget=budget).run("go")
    assert_within(sim, budget)
    # 32K went on reasoning; the retry may only have what is left of the 80K
    assert sim.stats.bodies[0]["max_tokens"] == 32_000
    assert all(b["max_tokens"] <= 80_000 - 32_000 for b in sim.stats.bodies[1:])
    assert result.usage.total_tokens <= 80_000


async def test_a_retried_http_attempt_counts_against_the_budget(
    sim_factory: SimFactory,
) -> None:
    from agentloop.sim import FaultPlan

    # the first attempt breaks mid-stream: it may have been billed, so it is counted
    sim = await sim_factory(
        faults=FaultPlan(schedule={1: "cut"}),
        policy=ScriptedPolicy([Turn(reasoning="r " * 4000, content="fine")]),
    )
    budget = Budget(max_billed_tokens=32_500, final_answer_on_limit=False)
    result = await Agent(kimi(sim), budget=budget).run("go")
    # one 32K attempt fits; the cut one is assumed billed, so no second attempt is sent
    assert len(sim.stats.bodies) == 1
    assert result.stop_reason == "token_budget"
