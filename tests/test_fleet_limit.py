"""A fleet of worker processes shares one account's RPM limit through a DatabaseLimiter.

Three real worker processes (tests/fleet_worker.py) send all their requests at once to one
simulator enforcing an RPM limit; the simulator and the workers use ScaledClocks of one factor
(a simulated minute lasts 2 s). With the log in a shared database the simulator answers no
429, and every sliding minute of admissions holds at most the limit; with a limiter per
process (each at the full limit, as three unshared workers would be) the same load collects
429s, which shows the test can fail. The utilisation of a real 60-second limit is measured by
``python -m bench fleet_limit``, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from agentloop.clock import ManualClock, ScaledClock
from agentloop.errors import ConfigurationError
from agentloop.limits_db import TABLE, DatabaseLimiter
from agentloop.sim import EchoPolicy, SimConfig, SimServer

WORKER = Path(__file__).with_name("fleet_worker.py")
FACTOR = 30.0  # a simulated minute in 2 real seconds
RPM = 12
WORKERS = 3
EACH = 8  # 24 requests: two windows' worth, all ready at once


@pytest.fixture
def sim() -> Iterator[SimServer]:
    config = SimConfig(rpm=RPM, clock=ScaledClock(FACTOR), policy=EchoPolicy())
    with SimServer(config).run_in_thread() as server:
        yield server


def fleet(base_url: str, limit: str) -> list[dict[str, Any]]:
    """Start the workers, let them go together, and collect their reports."""
    command = [sys.executable, str(WORKER), base_url, limit, "--rpm", str(RPM)]
    command += ["--factor", str(FACTOR), "--requests", str(EACH)]
    workers = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(WORKERS)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "READY"
        for worker in workers:  # all started (imports done): go at once
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker in workers:
            out, _ = worker.communicate(timeout=120)
            assert worker.returncode == 0
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def busiest_minute(stamps: list[float]) -> int:
    """The most admissions inside any sliding 60-second window."""
    stamps = sorted(stamps)
    most = start = 0
    for end, at in enumerate(stamps):
        while at - stamps[start] >= 60.0:
            start += 1
        most = max(most, end - start + 1)
    return most


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "limits.db")
    url: str = request.getfixturevalue("postgres_url")  # skips (or fails in CI) without one
    return url


def test_a_fleet_sharing_the_database_limiter_gets_no_429(sim: SimServer, database: str) -> None:
    reports = fleet(sim.base_url, database)
    assert [r["errors"] for r in reports] == [[]] * WORKERS
    assert sorted(a for r in reports for a in r["answers"]) == sorted(
        f"echo: q{i}" for i in range(EACH) for _ in range(WORKERS)
    )
    assert sim.stats.rate_limited == 0
    assert sim.stats.by_status == {200: WORKERS * EACH}  # no retries either
    admitted = [at for r in reports for at in r["admitted"]]
    assert len(admitted) == WORKERS * EACH
    assert busiest_minute(admitted) <= RPM
    # every worker got some of the first minute, and the limit made the rest wait for the next
    assert all(r["admitted"] for r in reports)
    assert max(admitted) - min(admitted) >= 60.0


def test_control_per_process_limiters_overrun_the_account(sim: SimServer) -> None:
    reports = fleet(sim.base_url, "local")
    assert all(len(r["admitted"]) >= EACH for r in reports)
    # each worker kept its own limit, together they sent up to three times it: the server said no
    assert sim.stats.rate_limited > 0
    assert sim.stats.by_status.get(429, 0) == sim.stats.rate_limited


# -- the limiter on its own ----------------------------------------------------------------------
@pytest.mark.anyio
async def test_two_limiters_on_one_file_share_the_log(tmp_path: Path) -> None:
    clock = ManualClock()
    a = DatabaseLimiter(tmp_path / "l.db", "k", rpm=3, clock=clock)
    b = DatabaseLimiter(tmp_path / "l.db", "k", rpm=3, clock=clock)
    other = DatabaseLimiter(tmp_path / "l.db", "another key", rpm=3, clock=clock)
    for limiter in (a, b, a):
        (await limiter.acquire()).release()
    assert (await other.acquire()).waited == 0  # another account has a log of its own
    permit = await b.acquire()  # the fourth of the account waits for the first to leave
    assert permit.waited == pytest.approx(60.5) and clock.sleeps == [pytest.approx(60.5)]
    for limiter in (a, b, other):
        limiter.close()


@pytest.mark.anyio
async def test_tokens_are_reserved_then_reconciled(tmp_path: Path) -> None:
    clock = ManualClock()
    a = DatabaseLimiter(tmp_path / "l.db", "k", rpm=None, tpm=1000, clock=clock)
    b = DatabaseLimiter(tmp_path / "l.db", "k", rpm=None, tpm=1000, clock=clock)
    first = await a.acquire(900)
    first.reconcile(100)  # billed far less than reserved: the rest is free again
    first.release()
    a.flush()
    assert (await b.acquire(800)).waited == 0
    assert (await b.acquire(800)).waited == pytest.approx(60.5)
    a.close()
    b.close()


@pytest.mark.anyio
async def test_concurrency_is_fleet_wide_and_a_dead_holder_lease_runs_out(tmp_path: Path) -> None:
    clock = ManualClock()
    dead = DatabaseLimiter(tmp_path / "l.db", "k", rpm=None, max_concurrency=2, clock=clock)
    await dead.acquire()
    await dead.acquire()  # both slots held by a worker that then dies (never releases)
    dead._closed = True  # as if SIGKILLed: nothing more from it
    live = DatabaseLimiter(
        tmp_path / "l.db", "k", rpm=None, max_concurrency=2, clock=clock, lease=30.0, poll=5.0
    )
    permit = await live.acquire()
    assert permit.waited == pytest.approx(60.0)  # the dead worker's leases (60 s) ran out
    held = await live.acquire()
    permit.release()
    assert (await live.acquire()).waited == pytest.approx(0.0)  # our release is seen at once
    held.release()
    live.close()


@pytest.mark.anyio
async def test_database_calls_run_off_the_event_loop(tmp_path: Path) -> None:
    # admissions go to a worker thread: a task of the loop keeps running meanwhile
    limiter = DatabaseLimiter(tmp_path / "l.db", "k", rpm=None, clock=ScaledClock(1.0))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        for _ in range(20):
            (await limiter.acquire()).release()
        group.cancel_scope.cancel()
    assert ticks >= 20
    limiter.close()


def test_the_key_is_never_stored(tmp_path: Path) -> None:
    import sqlite3

    secret = "sk-canary-fleet-3c9d"
    limiter = DatabaseLimiter(tmp_path / "l.db", secret, base_url="http://x/v1", rpm=5)
    anyio.run(limiter.acquire)
    limiter.close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        rows = db.execute(f"SELECT * FROM {TABLE}").fetchall()
    assert len(rows) == 1 and secret not in repr(rows)
    assert secret.encode() not in (tmp_path / "l.db").read_bytes()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://h/db", "give a SQLite file path"),
        (":memory:", "a file the workers share"),
        ("/nonexistent-dir/x/limits.db", "check that its directory exists"),
        ("postgresql://u:pw-secret@127.0.0.1:1/db", "check that the server is running"),
    ],
)
def test_a_bad_or_unreachable_database_is_a_configuration_error(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as caught:
        DatabaseLimiter(url, "k")
    assert "pw-secret" not in str(caught.value)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is a directory"):
        DatabaseLimiter(tmp_path, "k")
