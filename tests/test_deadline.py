"""The per-wait deadline guard: a cheap timer on asyncio that never eats someone else's cancel."""

from __future__ import annotations

import asyncio
import math

import anyio
import pytest

from agentloop._deadline import now, within

pytestmark = pytest.mark.anyio


async def test_a_guard_stops_its_block_at_the_deadline_and_says_so() -> None:
    start = now()
    with within(now() + 0.05) as guard:
        await asyncio.sleep(5)
    assert guard.cancelled_caught
    assert 0.04 < now() - start < 1
    await asyncio.sleep(0)  # no cancellation is left pending on the task


async def test_a_block_done_in_time_is_untouched_and_leaves_no_timer() -> None:
    loop = asyncio.get_running_loop()
    with within(now() + 0.05) as guard:
        await asyncio.sleep(0)
    assert not guard.cancelled_caught
    await asyncio.sleep(0.1)  # past the deadline: the timer was cancelled, nothing arrives
    assert not guard.cancelled_caught
    with within(math.inf) as forever:
        await asyncio.sleep(0)
    assert not forever.cancelled_caught and loop.time() > 0


async def test_an_outer_anyio_cancel_goes_through_even_when_both_fire_together() -> None:
    deadline = now() + 0.05
    with anyio.CancelScope(deadline=deadline) as outer:
        with within(deadline) as guard:
            await asyncio.sleep(5)
        pytest.fail("the outer scope's cancellation was swallowed")  # pragma: no cover
    assert outer.cancelled_caught
    assert not guard.cancelled_caught


async def test_an_outer_cancel_scope_cancelled_early_is_not_taken_for_the_guard() -> None:
    with anyio.CancelScope() as outer:
        with within(now() + 5) as guard:
            outer.cancel()
            await asyncio.sleep(5)
    assert outer.cancelled_caught and not guard.cancelled_caught


async def test_task_cancel_from_outside_propagates() -> None:
    reached = asyncio.Event()

    async def body() -> None:
        with within(now() + 5):
            reached.set()
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nested_guards_the_outer_one_catches_when_both_fire() -> None:
    deadline = now() + 0.05
    with within(deadline) as outer:
        with within(deadline) as inner:
            await asyncio.sleep(5)
        pytest.fail("the outer guard's cancellation was swallowed")  # pragma: no cover
    assert outer.cancelled_caught and not inner.cancelled_caught


async def test_errors_inside_pass_through() -> None:
    with pytest.raises(KeyError), within(now() + 5):
        raise KeyError("x")


@pytest.mark.filterwarnings("ignore")
def test_under_trio_it_is_an_anyio_cancel_scope() -> None:
    pytest.importorskip("trio")

    async def main() -> bool:
        with within(now() + 0.05) as guard:
            await anyio.sleep(5)
        return guard.cancelled_caught

    assert anyio.run(main, backend="trio")
