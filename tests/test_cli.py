"""The command line, run as a user would (subprocesses against the simulator), the live view's
rendering, and transcripts."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agentloop import Agent, Budget, Usage
from agentloop import events as ev
from agentloop.live import RunView
from agentloop.result import RunResult, StepRecord, ToolCallRecord
from agentloop.sim import SimConfig, SimServer, ToolLoopPolicy
from agentloop.transcript import TranscriptError, TranscriptWriter, load
from tests.conftest import kimi

SNAPSHOTS = Path(__file__).parent / "snapshots"
TOOLS_MODULE = '''
from agentloop import tool

@tool
def word_count(text: str) -> int:
    """Count words.

    Args:
        text: the text.
    """
    return len(text.split())

@tool
async def shout(text: str) -> str:
    """Upper-case a text.

    Args:
        text: the text.
    """
    return text.upper()
'''


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(policy=ToolLoopPolicy(steps=2, parallel=2))).run_in_thread() as server:
        yield server


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mytools.py").write_text(TOOLS_MODULE)
    return tmp_path


def agentloop(*args: str, cwd: Path, key: str | None = "sk-sim", timeout: float = 120) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONSHOT_")}
    if key:
        env["MOONSHOT_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "agentloop.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_shows_the_run_and_exits_0(sim: SimServer, workdir: Path) -> None:
    transcript = workdir / "run.jsonl"
    done = agentloop(
        "run",
        "count the words",
        "--tools",
        "mytools",
        "--base-url",
        sim.base_url,
        "--transcript",
        str(transcript),
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "run: 'count the words' on kimi-k2.6" in out
    assert "  -> word_count(" in out and "  -> shout(" in out
    assert "  <- shout [ok," in out
    assert "stop: completed after 3 steps" in out
    saved = load(transcript)
    assert saved.result is not None and saved.result.ok
    assert saved.header["version"] == 1 and saved.header["task"] == "count the words"
    assert [m["role"] for m in saved.result.messages][:3] == ["user", "assistant", "tool"]
    assert saved.result.messages[1]["reasoning_content"]  # wire messages with reasoning
    assert "sk-sim" not in transcript.read_text()


def test_run_exit_codes_and_json_lines(sim: SimServer, workdir: Path) -> None:
    limited = agentloop(
        "run",
        "count",
        "--tools",
        "mytools:word_count",
        "--base-url",
        sim.base_url,
        "--max-steps",
        "1",
        "--json",
        cwd=workdir,
    )
    assert limited.returncode == 3
    lines = [json.loads(line) for line in limited.stdout.splitlines()]
    assert lines[0]["type"] == "RunStarted" and lines[-1]["type"] == "RunFinished"
    assert any(e["type"] == "LimitHit" and e["reason"] == "max_steps" for e in lines)
    assert lines[-1]["result"]["stop_reason"] == "max_steps"


def test_helpful_errors(sim: SimServer, workdir: Path) -> None:
    no_key = agentloop("run", "hi", cwd=workdir, key=None)
    assert no_key.returncode == 2 and "MOONSHOT_API_KEY is not set" in no_key.stderr
    assert "platform.moonshot" in no_key.stderr
    wrong = agentloop("run", "hi", "--base-url", sim.base_url, cwd=workdir, key="sk-other")
    assert wrong.returncode == 2  # configuration: the key is wrong for this server
    assert "401" in wrong.stderr or "Invalid Authentication" in wrong.stderr
    assert "MOONSHOT_BASE_URL" in wrong.stderr and "sk-other" not in wrong.stderr
    preset = agentloop("run", "hi", "--preset", "browsecmp", cwd=workdir)
    assert preset.returncode == 2 and "valid presets: " in preset.stderr
    assert "browsecomp" in preset.stderr
    module = agentloop("run", "hi", "--tools", "nosuch_tools", cwd=workdir)
    assert module.returncode == 2 and "cannot import tool module 'nosuch_tools'" in module.stderr
    attr = agentloop("run", "hi", "--tools", "mytools:nothing", cwd=workdir)
    assert attr.returncode == 2 and "has no attribute 'nothing'" in attr.stderr


def test_demo_runs_offline_and_replay_renders_it(tmp_path: Path) -> None:
    transcript = tmp_path / "demo.jsonl"
    done = agentloop(
        "demo",
        "How do I compute the median of a list?",
        "--transcript",
        str(transcript),
        cwd=tmp_path,
        key=None,
    )
    assert done.returncode == 0, done.stderr
    assert "  -> search(" in done.stdout and "  -> open(" in done.stdout
    assert "statistics.median" in done.stdout and "stop: completed" in done.stdout
    replay = agentloop("replay", str(transcript), cwd=tmp_path, key=None)
    assert replay.returncode == 0, replay.stderr
    assert "statistics.median" in replay.stdout
    assert "cached" in replay.stdout and "tool time" in replay.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "header", "format": "agentloop-transcript", "version": 99}\n')
    refused = agentloop("replay", str(bad), cwd=tmp_path, key=None)
    assert refused.returncode == 2 and "version 99" in refused.stderr


def test_demo_live_view_under_a_pseudo_terminal(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONSHOT_")}
    env.update(COLUMNS="100", LINES="40", TERM="xterm-256color")
    process = subprocess.Popen(
        [sys.executable, "-m", "agentloop.cli", "demo"],
        stdout=slave,
        stderr=slave,
        stdin=slave,
        env=env,
        cwd=tmp_path,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=60) == 0
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", errors="replace")
    assert "\x1b[" in screen  # a terminal got the styled live view, not plain lines
    assert "agentloop · kimi-k2.6" in screen and "╭" in screen
    assert "textwrap.shorten" in screen and "completed" in screen


def scripted_events() -> list[ev.Event]:
    usage1 = Usage(1_200, 0, 300, 250)
    usage2 = Usage(2_000, 1_200, 120, 60)
    record1 = StepRecord(1, "r1", usage1, "tool_calls", 32_000, 0.0, 0, 0.5)
    record1.tool_calls.append(
        ToolCallRecord("c1", "search", '{"query": "kiwi"}', True, None, 0.012)
    )
    record2 = StepRecord(2, "r2", usage2, "stop", 32_000, 1.5, 1, 0.4)
    total = Usage(3_200, 1_200, 420, 310)
    result = RunResult("Kiwi are flightless.", "completed", [], [record1, record2], total, 0.0031)
    return [
        ev.RunStarted("Tell me about kiwi birds", "kimi-k2.6"),
        ev.StepStarted(1, 32_000),
        ev.ReasoningDelta(1, "I should search.\nThen read the best hit.\nThen answer."),
        ev.ToolCallStarted(1, "c1", "search", '{"query": "kiwi"}'),
        ev.ToolCallFinished(1, "c1", "search", True, None, 0.012, "[1] Kiwi — flightless"),
        ev.StepFinished(1, record1, Usage(1_200, 0, 300, 250), 0.0023),
        ev.StepStarted(2, 32_000),
        ev.Retry(2, 1, "RateLimitError: 429", 1.0),
        ev.ContextEdited(
            2, "clear_tool_results", 90_000, 30_000, "cleared 12 tool results", Usage()
        ),
        ev.TextDelta(2, "Kiwi are flightless."),
        ev.StepFinished(2, record2, total, 0.0031),
        ev.RunFinished(result),
    ]


def render(view: RunView) -> str:
    console = Console(file=io.StringIO(), width=90, record=True, color_system=None, highlight=False)
    console.print(view.render())
    return console.export_text()


def test_live_view_rendering_snapshot() -> None:
    view = RunView(budget=Budget(max_steps=20, max_cost_usd=1.0))
    frames = []
    for event in scripted_events():
        view.feed(event)
        if isinstance(event, ev.ToolCallStarted | ev.RunFinished):
            frames.append(render(view))
    snapshot = "\n--- frame ---\n".join(frames)
    expected = (SNAPSHOTS / "live_view.txt").read_text()
    assert snapshot == expected


def test_transcript_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with TranscriptWriter(path) as writer:
        for event in scripted_events():
            writer.write(event)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["format"] == "agentloop-transcript"
    saved = load(path)
    original = scripted_events()
    assert saved.result is not None
    assert dataclasses.asdict(saved.result) == dataclasses.asdict(original[-1].result)  # type: ignore[union-attr]
    assert [type(e).__name__ for e in saved.events] == [type(e).__name__ for e in original]
    (tmp_path / "x.jsonl").write_text("not json\n")
    with pytest.raises(TranscriptError, match="not JSON"):
        load(tmp_path / "x.jsonl")


@pytest.mark.anyio
async def test_transcript_of_a_real_run_loads_back(tmp_path: Path, sim_factory: Any) -> None:
    server = await sim_factory(policy=ToolLoopPolicy(steps=2))
    from agentloop.cli import load_tools, show_run

    sys.path.insert(0, str(tmp_path))
    (tmp_path / "tools_for_transcript.py").write_text(TOOLS_MODULE)
    try:
        tools = load_tools(["tools_for_transcript"])
    finally:
        sys.path.remove(str(tmp_path))
    agent = Agent(kimi(server), tools=tools)
    path = tmp_path / "run.jsonl"
    result = await show_run(agent, "count", mode="plain", transcript=str(path))
    saved = load(path)
    assert saved.result is not None
    assert dataclasses.asdict(saved.result) == dataclasses.asdict(result)
    reasoning = [e for e in saved.events if isinstance(e, ev.ReasoningDelta)]
    assert len(reasoning) == 3  # merged: one line per step, not one per chunk
