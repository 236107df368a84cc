"""A fleet: three `agentloop batch` workers (real processes) run the same command against one
store and take runs from its queue; one is killed with SIGKILL mid-way and started again under
its name. Every worker's RESULTS.jsonl ends with every (id, run) exactly once, right, and the
simulator got no more model calls than one clean batch plus the calls the killed worker had in
flight: no run was done twice by two workers, none was lost."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentloop.sim import SimConfig, SimServer

from .test_batch_durable import STEPS, TOOLS, batch_command, cli_env, policy, results

TASKS = [{"id": f"t{i}", "task": f"Find the word w{i}.", "answer": f"w{i}"} for i in range(6)]
K = 2
CONCURRENCY = 2
CLEAN_CALLS = len(TASKS) * K * (STEPS + 1)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(policy=policy, latency=0.12)).run_in_thread() as server:
        yield server


def start(
    sim: SimServer, tmp_path: Path, name: str, db: str = "runs.db"
) -> subprocess.Popen[bytes]:
    out = f"results-{name}.jsonl"
    args = batch_command(sim, out, K, CONCURRENCY, "--worker", name, "--plain", db=db)
    return subprocess.Popen(
        args, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(process: subprocess.Popen[bytes]) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()[-3000:]
    return out.decode()


def test_three_workers_share_one_queue_and_survive_a_kill(sim: SimServer, tmp_path: Path) -> None:
    (tmp_path / "mytools.py").write_text(TOOLS)
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    workers = {name: start(sim, tmp_path, name) for name in ("w1", "w2", "w3")}
    try:
        deadline = time.monotonic() + 60
        while sim.stats.completions < CLEAN_CALLS // 3:  # well under way
            assert all(p.poll() is None for p in workers.values())
            assert time.monotonic() < deadline, "the fleet never got going"
            time.sleep(0.01)
        workers["w2"].send_signal(signal.SIGKILL)
        workers["w2"].wait(10)
        workers["w2"] = start(sim, tmp_path, "w2")  # back under its name: takes its runs back
        outputs = {name: finish(p) for name, p in workers.items()}
    finally:
        for p in workers.values():
            if p.poll() is None:
                p.kill()
    everyone = [(t["id"], r) for t in TASKS for r in range(K)]
    for name in workers:
        lines: list[dict[str, Any]] = results(tmp_path / f"results-{name}.jsonl")
        assert sorted(Counter((r["id"], r["run"]) for r in lines).values()) == [1] * len(everyone)
        assert all(r["correct"] is True and r["steps"] == STEPS + 1 for r in lines), name
    # each pair was run once in the whole fleet: no more calls than a clean batch plus those
    # the killed worker had in flight (one per run it was running)
    assert sim.stats.completions <= CLEAN_CALLS + CONCURRENCY, sim.stats.completions
    # the queue spread the runs (the store says who last ran each; the killed worker's runs
    # go back on the queue when it returns, and any worker may take them)
    with sqlite3.connect(tmp_path / "runs.db") as db:
        ran_by = dict(db.execute("select executor_id, count(*) from workflow_status group by 1"))
    assert len(ran_by) >= 2 and set(ran_by) <= {f"agentloop-w-w{i}" for i in (1, 2, 3)}, ran_by
    assert sum(ran_by.values()) == len(everyone)
    assert all("[12/12]" in o for o in outputs.values())


def test_a_fleet_on_postgres(sim: SimServer, tmp_path: Path, postgres_url: str) -> None:
    """Many machines share a Postgres store: the same fleet on it (one worker first, so that
    the database exists before the others connect), every pair once, none run twice."""
    (tmp_path / "mytools.py").write_text(TOOLS)
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    workers = {"p1": start(sim, tmp_path, "p1", postgres_url)}
    try:
        deadline = time.monotonic() + 60
        while sim.stats.completions < 2:
            assert workers["p1"].poll() is None, workers["p1"].stderr
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for name in ("p2", "p3"):
            workers[name] = start(sim, tmp_path, name, postgres_url)
        for p in workers.values():
            finish(p)
    finally:
        for p in workers.values():
            if p.poll() is None:
                p.kill()
    everyone = [(t["id"], r) for t in TASKS for r in range(K)]
    for name in workers:
        lines = results(tmp_path / f"results-{name}.jsonl")
        assert sorted(Counter((r["id"], r["run"]) for r in lines).values()) == [1] * len(everyone)
        assert all(r["correct"] is True for r in lines)
    assert sim.stats.completions == CLEAN_CALLS  # no pair run twice, nothing lost
