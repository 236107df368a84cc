"""Structured output (``Agent(output_type=T)``) over real HTTP against the strict simulator: an
answer that validates first time, one that needs a retry, one that never validates, a plain-text
JSON answer, list and dataclass types, the final answer on a limit producing the type, partial
output in events, and histories the strict simulator accepts afterwards."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic
import pytest
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from agentloop import Agent, Budget, tool
from agentloop import events as ev
from agentloop.errors import ConfigurationError
from agentloop.output import TOOL_NAME
from agentloop.sim import PolicyContext, ScriptedPolicy, SimServer, ToolCall, Turn

from .conftest import kimi

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]


class City(pydantic.BaseModel):
    name: str
    population: int


@dataclass
class Point:
    x: float
    y: float


class Pair(TypedDict):
    left: str
    right: str


GOOD = '{"name": "Paris", "population": 2100000}'
BAD = '{"name": "Paris", "population": "many"}'


def answer(arguments: str, reasoning: str = "Answering.") -> Turn:
    return Turn(reasoning=reasoning, tool_calls=[ToolCall(TOOL_NAME, arguments)])


@tool
def lookup(query: str) -> str:
    """Look a thing up.

    Args:
        query: what.
    """
    return f"facts about {query}"


async def strict_sim(sim_factory: SimFactory, turns: list[Any]) -> SimServer:
    server: SimServer = await sim_factory(policy=ScriptedPolicy(turns), strict=True)
    return server


async def resumes(sim: SimServer, agent: Agent, messages: list[dict[str, Any]]) -> None:
    """The ended history is a valid next request in strict mode (every call answered)."""
    plain = Agent(agent.model, [lookup])
    sim.config.policy = ScriptedPolicy([Turn(content="ok")])
    again = await plain.run("and then?", history=messages)
    assert again.stop_reason == "completed", again.error


async def test_an_answer_that_validates_first_time(sim_factory: SimFactory) -> None:
    sim = await strict_sim(sim_factory, [answer(GOOD)])
    agent = Agent(kimi(sim), [lookup], output_type=City)
    result = await agent.run("Which city?")
    assert result.stop_reason == "completed", result.error
    assert result.output == City(name="Paris", population=2_100_000)
    tools = sim.stats.bodies[0]["tools"]
    final = next(t for t in tools if t["function"]["name"] == TOOL_NAME)
    assert set(final["function"]["parameters"]["properties"]) == {"name", "population"}
    assert result.messages[-1]["role"] == "tool"
    await resumes(sim, agent, result.messages)


async def test_an_answer_that_needs_a_retry(sim_factory: SimFactory) -> None:
    sim = await strict_sim(sim_factory, [answer(BAD), answer(GOOD)])
    result = await Agent(kimi(sim), [lookup], output_type=City).run("Which city?")
    assert result.stop_reason == "completed" and result.output.population == 2_100_000
    assert len(result.steps) == 2
    sent_back = sim.stats.bodies[1]["messages"][-1]
    assert sent_back["role"] == "tool" and "population" in sent_back["content"]
    assert "invalid arguments for final_answer" in sent_back["content"]
    assert result.steps[0].tool_calls[0].ok is False


async def test_an_answer_that_never_validates_ends_invalid_output(
    sim_factory: SimFactory,
) -> None:
    sim = await strict_sim(sim_factory, [answer(BAD)])
    agent = Agent(kimi(sim), [lookup], output_type=City, output_retries=2)
    result = await agent.run("Which city?")
    assert result.stop_reason == "invalid_output" and result.output is None
    assert len(result.steps) == 3  # the first try and two more
    assert "3 tries" in (result.detail or "")
    await resumes(sim, agent, result.messages)


async def test_a_plain_text_answer_is_taken_when_it_validates_else_the_tool_is_asked_for(
    sim_factory: SimFactory,
) -> None:
    sim = await strict_sim(sim_factory, [Turn(content=f"```json\n{GOOD}\n```")])
    result = await Agent(kimi(sim), output_type=City).run("Which city?")
    assert result.stop_reason == "completed" and result.output.name == "Paris"

    sim = await strict_sim(sim_factory, [Turn(content="Paris, I think."), answer(GOOD)])
    result = await Agent(kimi(sim), output_type=City).run("Which city?")
    assert result.stop_reason == "completed" and result.output.name == "Paris"
    nudge = sim.stats.bodies[1]["messages"][-1]
    assert nudge["role"] == "user" and TOOL_NAME in nudge["content"]


async def test_lists_dataclasses_and_typed_dicts(sim_factory: SimFactory) -> None:
    points = '{"result": [{"x": 1, "y": 2}, {"x": 3.5, "y": -1}]}'
    sim = await strict_sim(sim_factory, [answer(points)])
    result = await Agent(kimi(sim), output_type=list[Point]).run("Points?")
    assert result.output == [Point(1, 2), Point(3.5, -1)]
    schema = sim.stats.bodies[0]["tools"][0]["function"]["parameters"]
    assert schema["required"] == ["result"]

    sim = await strict_sim(sim_factory, [answer('{"left": "a", "right": "b"}')])
    result = await Agent(kimi(sim), output_type=Pair).run("A pair?")
    assert result.output == {"left": "a", "right": "b"}


async def test_the_final_answer_on_a_limit_produces_the_type(sim_factory: SimFactory) -> None:
    def step(ctx: PolicyContext) -> Turn:
        last = ctx.messages[-1]
        if last["role"] == "user" and TOOL_NAME in str(last.get("content")):
            return answer(GOOD)  # the final-answer request names the tool
        return Turn(reasoning="More.", tool_calls=[ToolCall("lookup", '{"query": "paris"}')])

    sim = await sim_factory(policy=step, strict=True)
    agent = Agent(kimi(sim), [lookup], budget=Budget(max_steps=3), output_type=City)
    result = await agent.run("Which city?")
    assert result.stop_reason == "max_steps" and result.output == City(
        name="Paris", population=2_100_000
    )
    last = sim.stats.bodies[-1]
    assert last.get("tool_choice") in (None, "auto")  # the tool stays callable
    assert TOOL_NAME in {t["function"]["name"] for t in last["tools"]}


async def test_partial_output_is_visible_as_it_arrives(sim_factory: SimFactory) -> None:
    sim = await sim_factory(
        policy=ScriptedPolicy([answer(GOOD)]), strict=True, chunk_chars=1, batch_delay=0.01
    )
    agent = Agent(kimi(sim), output_type=City)
    parts: list[str] = []
    async with agent.stream("Which city?") as run:
        async for event in run:
            if isinstance(event, ev.OutputDelta):
                parts.append(event.text)
    assert len(parts) >= 2 and json.loads("".join(parts)) == json.loads(GOOD)
    assert run.result is not None and run.result.output.name == "Paris"


def test_an_output_type_without_a_schema_is_a_configuration_error() -> None:
    from agentloop.output import OutputSpec

    class Opaque:  # no fields pydantic can describe
        def __init__(self, handle: Any) -> None:
            self.handle = handle

    with pytest.raises(ConfigurationError, match="has no JSON schema"):
        OutputSpec(Opaque)


async def test_a_durable_run_keeps_its_structured_output(
    sim_factory: SimFactory, tmp_path: Any
) -> None:
    from agentloop.durable import DurableStore

    sim = await strict_sim(sim_factory, [answer(GOOD)])
    agent = Agent(kimi(sim), output_type=City)
    async with DurableStore(tmp_path / "runs.db") as store:
        first = await agent.run("Which city?", run_id="c", store=store)
        again = await agent.run("Which city?", run_id="c", store=store)
    assert first.output == again.output == City(name="Paris", population=2_100_000)
    assert sim.stats.completions == 1  # the second came from the store
