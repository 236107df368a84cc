"""One limiter per account for the life of the process: clients created and closed per task
share it, and conflicting settings resolve to the strictest, in place, with a warning."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from agentloop.clock import ManualClock, ScaledClock
from agentloop.limits import LimiterConflictWarning, Permit, RateLimiter, shared_limiter
from agentloop.models import KimiModel, ModelRequest, assemble
from agentloop.models.transport import Httpx2Transport
from agentloop.sim import EchoPolicy, SimConfig, SimServer

SimFactory = Callable[..., Any]
CANARY = "sk-canary-limits-7f3a9c"


def ask(i: int) -> ModelRequest:
    return ModelRequest([{"role": "user", "content": f"q{i}"}])


async def one_task(base_url: str, transport: Httpx2Transport, i: int, **limits: Any) -> None:
    """A batch task that builds its own client and closes it when done. The connection pools
    are shared: building a TLS context costs about 20 ms, which would spread 70 tasks over
    more than a simulated minute and hide the limiter's absence."""
    model = KimiModel(
        api_key="sk-sim",
        base_url=base_url,
        clock=ScaledClock(60.0),
        transport=transport,
        **limits,
    )
    try:
        response = await assemble(model.stream(ask(i)))
        assert response.text == f"echo: q{i}"
    finally:
        await model.aclose()
    del model
    gc.collect()  # nothing but the registry may keep the limiter alive


# -- a client per task ------------------------------------------------------------------------
@pytest.mark.anyio
async def test_client_per_task_keeps_the_account_rpm(sim_factory: SimFactory) -> None:
    # one simulated minute per real second: 70 requests at 50 RPM need just over one minute
    clock = ScaledClock(60.0)
    sim = await sim_factory(rpm=50, clock=clock, policy=EchoPolicy())
    transport = Httpx2Transport(shards=1)
    start = clock.now()
    for i in range(70):
        await one_task(sim.base_url, transport, i, rpm=50)
    await transport.aclose()
    assert sim.stats.rate_limited == 0 and sim.stats.by_status == {200: 70}
    assert clock.now() - start >= 60.0  # the client waited, not the server


def test_client_per_task_in_its_own_event_loop_keeps_the_account_rpm() -> None:
    # run_sync-style batch code: every task a new client in a new event loop
    clock = ScaledClock(60.0)
    with SimServer(SimConfig(rpm=50, clock=clock, policy=EchoPolicy())).run_in_thread() as sim:
        transport = Httpx2Transport(shards=1)  # its pools close with each loop
        start = clock.now()
        for i in range(60):
            anyio.run(one_task, sim.base_url, transport, i)  # KimiModel's default rpm is 50
        assert sim.stats.rate_limited == 0 and sim.stats.by_status == {200: 60}
    assert clock.now() - start >= 60.0


def test_registry_outlives_every_client() -> None:
    first = shared_limiter("http://gone/v1", "k", rpm=7, tpm=None, max_concurrency=None)
    first_id = id(first)
    del first
    gc.collect()
    again = shared_limiter("http://gone/v1/", "k", rpm=7, tpm=None, max_concurrency=None)
    assert id(again) == first_id and again.rpm == 7


# -- conflicting settings ---------------------------------------------------------------------
@pytest.mark.anyio
async def test_conflicting_rpm_resolves_to_the_strictest_over_http(
    sim_factory: SimFactory,
) -> None:
    # a 0.5 s simulated minute: 11 requests at 5 RPM need two full windows
    clock = ScaledClock(120.0)
    sim = await sim_factory(rpm=5, clock=clock, policy=EchoPolicy(), api_keys={CANARY: "ai"})
    loose = KimiModel(api_key=CANARY, base_url=sim.base_url, rpm=500, clock=ScaledClock(120.0))
    with pytest.warns(LimiterConflictWarning) as record:
        strict = KimiModel(api_key=CANARY, base_url=sim.base_url, rpm=5, clock=clock)
    message = str(record[0].message)
    assert "rpm 500 and 5" in message and sim.base_url in message and CANARY not in message
    assert record[0].filename == __file__  # points at the code that built the client
    assert loose.limiter is strict.limiter and loose.limiter is not None
    assert loose.limiter.rpm == 5  # the earlier client was tightened in place
    start = clock.now()
    for i in range(11):  # mostly through the client that asked for 500
        model = strict if i % 4 == 0 else loose
        assert (await assemble(model.stream(ask(i)))).text == f"echo: q{i}"
    assert sim.stats.rate_limited == 0 and sim.stats.by_status == {200: 11}
    assert clock.now() - start >= 120.0
    # a looser client later changes nothing but says so
    with pytest.warns(LimiterConflictWarning, match="rpm 5 and 50, using 5"):
        later = KimiModel(api_key=CANARY, base_url=sim.base_url, clock=clock)
    assert later.limiter is strict.limiter and strict.limiter.rpm == 5
    for model in (loose, strict, later):
        await model.aclose()


