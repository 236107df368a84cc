"""Tool calls written as text by small models, turned into structured calls when asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agentloop import Agent, tool
from agentloop.models.text_calls import extract_text_tool_calls
from agentloop.sim import ScriptedPolicy, Turn

from .conftest import kimi

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]
WRITTEN = 'Let me look. <tool_call>{"name": "lookup", "arguments": {"query": "tokyo"}}</tool_call>'


@tool
def lookup(query: str) -> str:
    """Look it up.

    Args:
        query: what.
    """
    return f"found {query}"


@pytest.mark.parametrize("parse", [True, False])
async def test_calls_written_as_text_run_only_when_asked(
    sim_factory: SimFactory, parse: bool
) -> None:
    sim = await sim_factory(
        strict=True, policy=ScriptedPolicy([Turn(content=WRITTEN), Turn(content="it is 9am")])
    )
    model = kimi(sim, thinking=False, text_tool_calls=parse)
    result = await Agent(model, tools=[lookup]).run("time in tokyo?")
    assert result.stop_reason == "completed"
    if parse:
        assert result.output == "it is 9am"
        call = result.steps[0].tool_calls[0]
        assert (call.name, call.ok, call.arguments) == ("lookup", True, '{"query": "tokyo"}')
        assert result.messages[1]["content"] == "Let me look."
        assert result.messages[2]["content"] == "found tokyo"
        assert sim.stats.by_status.get(400, 0) == 0  # the history as sent was accepted
    else:
        assert result.output == WRITTEN and len(sim.stats.bodies) == 1


async def test_a_written_call_is_validated_like_any_other(sim_factory: SimFactory) -> None:
    bad = '<tools>[{"name": "lookup", "arguments": {"q": 1}}]</tools>'
    sim = await sim_factory(
        strict=True, policy=ScriptedPolicy([Turn(content=bad), Turn(content="sorry")])
    )
    result = await Agent(kimi(sim, thinking=False, text_tool_calls=True), tools=[lookup]).run("go")
    call = result.steps[0].tool_calls[0]
    assert not call.ok and call.error == "invalid_arguments"
    assert "invalid arguments for lookup" in result.messages[2]["content"]


def test_text_that_is_not_a_call_is_left_alone() -> None:
    assert (
        extract_text_tool_calls({"role": "assistant", "content": "use <tools>x</tools>"}, "1")
        is None
    )
    assert extract_text_tool_calls({"role": "assistant", "content": "plain"}, "1") is None
    two = extract_text_tool_calls(
        {
            "role": "assistant",
            "content": '<tool_call>{"name": "a", "arguments": "{}"}</tool_call>'
            '<tool_call>{"name": "b", "parameters": {"x": 1}}</tool_call>',
        },
        "7",
    )
    assert two is not None and two["content"] == ""
    assert [(c["id"], c["function"]["name"]) for c in two["tool_calls"]] == [
        ("text_7_0", "a"),
        ("text_7_1", "b"),
    ]
    assert two["tool_calls"][1]["function"]["arguments"] == '{"x": 1}'
