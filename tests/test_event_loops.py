"""One model client, many event loops: ``run_sync`` starts a fresh loop per call, and a script
may drive the same client from loops in several threads. Pooled connections and anyio
primitives belong to one loop; these tests run real HTTP against the simulator (in its own
thread) from successive ``anyio.run`` calls and check nothing of a dead loop is reused."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import anyio.lowlevel
import httpx2
import pytest

from agentloop import Agent, KimiModel
from agentloop.clock import ManualClock, ScaledClock
from agentloop.errors import ConfigurationError
from agentloop.limits import Permit, RateLimiter
from agentloop.models.transport import Httpx2Transport
from agentloop.sim import SimServer

BODY = b'{"model": "kimi-k2.6", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}'
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-sim"}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer().run_in_thread() as server:
        yield server


@contextmanager
def no_resource_warnings() -> Iterator[None]:
    """Fail on sockets or transports left unclosed (collected at the end, not whenever)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()  # earlier tests' garbage is not ours
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks


def in_threads(count: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


async def post_once(transport: Httpx2Transport, url: str) -> int:
    async with transport.post(url, HEADERS, BODY) as response:
        await response.read()
        return response.status


# -- the agent ------------------------------------------------------------------------------
@pytest.mark.usefixtures("transport")
@pytest.mark.parametrize("limits", [{}, {"rpm": None}], ids=["default-rpm50", "rpm-none"])
def test_run_sync_three_times_on_one_agent(sim: SimServer, limits: dict[str, None]) -> None:
    # KimiModel's default rpm=50 is a process-wide limiter that outlives every run's loop
    model = KimiModel(api_key="sk-sim", base_url=sim.base_url, **limits)
    assert (model.limiter.rpm if model.limiter else None) == (None if limits else 50)
    agent = Agent(model)
    with no_resource_warnings():
        results = [agent.run_sync("hi") for _ in range(3)]  # the 2nd raised "loop is closed"
    assert [r.stop_reason for r in results] == ["completed"] * 3
    assert all(r.output for r in results)
    if model.limiter is not None:
        assert model.limiter.admitted == 3


@pytest.mark.usefixtures("transport")
def test_one_model_in_two_threads(sim: SimServer) -> None:
    model = KimiModel(api_key="sk-sim", base_url=sim.base_url, max_concurrency=2)

    def work(_: int) -> None:
        agent = Agent(model)
        for _ in range(3):
            assert agent.run_sync("hi").stop_reason == "completed"

    with no_resource_warnings():
        in_threads(2, work)
    assert model.limiter is not None and model.limiter.admitted == 6


# -- the transport --------------------------------------------------------------------------
def test_transport_rebuilds_pools_for_a_new_loop(sim: SimServer) -> None:
    transport = Httpx2Transport(shards=2)
    url = f"{sim.base_url}/chat/completions"
    seen = []

    async def main() -> None:
        for _ in range(2):  # the second request reuses the first's pooled connection
            assert await post_once(transport, url) == 200
        seen.append(transport._pools)

    with no_resource_warnings():
        for _ in range(3):
            anyio.run(main)
    assert len({id(p) for p in seen}) == 3
    tls = {id(c._transport._pool._ssl_context) for p in seen for c in p.clients}
    assert len(tls) == 1  # one CA store for every loop's shards
    # each loop closed its own clients on its way out
    assert all(c.is_closed for p in seen for c in p.clients)
    assert sim.stats.connections == 3


def test_aclose_closes_this_loops_clients_and_a_later_request_rebuilds(sim: SimServer) -> None:
    transport = Httpx2Transport(shards=2)
    url = f"{sim.base_url}/chat/completions"

    async def main() -> None:
        assert await post_once(transport, url) == 200
        first = transport._pools
        await transport.aclose()
        assert all(c.is_closed for c in first.clients)
        assert await post_once(transport, url) == 200
        assert transport._pools is not first
        await transport.aclose()
        await transport.aclose()  # idempotent

    with no_resource_warnings():
        anyio.run(main)


def test_callers_client_is_not_replaced_on_another_loop(sim: SimServer) -> None:
    client = httpx2.AsyncClient()
    transport = Httpx2Transport(client=client)
    url = f"{sim.base_url}/chat/completions"

    async def first() -> None:
        assert await post_once(transport, url) == 200
        await client.aclose()  # the caller owns it

    async def second() -> None:
        with pytest.raises(ConfigurationError, match="inside the loop"):
            await post_once(transport, url)

    with no_resource_warnings():
        anyio.run(first)
        anyio.run(second)


def test_transport_in_two_threads(sim: SimServer) -> None:
    transport = Httpx2Transport(shards=2)
    url = f"{sim.base_url}/chat/completions"
    statuses: list[int] = []

    async def one() -> None:
        statuses.append(await post_once(transport, url))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(one)

    def work(_: int) -> None:
        for _ in range(3):
            anyio.run(main)

    with no_resource_warnings():
        in_threads(2, work)
    assert statuses == [200] * 24


# -- the limiter ----------------------------------------------------------------------------
def test_limiter_with_tpm_and_concurrency_across_loops() -> None:
    clock = ManualClock()
    limiter = RateLimiter(rpm=None, tpm=100, max_concurrency=2, clock=clock, margin=0.0)
    peaks: list[int] = []

    async def main() -> None:
        running = peak = 0

        async def job() -> None:
            nonlocal running, peak
            permit = await limiter.acquire(50)  # two fit a minute: the rest wait on the window
            running += 1
            peak = max(peak, running)
            await anyio.lowlevel.checkpoint()
            running -= 1
            permit.reconcile(50)
            permit.release()

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(job)
        peaks.append(peak)

    for _ in range(3):  # a waiter binds the loop's anyio Event: every loop needs its own
        anyio.run(main)
    assert peaks == [2, 2, 2]
    assert limiter.admitted == 12
    assert clock.now() == pytest.approx(5 * 60.0)  # 12 requests, two per window


class FrozenClock:
    """Time stands still and a sleep lasts for real: only an early wake-up ends a wait."""

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def test_limiter_frees_reserved_tokens_early_on_every_loop() -> None:
    limiter = RateLimiter(rpm=None, tpm=1000, max_concurrency=2, clock=FrozenClock())

    async def main() -> None:
        first = await limiter.acquire(1000)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:

                async def waiter() -> None:
                    second = await limiter.acquire(500)  # sleeps "60 s" unless woken
                    second.reconcile(0)
                    second.release()

                group.start_soon(waiter)
                await anyio.sleep(0.01)
                first.reconcile(100)  # billed far less than reserved: wakes the waiter
        first.reconcile(0)  # leave an empty window to the next loop
        first.release()

    for _ in range(3):
        anyio.run(main)
    assert limiter.admitted == 6


def test_rpm_log_is_shared_across_loops() -> None:
    clock = ManualClock()
    limiter = RateLimiter(rpm=3, clock=clock, margin=0.0)

    async def admit(count: int) -> list[float]:
        return [(await limiter.acquire()).waited for _ in range(count)]

    assert anyio.run(admit, 3) == [0, 0, 0]
    clock.advance(10)
    assert anyio.run(admit, 1) == [pytest.approx(50.0)]  # the first run's requests still count


def test_rpm_holds_across_loops_in_two_threads() -> None:
    # 60 s of limiter time last 0.1 s: four requests per window, eight from two threads
    limiter = RateLimiter(rpm=4, clock=ScaledClock(600), margin=0.0)
    admitted: list[float] = []
    lock = threading.Lock()

    async def main() -> None:
        for _ in range(4):
            permit = await limiter.acquire()
            with lock:
                admitted.append(permit.charge.at)
            permit.release()

    def work(_: int) -> None:
        anyio.run(main)

    in_threads(2, work)
    admitted.sort()
    assert len(admitted) == 8
    # no 60 s window holds more than 4 admissions
    assert all(b - a >= 60.0 for a, b in zip(admitted, admitted[4:], strict=False))


def test_permit_returns_its_slot_to_its_own_loop() -> None:
    limiter = RateLimiter(rpm=None, max_concurrency=1)
    held: list[Permit] = []
    peaks: list[int] = []

    async def take() -> None:
        held.append(await limiter.acquire())

    async def give_back_then_run() -> None:
        held.pop().release()  # admitted on the last loop: its slot goes back there, not here
        running = peak = 0

        async def job() -> None:
            nonlocal running, peak
            permit = await limiter.acquire()
            running += 1
            peak = max(peak, running)
            await anyio.sleep(0.001)
            running -= 1
            permit.release()

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(job)
        peaks.append(peak)

    anyio.run(take)
    anyio.run(give_back_then_run)
    assert peaks == [1]
