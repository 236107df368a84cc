"""Durable runs (agentloop.durable, on DBOS): a run killed with SIGKILL continues after its last
committed step — no finished model call sent again, steps, usage, cost and budgets continuing —
and a paused (cancelled) run resumes. Real worker processes, real HTTP to the simulator, DBOS on
a real SQLite file (and on Postgres where the server can be started)."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentloop import Agent, Budget, tool
from agentloop import events as ev
from agentloop.durable import DurableRunError, DurableStore
from agentloop.errors import ConfigurationError
from agentloop.models import KimiModel
from agentloop.sim import SimServer, ToolLoopPolicy

from .durable_worker import KEY

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]
WORKER = Path(__file__).with_name("durable_worker.py")
STEPS = 5  # the policy's tool steps; the answer is one more


async def durable_sim(sim_factory: SimFactory) -> SimServer:
    server: SimServer = await sim_factory(
        policy=ToolLoopPolicy(steps=STEPS), strict=True, api_keys={KEY: "ai"}
    )
    return server


def events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


async def worker(sim: SimServer, db: Path, run_id: str, log: Path, *extra: str) -> Any:
    """Run the worker to its end; its result."""
    result = await anyio.run_process(
        [sys.executable, str(WORKER), sim.base_url, str(db), run_id, str(log), *extra],
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


async def kill_when(
    sim: SimServer,
    db: Path,
    run_id: str,
    log: Path,
    ready: Callable[[list[dict[str, Any]]], bool],
    *extra: str,
) -> None:
    """Start the worker and SIGKILL it as soon as its event log satisfies ``ready``."""
    process = await anyio.open_process(
        [sys.executable, str(WORKER), sim.base_url, str(db), run_id, str(log), *extra]
    )
    try:
        with anyio.fail_after(60):
            while not ready(events(log)):
                assert process.returncode is None, "the worker ended before the kill"
                await anyio.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()


def tool_running(log: Path, step: int) -> Callable[[list[dict[str, Any]]], bool]:
    """Step ``step``'s tool has begun its work (it sleeps after writing its query)."""
    calls = Path(str(log) + ".tool")

    def ready(_: list[dict[str, Any]]) -> bool:
        return calls.exists() and len(calls.read_text().splitlines()) >= step

    return ready


