"""`agentloop run` asks on the terminal before a tool call that needs approval (yes, no, all)
and `--yes` approves them all; real processes against the simulator on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentloop.sim import SimConfig, SimServer, ToolLoopPolicy

TOOLS = '''
from pathlib import Path

from agentloop import tool


@tool(needs_approval=True)
def remove(name: str) -> str:
    """Remove a thing.

    Args:
        name: the thing.
    """
    with Path("removed.txt").open("a") as f:
        f.write(name + "\\n")
    return "removed " + name
'''


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(policy=ToolLoopPolicy(steps=2))).run_in_thread() as server:
        yield server


def run(
    sim: SimServer, tmp_path: Path, *extra: str, answers: str = ""
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "mytools.py").write_text(TOOLS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONSHOT_")}
    env["MOONSHOT_API_KEY"] = "sk-sim"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agentloop.cli",
            "run",
            "tidy up",
            "--tools",
            "mytools",
            "--base-url",
            sim.base_url,
            "--plain",
            *extra,
        ],
        cwd=tmp_path,
        env=env,
        input=answers,
        capture_output=True,
        text=True,
        timeout=60,
    )


def removed(tmp_path: Path) -> list[str]:
    path = tmp_path / "removed.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_yes_runs_the_call_and_no_rejects_it(sim: SimServer, tmp_path: Path) -> None:
    done = run(sim, tmp_path, answers="y\nn\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("needs approval") == 2
    assert len(removed(tmp_path)) == 1  # the first approved, the second rejected


def test_all_and_yes_approve_the_rest(sim: SimServer, tmp_path: Path) -> None:
    done = run(sim, tmp_path, answers="a\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("needs approval") == 1 and len(removed(tmp_path)) == 2
    (tmp_path / "removed.txt").unlink()
    done = run(sim, tmp_path, "--yes")
    assert done.returncode == 0 and "needs approval" not in done.stderr
    assert len(removed(tmp_path)) == 2


def test_no_answer_rejects(sim: SimServer, tmp_path: Path) -> None:
    done = run(sim, tmp_path, answers="")
    assert done.returncode == 0, done.stderr
    assert "no answer: rejected" in done.stderr and removed(tmp_path) == []
