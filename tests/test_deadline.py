"""The per-wait deadline guard: a cheap timer on asyncio that never eats someone else's cancel."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
import pytest

from agentloop import Agent, RetryPolicy, _deadline, tool
from agentloop._deadline import now, run_watchdog, watchdog
from agentloop.errors import StreamStalledError
from agentloop.models import ModelRequest, assemble
from agentloop.sim import EchoPolicy, FaultPlan, ScriptedPolicy, ToolCall, ToolLoopPolicy, Turn

from .conftest import kimi

pytestmark = pytest.mark.anyio


@tool
async def echo(text: str) -> str:
    """Echo.

    Args:
        text: what to echo.
    """
    return text


async def test_a_guard_stops_its_block_at_the_deadline_and_says_so() -> None:
    start = now()
    with watchdog().until(now() + 0.05) as guard:
        await asyncio.sleep(5)
    assert guard.cancelled_caught
    assert 0.04 < now() - start < 1
    await asyncio.sleep(0)  # no cancellation is left pending on the task


async def test_a_block_done_in_time_is_untouched_and_leaves_no_timer() -> None:
    loop = asyncio.get_running_loop()
    with watchdog().until(now() + 0.05) as guard:
        await asyncio.sleep(0)
    assert not guard.cancelled_caught
    await asyncio.sleep(0.1)  # past the deadline: the timer was cancelled, nothing arrives
    assert not guard.cancelled_caught
    with watchdog().until(math.inf) as forever:
        await asyncio.sleep(0)
    assert not forever.cancelled_caught and loop.time() > 0


async def test_an_outer_anyio_cancel_goes_through_even_when_both_fire_together() -> None:
    deadline = now() + 0.05
    with anyio.CancelScope(deadline=deadline) as outer:
        with watchdog().until(deadline) as guard:
            await asyncio.sleep(5)
        pytest.fail("the outer scope's cancellation was swallowed")  # pragma: no cover
    assert outer.cancelled_caught
    assert not guard.cancelled_caught


async def test_an_outer_cancel_scope_cancelled_early_is_not_taken_for_the_guard() -> None:
    with anyio.CancelScope() as outer:
        with watchdog().until(now() + 5) as guard:
            outer.cancel()
            await asyncio.sleep(5)
    assert outer.cancelled_caught and not guard.cancelled_caught


async def test_task_cancel_from_outside_propagates() -> None:
    reached = asyncio.Event()

    async def body() -> None:
        with watchdog().until(now() + 5):
            reached.set()
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nested_guards_the_outer_one_catches_when_both_fire() -> None:
    deadline = now() + 0.05
    with watchdog().until(deadline) as outer:
        with watchdog().until(deadline) as inner:
            await asyncio.sleep(5)
        pytest.fail("the outer guard's cancellation was swallowed")  # pragma: no cover
    assert outer.cancelled_caught and not inner.cancelled_caught


async def test_errors_inside_pass_through() -> None:
    with pytest.raises(KeyError), watchdog().until(now() + 5):
        raise KeyError("x")


@pytest.mark.filterwarnings("ignore")
def test_under_trio_it_is_an_anyio_cancel_scope() -> None:
    pytest.importorskip("trio")

    async def main() -> bool:
        with watchdog().until(now() + 0.05) as guard:
            await anyio.sleep(5)
        return guard.cancelled_caught

    assert anyio.run(main, backend="trio")


# -- the watchdog: one timer for a task's successive waits --------------------------------------
def _timers(loop: asyncio.AbstractEventLoop) -> int:
    """The loop's live timers (a private list, read for this test only)."""
    return sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]


async def test_a_watchdog_fires_on_the_wait_whose_deadline_passes() -> None:
    dog = watchdog()
    with dog.until(now() + 5) as first:
        await asyncio.sleep(0)
    assert not first.cancelled_caught
    start = now()
    with dog.until(now() + 0.05) as second:  # sooner than the armed timer: moved forward
        await asyncio.sleep(5)
    assert second.cancelled_caught
    assert 0.04 < now() - start < 1
    dog.close()
    await asyncio.sleep(0)  # nothing is left pending on the task


async def test_a_later_deadline_keeps_the_timer_and_is_still_kept() -> None:
    """The timer armed for an early wait fires during a later, longer one: it re-arms for the
    later deadline instead of cutting the wait short."""
    dog = watchdog()
    with dog.until(now() + 0.03):
        await asyncio.sleep(0)
    start = now()
    with dog.until(now() + 0.15) as longer:
        await asyncio.sleep(5)
    assert longer.cancelled_caught
    assert 0.13 < now() - start < 1
    dog.close()


