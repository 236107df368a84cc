"""Rate limiting and retries: exact with a manual clock, end-to-end with a scaled clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from agentloop import errors
from agentloop.clock import ManualClock, ScaledClock
from agentloop.limits import RateLimiter, shared_limiter
from agentloop.models import KimiModel, ModelRequest, assemble
from agentloop.retry import RetryPolicy, stated_wait
from agentloop.sim import RETRYABLE, EchoPolicy, FaultPlan, SimServer

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]
SimFactory = Callable[..., Any]
Q = [{"role": "user", "content": "q"}]


# -- the limiter, exactly -------------------------------------------------------------------
async def test_rpm_sliding_window_exact() -> None:
    clock = ManualClock()
    limiter = RateLimiter(rpm=3, clock=clock, margin=0.0)
    for _ in range(3):
        assert (await limiter.acquire()).waited == 0
    clock.advance(10)
    permit = await limiter.acquire()  # the 4th waits until the 1st leaves the window
    assert permit.waited == pytest.approx(50.0)
    assert clock.now() == pytest.approx(60.0)


async def test_tpm_reserves_and_reconciles() -> None:
    clock = ManualClock()
    limiter = RateLimiter(rpm=None, tpm=1000, clock=clock, margin=0.0)
    first = await limiter.acquire(800)
    first.reconcile(100)  # the server billed far less than we reserved
    second = await limiter.acquire(800)
    assert second.waited == 0  # 100 + 800 fits
    third = await limiter.acquire(500)
    assert third.waited == pytest.approx(60.0)  # has to wait for both to leave the window


async def test_concurrency_limit() -> None:
    limiter = RateLimiter(rpm=None, max_concurrency=2)
    running = 0
    peak = 0

    async def job() -> None:
        nonlocal running, peak
        permit = await limiter.acquire()
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1
        permit.release()

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(job)
    assert peak == 2


def test_limiter_shared_per_account() -> None:
    a = shared_limiter("http://x/v1", "k1", rpm=50, tpm=None, max_concurrency=None)
    b = shared_limiter("http://x/v1/", "k1", rpm=50, tpm=None, max_concurrency=None)
    c = shared_limiter("http://x/v1", "k2", rpm=50, tpm=None, max_concurrency=None)
    assert a is b and a is not c
    m1 = KimiModel(api_key="k-same", base_url="http://y/v1")
    m2 = KimiModel(api_key="k-same", base_url="http://y/v1")
    assert m1.limiter is m2.limiter and m1.limiter is not None and m1.limiter.rpm == 50


# -- the retry policy, exactly --------------------------------------------------------------
def test_backoff_is_exponential_jittered_and_honours_stated_waits() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=lambda upper: upper)
    server = errors.ServerError("boom", status=500)
    assert [policy.delay(n, server) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    half = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=lambda upper: 0.0)
    assert half.delay(3, server) == 2.0  # equal jitter: never less than half the backoff
    told = errors.RateLimitError("please try again after 7 seconds", status=429)
    assert stated_wait(told) == 7.0 and half.delay(1, told) == 7.0
    header = errors.RateLimitError("slow down", status=429, retry_after=3.0)
    assert half.delay(1, header) == 3.0
    assert not policy.should_retry(1, errors.QuotaExceededError("q"), 0, 0)
    assert not policy.should_retry(1, server, elapsed=299, wait=2)  # total time bound
    assert not policy.should_retry(6, server, 0, 0)  # attempt bound


async def test_retry_waits_are_exact_with_a_manual_clock(sim_factory: SimFactory) -> None:
    sim = await sim_factory(faults=FaultPlan(schedule={1: "500", 2: "429", 3: "cut"}))
    clock = ManualClock()
    model = KimiModel(
        api_key="sk-sim",
        base_url=sim.base_url,
        rpm=None,
        clock=clock,
        retry=RetryPolicy(base_delay=1.0, jitter=lambda upper: 0.0),
    )
    response = await assemble(model.stream(ModelRequest(Q)))
    assert response.attempts == 4
    assert [r.error.status for r in response.retries] == [500, 429, None]
    # 500 → backoff 1.0 (half of 2^0 * 1.0, +0 jitter); 429 → told 1 s; cut → half of 4.0
    assert clock.sleeps == [0.5, 1.0, 2.0]


async def test_total_time_bound(sim_factory: SimFactory) -> None:
    sim = await sim_factory(faults=FaultPlan(rates={"500": 1.0}))
    clock = ManualClock()
    model = KimiModel(
        api_key="sk-sim",
        base_url=sim.base_url,
        rpm=None,
        clock=clock,
        retry=RetryPolicy(
            max_attempts=100, base_delay=4.0, max_delay=4.0, max_total_s=20.0, jitter=lambda u: u
        ),
    )
    with pytest.raises(errors.RetriesExhaustedError) as info:
        await assemble(model.stream(ModelRequest(Q)))
    # waits of 4 s: a 6th attempt would start with nothing left of the 20 s, so it is not sent
    assert info.value.attempts == 5 and sum(clock.sleeps) <= 20.0
    assert isinstance(info.value.last, errors.ServerError)


# -- acceptance: 200 requests at 50 RPM, zero 429s ------------------------------------------
async def test_200_requests_at_50_rpm_get_no_429(sim_factory: SimFactory) -> None:
    clock = ScaledClock(60.0)  # one simulated minute per real second
    sim = await sim_factory(rpm=50, clock=clock, policy=EchoPolicy())
    limiter = RateLimiter(rpm=50, clock=clock)
    model = KimiModel(
        api_key="sk-sim",
        base_url=sim.base_url,
        limiter=limiter,
        clock=clock,
        retry=RetryPolicy(max_attempts=1),
    )
    start = clock.now()

    async def one(i: int) -> None:
        await assemble(model.stream(ModelRequest([{"role": "user", "content": f"q{i}"}])))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, i)
    elapsed = clock.now() - start
    assert sim.stats.rate_limited == 0 and sim.stats.by_status == {200: 200}
    # and the rate was used: 4 windows of 50 need just over 3 minutes (a fifth would mean
    # the limiter left a whole window unused; the slack absorbs a slow CI machine)
    assert 180 <= elapsed <= 235, elapsed


# -- acceptance: every injected retryable fault recovered and counted -----------------------
async def test_100_requests_recover_every_retryable_fault(sim_factory: SimFactory) -> None:
    rates = {
        "429": 0.05,
        "overload": 0.05,
        "500": 0.04,
        "502": 0.03,
        "503": 0.03,
        "reset": 0.05,
        "cut": 0.05,
        "badsse": 0.05,
    }
    plan = FaultPlan(rates=rates, seed=7)
    sim = await sim_factory(faults=plan, policy=EchoPolicy(), clock=ScaledClock(1000.0))
    model = KimiModel(
        api_key="sk-sim",
        base_url=sim.base_url,
        rpm=None,
        clock=ScaledClock(1000.0),
        retry=RetryPolicy(max_attempts=10, max_total_s=1e9),  # 1000x clock: no wall-time bound
    )
    retries = 0

    async def one(i: int) -> None:
        nonlocal retries
        r = await assemble(model.stream(ModelRequest([{"role": "user", "content": f"q{i}"}])))
        assert r.text == f"echo: q{i}"
        retries += len(r.retries)

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(one, i)
    injected = sum(plan.injected.values())
    assert set(plan.injected) <= RETRYABLE and injected >= 20
    assert retries == injected  # each fault cost exactly one retry, and all were recovered
    assert sim.stats.completions == 100 + injected


async def test_stream_cut_is_retryable_and_signalled(sim_factory: SimFactory) -> None:
    sim = await sim_factory(faults=FaultPlan(schedule={1: "cut"}), chunk_chars=2)
    model = KimiModel(
        api_key="sk-sim", base_url=sim.base_url, rpm=None, retry=RetryPolicy(base_delay=0.01)
    )
    response = await assemble(model.stream(ModelRequest(Q)))
    assert len(response.retries) == 1
    assert isinstance(response.retries[0].error, errors.StreamInterruptedError)
    assert response.text  # the assembled answer is from the second attempt only


async def test_slow_first_byte(sim_factory: SimFactory) -> None:
    clock = ScaledClock(100.0)
    sim = await sim_factory(faults=FaultPlan(schedule={1: "slow"}, slow_seconds=5.0), clock=clock)
    model = KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=None)
    start = clock.now()
    await assemble(model.stream(ModelRequest(Q)))
    assert clock.now() - start >= 5.0


def test_api_key_never_in_errors_or_repr() -> None:
    model = KimiModel(
        api_key="sk-secret-xyz",
        base_url="http://127.0.0.1:9/v1",
        rpm=None,
        retry=RetryPolicy(max_attempts=1),
    )
    assert "sk-secret-xyz" not in repr(model)

    async def go() -> None:
        await assemble(model.stream(ModelRequest(Q)))

    with pytest.raises(errors.APIConnectionError) as info:
        anyio.run(go)
    assert "sk-secret-xyz" not in str(info.value) + repr(info.value)


def test_sim_server_runs_in_a_thread() -> None:
    with SimServer().run_in_thread() as sim:
        model = KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=None)
        response = anyio.run(lambda: assemble(model.stream(ModelRequest(Q))))
        assert response.finish_reason == "stop"


@pytest.mark.parametrize("stream", [True, False])
async def test_sequential_calls_reuse_one_connection(sim_factory: SimFactory, stream: bool) -> None:
    # a streamed body must be read to its end after [DONE], or the pool drops the connection
    sim = await sim_factory(policy=EchoPolicy(), chunk_chars=4)
    model = KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=None, stream=stream)
    for i in range(10):
        response = await assemble(
            model.stream(ModelRequest([{"role": "user", "content": f"q{i}"}]))
        )
        assert response.text == f"echo: q{i}"
    assert sim.stats.connections == 1
    await model.aclose()
