"""Every ending is well-formed and resumable, and the event stream survives a slow consumer, a
deadline, cancel() and an early break, releasing its connection and task. Real HTTP against
the simulator in strict mode: a history with an unanswered tool call is a 400 there."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from agentloop import Agent, Budget, RunResult, tool
from agentloop import events as ev
from agentloop.sim import ScriptedPolicy, SimServer, ToolCall, ToolLoopPolicy, Turn
from agentloop.tools import stop_requested

from .conftest import kimi

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]
LONG_THOUGHT = Turn(reasoning="thinking " * 4000, content="done")
SLOW = {"chunk_chars": 8, "batch_delay": 0.01}  # LONG_THOUGHT streams for about 1.4 s


@tool
async def lookup(query: str) -> str:
    """Look a thing up.

    Args:
        query: what to look for.
    """
    await anyio.sleep(0.01)
    return f"hits for {query}"


@tool(timeout_s=60)
async def stuck(query: str) -> str:
    """Never finishes in time.

    Args:
        query: what.
    """
    await anyio.sleep(30)
    return "never"


@tool(timeout_s=60)
def stuck_sync(query: str) -> str:
    """A sync tool that blocks.

    Args:
        query: what.
    """
    time.sleep(6)
    return "late"


def two_calls_then_answer() -> ScriptedPolicy:
    return ScriptedPolicy(
        [
            Turn(tool_calls=[ToolCall("lookup", '{"query": "a"}')]),
            Turn(
                tool_calls=[
                    ToolCall("lookup", '{"query": "b"}'),
                    ToolCall("stuck", '{"query": "c"}'),
                ]
            ),
            Turn(content="resumed fine"),
        ]
    )


async def assert_resumes(sim: SimServer, result: RunResult, tools: Any = (lookup,)) -> None:
    """Every tool call has exactly one answer, and the strict simulator accepts the history."""
    calls = [c["id"] for m in result.messages for c in m.get("tool_calls") or ()]
    answers = [m["tool_call_id"] for m in result.messages if m["role"] == "tool"]
    assert sorted(calls) == sorted(answers)
    before = sim.stats.by_status.get(400, 0)
    agent = Agent(kimi(sim), tools=tools, budget=Budget(max_steps=3))
    resumed = await agent.run(history=result.messages)
    assert sim.stats.by_status.get(400, 0) == before
    assert resumed.stop_reason in ("completed", "max_steps"), resumed.error
    assert resumed.output


def run_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "agentloop run"]


async def settle(sim: SimServer, tasks_before: int) -> None:
    """Wait until the simulator sees no open connection and no extra task is left."""
    gc.collect()
    with anyio.fail_after(3):
        # polling another party's state: there is no event to wait on
        while sim.open_connections or run_tasks() or len(asyncio.all_tasks()) > tasks_before:  # noqa: ASYNC110
            await anyio.sleep(0.02)


# -- stops during a tool call ------------------------------------------------------------------
async def test_a_deadline_during_a_tool_call_answers_every_call(sim_factory: SimFactory) -> None:
    sim = await sim_factory(strict=True, policy=two_calls_then_answer())
    agent = Agent(kimi(sim), tools=[lookup, stuck], budget=Budget(deadline_s=0.5))
    started = time.monotonic()
    result = await agent.run("go")
    assert time.monotonic() - started < 1.5
    assert result.stop_reason == "deadline"
    second = result.steps[1].tool_calls
    # the call that finished keeps its result; the one still running gets a note
    assert [(tc.name, tc.ok, tc.error) for tc in second] == [
        ("lookup", True, None),
        ("stuck", False, "interrupted"),
    ]
    assert result.messages[-2]["content"] == "hits for b"
    assert "run stopped" in result.messages[-1]["content"]
    await assert_resumes(sim, result)


async def test_cancel_during_a_tool_call_answers_every_call(sim_factory: SimFactory) -> None:
    sim = await sim_factory(strict=True, policy=two_calls_then_answer())
    agent = Agent(kimi(sim), tools=[lookup, stuck])
    stream = agent.stream("go")
    seen: list[ev.Event] = []
    async with anyio.create_task_group() as group:
        async for event in stream:
            seen.append(event)
            if isinstance(event, ev.ToolCallStarted) and event.name == "stuck":
                group.start_soon(lambda: _cancel_soon(stream))
    result = stream.result
    assert result is not None and result.stop_reason == "cancelled"
    assert isinstance(seen[-1], ev.RunFinished)
    finished = [e for e in seen if isinstance(e, ev.ToolCallFinished)]
    started = [e for e in seen if isinstance(e, ev.ToolCallStarted)]
    assert len(finished) == len(started) == 3  # every started call is reported finished
    await assert_resumes(sim, result)


async def _cancel_soon(stream: Any) -> None:
    await anyio.sleep(0.1)
    stream.cancel()


async def test_a_deadline_mid_stream_ends_within_a_second(sim_factory: SimFactory) -> None:
    sim = await sim_factory(strict=True, **SLOW, policy=ScriptedPolicy([LONG_THOUGHT]))
    agent = Agent(kimi(sim), budget=Budget(deadline_s=0.3))
    started = time.monotonic()
    result = await agent.run("go")
    assert result.stop_reason == "deadline" and time.monotonic() - started < 1.3
    assert result.messages == [{"role": "user", "content": "go"}]  # nothing half-received


# -- sync tools --------------------------------------------------------------------------------
async def test_a_sync_tool_honours_its_timeout(sim_factory: SimFactory) -> None:
    noticed = threading.Event()

    @tool(timeout_s=0.5)
    def slow_sync(query: str) -> str:
        """Blocks, checking whether it should stop.

        Args:
            query: what.
        """
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            if stop_requested():
                noticed.set()
                return "stopped"
            time.sleep(0.01)
        return "late"

    sim = await sim_factory(
        strict=True,
        policy=ScriptedPolicy(
            [Turn(tool_calls=[ToolCall("slow_sync", '{"query": "q"}')]), Turn(content="ok")]
        ),
    )
    started = time.monotonic()
    result = await Agent(kimi(sim), tools=[slow_sync]).run("go")
    assert time.monotonic() - started < 2
    assert result.stop_reason == "completed"
    assert result.steps[0].tool_calls[0].error == "timeout"
    assert "timed out after 0.5s" in result.messages[2]["content"]
    assert noticed.wait(2)  # the abandoned thread was told to stop


async def test_a_sync_tool_does_not_hold_the_run_past_its_deadline(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(
        strict=True,
        policy=ScriptedPolicy(
            [Turn(tool_calls=[ToolCall("stuck_sync", '{"query": "q"}')]), Turn(content="ok")]
        ),
    )
    agent = Agent(kimi(sim), tools=[stuck_sync], budget=Budget(deadline_s=0.5))
    started = time.monotonic()
    result = await agent.run("go")
    assert result.stop_reason == "deadline" and time.monotonic() - started < 1.5
    assert result.steps[0].tool_calls[0].error == "interrupted"


# -- the consumer side -------------------------------------------------------------------------
async def test_a_consumer_that_awaits_between_events_gets_every_event_under_a_deadline(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(strict=True, chunk_chars=8, policy=ToolLoopPolicy(steps=50))
    agent = Agent(kimi(sim), tools=[lookup], budget=Budget(deadline_s=0.4))
    events: list[ev.Event] = []
    started = time.monotonic()
    async with agent.stream("go") as run:
        async for event in run:
            with anyio.CancelScope() as own:  # the consumer's own scope is never cancelled
                await anyio.sleep(0.02)  # a websocket write, say
            assert not own.cancelled_caught
            events.append(event)
    assert isinstance(events[0], ev.RunStarted) and isinstance(events[-1], ev.RunFinished)
    result = run.result
    assert result is not None and result.stop_reason == "deadline"
    assert any(isinstance(e, ev.LimitHit) and e.reason == "deadline" for e in events)
    # the run stopped at the first of its own awaits after the deadline, whatever the consumer
    assert time.monotonic() - started < 0.4 + 1.0 + 0.02 * len(events)
    await assert_resumes(sim, result)


async def test_cancel_while_the_consumer_awaits(sim_factory: SimFactory) -> None:
    sim = await sim_factory(strict=True, chunk_chars=8, policy=ToolLoopPolicy(steps=50))
    agent = Agent(kimi(sim), tools=[lookup])
    async with agent.stream("go") as run:
        count = 0
        async for event in run:
            count += 1
            if count == 5:
                run.cancel()
            await anyio.sleep(0.01)
            last = event
    assert isinstance(last, ev.RunFinished) and last.result.stop_reason == "cancelled"
    await assert_resumes(sim, last.result)


async def test_breaking_out_of_async_with_releases_the_connection_at_once(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(**SLOW, policy=ScriptedPolicy([LONG_THOUGHT]))
    model = kimi(sim)
    tasks_before = len(asyncio.all_tasks())
    async with Agent(model).stream("go") as run:
        async for event in run:
            if isinstance(event, ev.ReasoningDelta):
                assert sim.open_connections == 1 and len(run_tasks()) == 1
                break
    # aclose() waited for the run's task: it is gone, and the half-read response with it
    assert run.result is not None and run.result.stop_reason == "cancelled"
    assert run_tasks() == []
    await settle(sim, tasks_before)
    await model.aclose()


async def test_breaking_out_of_plain_async_for_releases_connection_and_task(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(**SLOW, policy=ScriptedPolicy([LONG_THOUGHT]))
    model = kimi(sim)
    tasks_before = len(asyncio.all_tasks())
    async for event in Agent(model).stream("go"):
        if isinstance(event, ev.ReasoningDelta):
            break
    await settle(sim, tasks_before)  # the dropped stream stopped its run and released all
    await model.aclose()


async def test_aclose_stops_a_run_and_keeps_its_result(sim_factory: SimFactory) -> None:
    sim = await sim_factory(**SLOW, policy=ScriptedPolicy([LONG_THOUGHT]))
    stream = Agent(kimi(sim)).stream("go")
    async for event in stream:
        if isinstance(event, ev.ReasoningDelta):
            await stream.aclose()
    assert stream.result is not None and stream.result.stop_reason == "cancelled"
    await settle(sim, len(asyncio.all_tasks()))


async def test_an_error_in_the_consumer_propagates_and_stops_the_run(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(**SLOW, policy=ScriptedPolicy([LONG_THOUGHT]))
    tasks_before = len(asyncio.all_tasks())
    with pytest.raises(KeyError):
        async with Agent(kimi(sim)).stream("go") as run:
            async for event in run:
                if isinstance(event, ev.ReasoningDelta):
                    raise KeyError("the consumer's own bug")
    await settle(sim, tasks_before)


async def test_breaking_out_while_keeping_the_stream_still_releases_it(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(**SLOW, policy=ScriptedPolicy([LONG_THOUGHT]))
    model = kimi(sim)
    tasks_before = len(asyncio.all_tasks())
    stream = Agent(model).stream("go")
    async for event in stream:
        if isinstance(event, ev.ReasoningDelta):
            break
    await settle(sim, tasks_before)  # the stream is still referenced here
    assert stream.result is not None and stream.result.stop_reason == "cancelled"
    await model.aclose()