async def test_a_thousand_waits_arm_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    before = _timers(loop)
    armed: list[float] = []
    call_at = loop.call_at

    def counting(when: float, *args: object, **kwargs: object) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_at", counting)
    dog = watchdog()
    for _ in range(1000):
        with dog.until(now() + 30) as scope:
            await asyncio.sleep(0)
        assert not scope.cancelled_caught
    assert len(armed) == 1
    assert _timers(loop) - before == 1
    dog.close()
    assert _timers(loop) == before


async def test_a_timer_that_fires_between_waits_does_nothing() -> None:
    dog = watchdog()
    with dog.until(now() + 0.02):
        await asyncio.sleep(0)
    await asyncio.sleep(0.06)  # the timer fires here, outside any wait
    with dog.until(now() + 5) as later:
        await asyncio.sleep(0.01)
    assert not later.cancelled_caught
    dog.close()


async def test_a_watchdog_used_from_another_task_cancels_that_task() -> None:
    dog = watchdog()
    with dog.until(now() + 5):
        await asyncio.sleep(0)

    async def elsewhere() -> bool:
        with dog.until(now() + 0.05) as scope:
            await asyncio.sleep(5)
        return scope.cancelled_caught

    assert await asyncio.ensure_future(elsewhere())
    await asyncio.sleep(0.1)  # this task was not cancelled by the other's deadline
    dog.close()


async def test_a_runs_waits_share_its_watchdog_and_nested_ones_get_their_own() -> None:
    loop = asyncio.get_running_loop()
    before = _timers(loop)
    with run_watchdog():
        first = watchdog()
        with first.until(now() + 30):
            nested = watchdog()  # e.g. a tool that makes a model call of its own
            assert nested is not first
            with nested.until(now() + 0.05) as inner:
                await asyncio.sleep(5)
            nested.close()
            assert inner.cancelled_caught
        first.close()  # a borrower's close leaves the run's timer armed
        assert watchdog() is first
        assert _timers(loop) - before == 1

        async def child() -> bool:
            return watchdog() is first

        assert not await asyncio.ensure_future(child())  # another task: its own
        with watchdog().until(now() + 0.05) as later:  # the armed timer is re-armed sooner
            await asyncio.sleep(5)
        assert later.cancelled_caught
    assert _timers(loop) == before  # the run's end cancels its timer
    assert watchdog() is not first


@pytest.mark.parametrize("stream", [True, False])
async def test_a_run_over_http_makes_one_watchdog_for_all_its_waits(
    sim_factory: Any, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Ten steps of model calls and tool calls: every header, body, stream-gap and tool wait
    is guarded, and all of them by the run's one watchdog."""
    made: list[object] = []
    init = _deadline._AsyncioWatchdog.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(_deadline._AsyncioWatchdog, "__init__", counting)
    sim = await sim_factory(policy=ToolLoopPolicy(steps=10))
    agent = Agent(kimi(sim, stream=stream, thinking=False), tools=[echo])
    result = await agent.run("go")
    assert result.ok and len(result.steps) == 11
    assert len(made) == 1


async def test_a_wait_without_a_deadline_does_not_lend_the_runs_watchdog() -> None:
    """A tool with ``timeout_s=None`` is still a wait: a model call it makes gets a watchdog of
    its own, so a cut inside is never read as the tool's own timeout."""
    with run_watchdog():
        run = watchdog()
        with run.until(math.inf) as outer:
            nested = watchdog()
            assert nested is not run
            with nested.until(now() + 0.02) as inner:
                await asyncio.sleep(5)
            nested.close()
            assert inner.cancelled_caught
        assert not outer.cancelled_caught


async def test_a_tool_without_a_timeout_that_survives_its_own_stalled_call(
    sim_factory: Any,
) -> None:
    """Over HTTP: the tool's model call stalls and is cut, the tool answers with a fallback,
    and the run goes on with that answer (found in review: the cut leaked into the tool's
    timer and the run crashed formatting a timeout of None)."""
    inner_sim = await sim_factory(faults=FaultPlan(rates={"silent": 1.0}), policy=EchoPolicy())
    inner = kimi(
        inner_sim, retry=RetryPolicy(max_attempts=1), idle_timeout=0.2, first_byte_timeout=0.2
    )

    @tool(timeout_s=None)
    async def ask(question: str) -> str:
        """Ask another model.

        Args:
            question: the question.
        """
        try:
            request = ModelRequest([{"role": "user", "content": question}])
            return (await assemble(inner.stream(request))).text
        except StreamStalledError:
            return "fallback"

    script = [Turn(tool_calls=[ToolCall("ask", '{"question": "q"}', "c1")]), Turn(content="done")]
    outer_sim = await sim_factory(policy=ScriptedPolicy(script))
    result = await Agent(kimi(outer_sim), tools=[ask]).run("go")
    assert result.stop_reason == "completed", result.error
    assert result.messages[2]["content"] == "fallback"
    assert result.steps[0].tool_calls[0].ok
