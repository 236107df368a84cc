"""Context management on a small window (a local model's 8K): strategies scale with the line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agentloop import Agent, Budget, tool
from agentloop.context import TruncateResults, default_strategies
from agentloop.sim import ScriptedPolicy, ToolCall, Turn

from .conftest import kimi

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]


@tool
def dump(query: str) -> str:
    """Return a huge page.

    Args:
        query: what.
    """
    return "word " * 40_000  # about 50K tokens


async def test_a_result_is_cut_to_a_share_of_a_small_window(sim_factory: SimFactory) -> None:
    sim = await sim_factory(
        strict=True,
        policy=ScriptedPolicy(
            [Turn(tool_calls=[ToolCall("dump", '{"query": "q"}')]), Turn(content="done")]
        ),
    )
    model = kimi(sim, thinking=False, context_window=8_192, max_tokens=1_024)
    result = await Agent(model, tools=[dump], budget=Budget(max_steps=5)).run("go")
    assert result.stop_reason == "completed", result.detail
    kept = result.messages[2]["content"]
    # the line is 8,192 - 1,024; a quarter of it, not the fixed 10K-token cap
    assert "cut from the middle" in kept
    assert len(kept) < 0.25 * (8_192 - 1_024) * 4 + 400
    final = sim.stats.bodies[-1]
    assert sim.stats.usages[-1]["prompt_tokens"] + final["max_tokens"] <= 8_192


def test_the_cap_is_the_smaller_of_tokens_and_share() -> None:
    truncate = TruncateResults()
    assert truncate.cap() == 10_000  # before any step: the fixed cap
    truncate._line = 200_000
    assert truncate.cap() == 10_000
    truncate._line = 7_000
    assert truncate.cap() == 1_750
    assert default_strategies()[0] == TruncateResults()


async def test_a_context_length_error_runs_the_strategies_and_retries_once(
    sim_factory: SimFactory,
) -> None:
    # the client believes in a 128K window; the server's is 8K and says so in its 400
    sim = await sim_factory(strict=True, policy=ScriptedPolicy([Turn(content="done")]))
    model = kimi(sim, model="moonshot-v1-8k", thinking=False, max_tokens=1_024)
    model.context_window = 128_000
    history = [
        {"role": "user", "content": "read this"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "dump", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "word " * 12_000},
        {"role": "user", "content": "and now answer"},
    ]
    result = await Agent(model, tools=[dump]).run(history=history)
    assert sim.stats.by_status.get(400) == 1  # one overflow, then the edited history fitted
    assert result.stop_reason == "completed", result.error
    assert model.context_window == 8_192


async def test_a_prompt_the_learnt_window_cannot_hold_is_not_sent_again(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(strict=True, policy=ScriptedPolicy([Turn(content="done")]))
    model = kimi(sim, model="moonshot-v1-8k", thinking=False, max_tokens=1_024)
    huge = [{"role": "user", "content": "word " * 12_000}]  # nothing a strategy may cut
    result = await Agent(model, context=[]).run(history=huge)
    # the 400 taught the 8K window; the same prompt is then not sent again
    assert result.stop_reason == "token_budget" and "context_window" in (result.detail or "")
    assert sim.stats.by_status.get(400) == 1