async def test_sigkill_mid_tool_resumes_after_the_last_committed_step(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    clean_sim = await durable_sim(sim_factory)
    clean = await worker(clean_sim, tmp_path / "clean.db", "r", tmp_path / "clean.log")
    assert clean["stop_reason"] == "completed" and clean["steps"] == STEPS + 1
    clean_calls = clean_sim.stats.completions

    sim = await durable_sim(sim_factory)
    db, log = tmp_path / "runs.db", tmp_path / "run.log"
    await kill_when(sim, db, "r", log, tool_running(log, 3))
    before = sim.stats.completions
    assert before == 3  # three model calls answered, the third step's tool running
    resumed = await worker(sim, db, "r", log)

    # the same run as the clean one: steps, usage and cost continue, they do not restart
    assert resumed["stop_reason"] == "completed"
    assert resumed["steps"] == clean["steps"]
    assert resumed["usage"] == clean["usage"]
    assert resumed["cost"] == pytest.approx(clean["cost"])
    assert resumed["output"] == clean["output"]
    # no finished model call was sent again (the kill came between calls)
    assert sim.stats.completions == clean_calls
    # the tool call in flight at the kill ran again: the third query twice, the others once
    queries = (tmp_path / "run.log.tool").read_text().splitlines()
    assert len(queries) == STEPS + 1 and queries[2] == queries[3]
    # the resumed process replayed steps 1-2 (and 3's model call) without deltas for them
    second = events(log)[len(events(log)) - _tail(events(log)) :]
    deltas = {e["step"] for e in second if e["event"] in ("ReasoningDelta", "TextDelta")}
    assert deltas and min(deltas) == 4
    assert [e["step"] for e in second if e["event"] == "StepFinished"] == list(
        range(1, STEPS + 2)
    )


def _tail(log: list[dict[str, Any]]) -> int:
    """How many events the last process wrote (from its RunStarted)."""
    starts = [i for i, e in enumerate(log) if e["event"] == "RunStarted"]
    return len(log) - starts[-1]


async def test_a_tool_not_safe_to_repeat_is_answered_as_interrupted(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    sim = await durable_sim(sim_factory)
    db, log = tmp_path / "runs.db", tmp_path / "run.log"
    await kill_when(sim, db, "u", log, tool_running(log, 2), "--unsafe")
    resumed = await worker(sim, db, "u", log, "--unsafe")
    assert resumed["stop_reason"] == "completed"
    queries = (tmp_path / "run.log.tool").read_text().splitlines()
    assert len(queries) == STEPS and len(set(queries)) == STEPS  # the interrupted one not rerun
    assert sim.stats.completions == STEPS + 1
    interrupted = [t for t in resumed["tools"] if "outcome is unknown" in t]
    assert len(interrupted) == 1 and resumed["tools"].index(interrupted[0]) == 1


async def test_budgets_count_what_was_spent_before_the_crash(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    # a billed-token budget that stops the clean run part-way: each step must leave room for
    # a full 32K-token step and a final answer, so the limit bites after a few small steps
    limit = 81_200
    clean_sim = await durable_sim(sim_factory)
    args = ("--billed", str(limit))
    clean = await worker(clean_sim, tmp_path / "c.db", "b", tmp_path / "c.log", *args)
    assert clean["stop_reason"] == "token_budget" and 3 <= clean["steps"] < STEPS

    sim = await durable_sim(sim_factory)
    db, log = tmp_path / "runs.db", tmp_path / "run.log"
    await kill_when(sim, db, "b", log, tool_running(log, 2), *args)
    resumed = await worker(sim, db, "b", log, *args)
    assert resumed["stop_reason"] == "token_budget"
    assert resumed["steps"] == clean["steps"] and resumed["usage"] == clean["usage"]
    assert resumed["usage"] <= limit
    assert sim.stats.completions == clean_sim.stats.completions


async def test_no_secret_is_written_to_the_store(sim_factory: SimFactory, tmp_path: Path) -> None:
    sim = await durable_sim(sim_factory)
    db = tmp_path / "runs.db"
    await worker(sim, db, "s", tmp_path / "s.log")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("runs.db*"))  # noqa: ASYNC240
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        cells = [c for t in tables for row in conn.execute(f"select * from {t}") for c in row]
    assert_no_secret(raw, cells)


def assert_no_secret(raw: bytes, cells: list[Any]) -> None:
    """The store holds the run and never the key: not in the file's bytes, not in any cell,
    nor in any cell once base64-decoded and unpickled (how DBOS keeps records)."""
    corpus = [raw]
    for cell in cells:
        if isinstance(cell, bytes | str):
            text = cell.encode() if isinstance(cell, str) else cell
            corpus.append(text)
            try:
                decoded = base64.b64decode(text, validate=True)
                corpus.append(decoded)
                corpus.append(repr(pickle.loads(decoded)).encode())
            except Exception:
                pass
    everything = b"\n".join(corpus)
    assert b"done: do the things" in everything  # the records were read, decoded
    for form in (KEY.encode(), KEY.encode("utf-16-le"), b"Bearer ", b"Authorization"):
        assert form not in everything, form


# -- in one process ----------------------------------------------------------------------------
calls: list[str] = []


@tool
async def lookup(query: str) -> str:
    """Look a thing up.

    Args:
        query: what to look for.
    """
    calls.append(query)
    await anyio.sleep(0.05)
    return f"hits for {query}"


async def test_finished_runs_are_returned_from_the_store_and_cancelled_ones_resume(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    sim = await durable_sim(sim_factory)
    agent = Agent(KimiModel(api_key=KEY, base_url=sim.base_url, rpm=None), [lookup])
    calls.clear()
    async with DurableStore(tmp_path / "runs.db") as store:
        first = await agent.run("find x", run_id="x", store=store)
        assert first.stop_reason == "completed" and await store.status("x") == "finished"
        sent = sim.stats.completions
        again = await agent.run("find x", run_id="x", store=store)
        assert sim.stats.completions == sent and again.output == first.output
        assert len(calls) == STEPS

        async with agent.stream("find y", run_id="y", store=store) as run:
            async for event in run:
                if isinstance(event, ev.ToolCallFinished) and event.step == 2:
                    run.cancel()
        assert run.result is not None and run.result.stop_reason == "cancelled"
        assert await store.status("y") == "running"
        resumed = await agent.run("find y", run_id="y", store=store)
        assert resumed.stop_reason == "completed" and len(resumed.steps) == STEPS + 1
        assert sim.stats.completions == sent + STEPS + 1  # nothing sent twice
        assert len(calls) == 2 * STEPS

        with pytest.raises(ConfigurationError, match="different task"):
            await agent.run("find z", run_id="y", store=store)
        with pytest.raises(ConfigurationError, match="run_id= and store="):
            await agent.run("find z", run_id="y")


async def test_deadline_counts_working_time_before_the_pause(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    sim = await durable_sim(sim_factory)

    @tool
    async def slow(query: str) -> str:
        """Slow.

        Args:
            query: what.
        """
        await anyio.sleep(0.3)
        return "ok"

    model = KimiModel(api_key=KEY, base_url=sim.base_url, rpm=None)
    agent = Agent(model, [slow], budget=Budget(deadline_s=1.0))
    async with DurableStore(tmp_path / "runs.db") as store:
        async with agent.stream("t", run_id="d", store=store) as run:
            async for event in run:
                if isinstance(event, ev.StepFinished) and event.step == 2:
                    run.cancel()
        assert run.result is not None and run.result.stop_reason == "cancelled"
        await anyio.sleep(1.2)  # downtime longer than the deadline: not counted
        began = anyio.current_time()
        resumed = await agent.run("t", run_id="d", store=store)
        took = anyio.current_time() - began
    assert resumed.stop_reason == "deadline"
    worked = sum(s.duration_s for s in resumed.steps)
    assert 0.55 < worked <= 1.1  # the steps before the pause count toward the second
    assert took < 0.8  # the resumed part had only what the first part left


async def test_store_errors_are_specific(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="directory"):
        DurableStore(tmp_path)
    with pytest.raises(ConfigurationError, match="postgresql"):
        DurableStore("mysql://x")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigurationError, match="SQLite"):
        DurableStore(tmp_path / "junk.db")
    assert DurableRunError.__mro__[1].__name__ == "AgentloopError"


async def test_a_finished_run_asked_again_replays_its_events_and_retries(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    from agentloop.sim import FaultPlan

    sim = await sim_factory(
        policy=ToolLoopPolicy(steps=2),
        strict=True,
        api_keys={KEY: "ai"},
        faults=FaultPlan(schedule={1: "500"}),
    )
    agent = Agent(KimiModel(api_key=KEY, base_url=sim.base_url, rpm=None), [lookup])
    async with DurableStore(tmp_path / "runs.db") as store:
        first = await agent.run("find x", run_id="e", store=store)
        seen: list[ev.Event] = []
        async with agent.stream("find x", run_id="e", store=store) as run:
            async for event in run:
                seen.append(event)
        with pytest.raises(ConfigurationError, match="surrounding"):
            await agent.run("find x", run_id=" e", store=store)
    assert first.steps[0].retries == 1
    assert run.result is not None and run.result.steps[0].retries == 1  # kept in the record
    kinds = [type(e).__name__ for e in seen]
    assert kinds.count("ToolCallStarted") == kinds.count("ToolCallFinished") == 2
    finished = [e for e in seen if isinstance(e, ev.ToolCallFinished)]
    assert all(e.result.startswith("hits for") for e in finished)


async def test_the_same_run_twice_at_once_in_one_process_is_refused(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    sim = await durable_sim(sim_factory)
    agent = Agent(KimiModel(api_key=KEY, base_url=sim.base_url, rpm=None), [lookup])
    outcomes: list[Any] = []

    async def one() -> None:
        try:
            outcomes.append(await agent.run("find x", run_id="twice", store=store))
        except ConfigurationError as exc:
            outcomes.append(exc)

    async with DurableStore(tmp_path / "runs.db") as store, anyio.create_task_group() as group:
        group.start_soon(one)
        group.start_soon(one)
    assert sorted(type(o).__name__ for o in outcomes) == ["ConfigurationError", "RunResult"]