@pytest.mark.anyio
async def test_conflicting_concurrency_resolves_to_the_strictest_over_http(
    sim_factory: SimFactory,
) -> None:
    clock = ScaledClock(100.0)
    sim = await sim_factory(max_concurrency=2, latency=2.0, clock=clock, policy=EchoPolicy())
    wide = KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=None, max_concurrency=8)
    with pytest.warns(LimiterConflictWarning, match="max_concurrency 8 and 2, using 2"):
        narrow = KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=None, max_concurrency=2)
    assert wide.limiter is narrow.limiter

    async def one(i: int) -> None:
        assert (await assemble(wide.stream(ask(i)))).text == f"echo: q{i}"

    async with anyio.create_task_group() as group:
        for i in range(8):
            group.start_soon(one, i)
    assert sim.stats.rate_limited == 0 and sim.stats.by_status == {200: 8}
    await wide.aclose()
    await narrow.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("first", [4, None], ids=["from-4", "from-unlimited"])
async def test_concurrency_tightened_below_the_permits_in_flight(first: int | None) -> None:
    url = f"http://inflight-{first}/v1"
    limiter = shared_limiter(url, "k", rpm=1000, tpm=None, max_concurrency=first)
    held = [await limiter.acquire() for _ in range(4)]
    told = pytest.warns(LimiterConflictWarning) if first else warnings.catch_warnings()
    with told:
        if not first:
            warnings.simplefilter("error")  # an unset limit is no conflict
        assert shared_limiter(url, "k", rpm=1000, tpm=None, max_concurrency=2) is limiter
    admitted: list[Permit] = []

    async def wait_for_a_slot() -> None:
        admitted.append(await limiter.acquire())

    async with anyio.create_task_group() as group:
        group.start_soon(wait_for_a_slot)
        group.start_soon(wait_for_a_slot)
        for expected in (0, 0, 1, 2):  # 3 then 2 in flight: full; 1: room for one, then two
            held.pop().release()
            await anyio.wait_all_tasks_blocked()
            assert len(admitted) == expected
    assert limiter.max_concurrency == 2
    for permit in admitted:
        permit.release()


@pytest.mark.anyio
async def test_a_waiter_cancelled_as_it_gets_a_slot_passes_the_slot_on() -> None:
    limiter = RateLimiter(rpm=None, max_concurrency=1)
    first = await limiter.acquire()
    scopes: list[anyio.CancelScope] = []
    admitted: list[str] = []

    async def wait_for_a_slot(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await limiter.acquire()
            admitted.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(wait_for_a_slot, "doomed")
        await anyio.wait_all_tasks_blocked()
        group.start_soon(wait_for_a_slot, "next")
        await anyio.wait_all_tasks_blocked()
        first.release()  # hands the slot to the first waiter...
        scopes[0].cancel()  # ...which is cancelled before it runs
        await anyio.wait_all_tasks_blocked()
    assert admitted == ["next"]


@pytest.mark.anyio
async def test_tpm_tightened_while_a_request_waits() -> None:
    clock = ManualClock()
    limiter = shared_limiter(
        "http://tpm/v1", "k", rpm=None, tpm=1000, max_concurrency=None, clock=clock
    )
    await limiter.acquire(900)
    with pytest.warns(LimiterConflictWarning, match="tpm 1000 and 400, using 400"):
        shared_limiter("http://tpm/v1", "k", rpm=None, tpm=400, max_concurrency=None, clock=clock)
    permit = await limiter.acquire(900)  # reserves at most the tightened 400, after the window
    assert permit.charge.tokens == 400 and permit.waited == pytest.approx(60.5)


def test_unset_settings_take_the_account_limits_silently() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = shared_limiter("http://quiet/v1", "k", rpm=None, tpm=9000, max_concurrency=None)
        b = shared_limiter("http://quiet/v1", "k", rpm=20, tpm=None, max_concurrency=3)
        c = shared_limiter("http://quiet/v1", "k", rpm=20, tpm=9000, max_concurrency=3)
    assert a is b is c
    assert (a.rpm, a.tpm, a.max_concurrency) == (20, 9000, 3)


def test_warning_never_names_the_key_or_url_credentials() -> None:
    url = "https://user:pw-secret@api.example/v1?api-key=" + CANARY
    shared_limiter(url, CANARY, rpm=50, tpm=None, max_concurrency=None)
    with pytest.warns(LimiterConflictWarning) as record:
        shared_limiter(url, CANARY, rpm=10, tpm=None, max_concurrency=None)
    message = str(record[0].message)
    assert "https://api.example/v1" in message and "rpm 50 and 10" in message
    assert CANARY not in message and "pw-secret" not in message


def test_a_clock_on_another_time_scale_starts_a_fresh_log() -> None:
    real = shared_limiter("http://clocks/v1", "k", rpm=5, tpm=None, max_concurrency=None)
    scaled = shared_limiter(
        "http://clocks/v1", "k", rpm=5, tpm=None, max_concurrency=None, clock=ScaledClock(9.0)
    )
    same = shared_limiter(
        "http://clocks/v1", "k", rpm=5, tpm=None, max_concurrency=None, clock=ScaledClock(9.0)
    )
    assert scaled is not real and same is scaled


def test_limits_are_shared_by_threads_creating_clients() -> None:
    made: list[RateLimiter] = []
    lock = threading.Lock()

    def make() -> None:
        limiter = shared_limiter("http://threads/v1", "k", rpm=9, tpm=None, max_concurrency=None)
        with lock:
            made.append(limiter)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(limiter) for limiter in made}) == 1
