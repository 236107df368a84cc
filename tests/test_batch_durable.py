"""A durable batch (``agentloop batch --db``) killed with SIGKILL mid-way and run again: every
(id, run) is in RESULTS.jsonl exactly once with the right answer, and the simulator (in
another process than the batch) received no more model calls than a clean batch plus the calls
that were in flight at the kill — finished runs are not redone, unfinished ones resume after
their last committed step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentloop.sim import PolicyContext, SimConfig, SimServer, ToolCall, Turn

STEPS = 3  # tool steps per run, then the answer
TASKS = [{"id": f"t{i}", "task": f"Find the word w{i}.", "answer": f"w{i}"} for i in range(4)]
K = 2
CONCURRENCY = 3
CLEAN_CALLS = len(TASKS) * K * (STEPS + 1)

TOOLS = '''
from agentloop import tool

@tool
def look(query: str) -> str:
    """Look.

    Args:
        query: what.
    """
    return "seen " + query
'''


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONSHOT_")}
    env["MOONSHOT_API_KEY"] = "sk-sim"
    return env


def batch_command(
    sim: SimServer, out: str, runs: int, concurrency: int, *extra: str, db: str = "runs.db"
) -> list[str]:
    """``agentloop batch`` of tasks.jsonl with mytools against ``sim``, durable in ``db``."""
    return [
        sys.executable,
        "-m",
        "agentloop.cli",
        "batch",
        "tasks.jsonl",
        "--out",
        out,
        "--db",
        db,
        "--runs",
        str(runs),
        "--concurrency",
        str(concurrency),
        "--tools",
        "mytools",
        "--base-url",
        sim.base_url,
        *extra,
    ]


def policy(ctx: PolicyContext) -> Turn:
    if ctx.step < STEPS:
        return Turn(reasoning="Looking.", tool_calls=[ToolCall("look", '{"query": "x"}')])
    word = ctx.task.split()[-1].rstrip(".")
    return Turn(reasoning="Found it.", content=word)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(policy=policy, latency=0.15)).run_in_thread() as server:
        yield server


def results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_a_batch_killed_mid_way_resumes_without_redoing_work(
    sim: SimServer, tmp_path: Path
) -> None:
    (tmp_path / "mytools.py").write_text(TOOLS)
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    args = batch_command(sim, "results.jsonl", K, CONCURRENCY)
    env = cli_env()
    out = tmp_path / "results.jsonl"
    child = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        # kill once some runs are recorded and others are part-way: beyond the recorded runs'
        # calls, at least 7 more among 3 runs in flight means some run made 3 calls, so its
        # first two steps were committed (a run commits a step before its next call); 7, not
        # 4, leaves room for a run whose last call is counted but whose line is not written
        while True:
            calls = sim.stats.completions
            done = len(results(out))
            if done >= 2 and calls - done * (STEPS + 1) >= 7:
                break
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the batch never got going"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    at_kill = sim.stats.completions
    recorded = len(results(out))
    assert recorded < len(TASKS) * K

    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    assert again.returncode == 0, again.stderr
    lines = results(out)
    assert out.read_text().endswith("\n")
    assert sorted(Counter((r["id"], r["run"]) for r in lines).values()) == [1] * (len(TASKS) * K)
    assert all(r["correct"] is True and r["stop_reason"] == "completed" for r in lines)
    assert all(r["steps"] == STEPS + 1 for r in lines)
    total = sim.stats.completions
    # no more than a clean batch plus the calls in flight at the kill (one per running run)
    assert total <= CLEAN_CALLS + CONCURRENCY, (total, CLEAN_CALLS)
    # and the unfinished runs were resumed, not restarted: a restart would redo their steps
    restarted = at_kill + (len(TASKS) * K - recorded) * (STEPS + 1)
    assert total < restarted
