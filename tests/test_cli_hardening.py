"""The command line under bad input and interruptions (issue 14), run as a user would: real
subprocesses and pseudo-terminals against the simulator."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentloop import Usage
from agentloop import events as ev
from agentloop.result import RunResult, StepRecord
from agentloop.sim import SimConfig, SimServer, ToolLoopPolicy
from agentloop.transcript import TranscriptError, TranscriptWriter, load

from .test_cli import TOOLS_MODULE

STUBBORN_MODULE = '''
import anyio
from agentloop import tool

@tool(timeout_s=120)
async def stubborn(text: str) -> str:
    """A tool that will not be interrupted.

    Args:
        text: the text.
    """
    with anyio.CancelScope(shield=True):
        await anyio.sleep(60)
    return text
'''

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][AB012]|\r")


def child_env(key: str | None = "sk-sim", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONSHOT_")}
    if key:
        env["MOONSHOT_API_KEY"] = key
    env.update(extra)
    return env


def agentloop(*args: str, cwd: Path, key: str | None = "sk-sim", timeout: float = 60) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "agentloop.cli", *args],
        cwd=cwd,
        env=child_env(key),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mytools.py").write_text(TOOLS_MODULE)
    (tmp_path / "stubborn.py").write_text(STUBBORN_MODULE)
    return tmp_path


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(policy=ToolLoopPolicy(steps=2, parallel=2))).run_in_thread() as server:
        yield server


@pytest.fixture
def slow_sim() -> Iterator[SimServer]:
    """A run of 40 steps, each answered after 0.3 s and streamed slowly: long enough to stop."""
    config = SimConfig(
        policy=ToolLoopPolicy(steps=40), latency=0.3, batch_delay=0.02, chunk_chars=8
    )
    with SimServer(config).run_in_thread() as server:
        yield server


class Child:
    """A CLI child process whose stdout is read line by line in the background."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentloop.cli", *args],
            cwd=cwd,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} never came; got {''.join(self.seen)!r}")

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        code = self.process.wait(timeout=timeout)
        time.sleep(0.1)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        assert self.process.stderr is not None
        return code, "".join(self.seen), self.process.stderr.read()


def assert_finished_cancelled(transcript: Path) -> None:
    last = json.loads(transcript.read_text().splitlines()[-1])
    assert last["type"] == "RunFinished"
    assert last["result"]["stop_reason"] == "cancelled"
    saved = load(transcript)
    assert saved.result is not None and saved.result.stop_reason == "cancelled"


# -- signals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_prints_the_summary_and_finishes_the_transcript(
    slow_sim: SimServer, workdir: Path, sig: int, code: int
) -> None:
    transcript = workdir / "run.jsonl"
    child = Child(
        [
            *("run", "count", "--tools", "mytools", "--base-url", slow_sim.base_url),
            *("--transcript", str(transcript)),
        ],
        workdir,
    )
    child.wait_for("step 2 (budget")
    child.process.send_signal(sig)
    returncode, out, err = child.finish()
    assert returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "stop: cancelled after" in out
    assert_finished_cancelled(transcript)


def test_a_second_ctrl_c_exits_at_once(slow_sim: SimServer, workdir: Path) -> None:
    child = Child(["run", "wait", "--tools", "stubborn", "--base-url", slow_sim.base_url], workdir)
    child.wait_for("-> stubborn(")
    child.process.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert child.process.poll() is None  # the first one waits for the (shielded) tool
    started = time.monotonic()
    child.process.send_signal(signal.SIGINT)
    returncode, _, err = child.finish(timeout=10)
    assert returncode == 130, err
    assert time.monotonic() - started < 5
    assert "Traceback" not in err


def read_pty(master: int, process: subprocess.Popen[bytes], until: str | None = None) -> str:
    """What the child wrote to its terminal, until it exits (or ``until`` shows up)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if until and until in ANSI.sub("", b"".join(chunks).decode(errors="replace")):
                break
        elif process.poll() is not None:
            break
    return ANSI.sub("", b"".join(chunks).decode("utf-8", errors="replace"))


def in_pty(args: list[str], cwd: Path, **env: str) -> tuple[int, subprocess.Popen[bytes]]:
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "agentloop.cli", *args],
        stdout=slave,
        stderr=slave,
        stdin=slave,
        env=child_env(COLUMNS="160", LINES="50", TERM="xterm-256color", **env),
        cwd=cwd,
    )
    os.close(slave)
    return master, process


def test_ctrl_c_in_the_live_view(slow_sim: SimServer, workdir: Path) -> None:
    transcript = workdir / "run.jsonl"
    master, process = in_pty(
        [
            *("run", "count", "--tools", "mytools", "--base-url", slow_sim.base_url),
            *("--transcript", str(transcript)),
        ],
        workdir,
    )
    read_pty(master, process, until="step 2")
    process.send_signal(signal.SIGINT)
    screen = read_pty(master, process)
    assert process.wait(timeout=30) == 130
    os.close(master)
    assert "cancelled" in screen and "Traceback" not in screen
    assert_finished_cancelled(transcript)


# -- flags -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["run", "x", "--rpm", "-5"], "--rpm"),
        (["run", "x", "--rpm", "0"], "--rpm"),
        (["sim", "--port", "-1"], "--port"),
        (["sim", "--port", "70000"], "--port"),
        (["sim", "--rpm", "-1"], "--rpm"),
        (["run", "x", "--max-steps", "-1"], "--max-steps"),
        (["run", "x", "--per-step-tokens", "0"], "--per-step-tokens"),
        (["run", "x", "--total-tokens", "-3"], "--total-tokens"),
        (["run", "x", "--max-cost-usd", "-1"], "--max-cost-usd"),
        (["run", "x", "--base-url", "not a url"], "--base-url"),
        (["run", "x", "--base-url", "ftp://example.com/v1"], "--base-url"),
    ],
)
def test_bad_flag_values_get_one_line_and_exit_2(workdir: Path, args: list[str], flag: str) -> None:
    started = time.monotonic()
    done = agentloop(*args, cwd=workdir, timeout=30)
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 10
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert flag in lines[0] and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_bad_base_url_from_the_environment_is_refused(workdir: Path) -> None:
    env = child_env(MOONSHOT_BASE_URL="localhost:8765")
    done = subprocess.run(
        [sys.executable, "-m", "agentloop.cli", "run", "x"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "MOONSHOT_BASE_URL" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_rejected_key_exits_2_and_says_so_once(sim: SimServer, workdir: Path) -> None:
    done = agentloop("run", "hi", "--base-url", sim.base_url, cwd=workdir, key="sk-other")
    assert done.returncode == 2
    both = done.stdout + done.stderr
    assert both.count("Invalid Authentication") == 1
    assert "agentloop run: 401" in done.stderr and "--base-url" in done.stderr
    assert not any(line.strip() == "answer:" for line in done.stdout.splitlines())
    assert "stop: error" in done.stdout


def test_the_missing_key_message_speaks_to_a_cli_user(workdir: Path) -> None:
    done = agentloop("run", "hi", cwd=workdir, key=None)
    assert done.returncode == 2
    assert "api_key=" not in done.stderr
    assert "MOONSHOT_API_KEY is not set" in done.stderr and "export MOONSHOT_API_KEY" in done.stderr
    assert "sk-sim" in done.stderr and "agentloop sim" in done.stderr  # the simulator's way
    assert "platform.moonshot" in done.stderr


def test_the_simulator_says_how_to_point_a_run_at_it(workdir: Path) -> None:
    child = Child(["sim", "--port", "0"], workdir)
    try:
        child.wait_for("point a run at it", timeout=15)
    finally:
        child.process.send_signal(signal.SIGINT)
        assert child.process.wait(timeout=10) == 0
    banner = "".join(child.seen)
    assert "MOONSHOT_API_KEY=sk-sim" in banner and "--base-url http://127.0.0.1:" in banner


# -- --tools ---------------------------------------------------------------------------------
def test_tools_takes_one_value_so_the_task_may_follow_it(sim: SimServer, workdir: Path) -> None:
    done = agentloop(
        "run", "--base-url", sim.base_url, "--tools", "mytools", "count the words", cwd=workdir
    )
    assert done.returncode == 0, done.stderr
    assert "run: 'count the words'" in done.stdout and "-> shout(" in done.stdout
    both = agentloop(
        "run",
        "count",
        "--tools",
        "mytools:word_count",
        "--tools",
        "mytools:shout",
        "--base-url",
        sim.base_url,
        cwd=workdir,
    )
    assert both.returncode == 0, both.stderr
    assert "-> word_count(" in both.stdout and "-> shout(" in both.stdout


# -- replay ----------------------------------------------------------------------------------
HEADER = '{"type": "header", "format": "agentloop-transcript", "version": 1, "task": "t"}\n'
DAMAGED = {
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00",
    "array header": b'["header"]\n',
    "array line": (HEADER + '["StepStarted", 1]\n').encode(),
    "number line": (HEADER + "42\n").encode(),
    "event missing fields": (HEADER + '{"type": "StepStarted"}\n').encode(),
    "tool event missing fields": (HEADER + '{"type": "ToolCallFinished", "step": 1}\n').encode(),
    "result missing fields": (
        HEADER + '{"type": "RunFinished", "result": {"output": "x"}}\n'
    ).encode(),
    "result not an object": (HEADER + '{"type": "RunFinished", "result": []}\n').encode(),
    "record missing fields": (
        HEADER + '{"type": "StepFinished", "step": 1, "record": {"step": 1}, "usage_so_far": {},'
        ' "cost_so_far": 0}\n'
    ).encode(),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_replay_of_a_damaged_file_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    path = tmp_path / "damaged.jsonl"
    path.write_bytes(DAMAGED[case])
    with pytest.raises(TranscriptError):
        load(path)
    done = agentloop("replay", str(path), cwd=tmp_path, key=None)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentloop replay: "), done.stderr
    assert "damaged.jsonl" in lines[0]


def long_transcript(path: Path) -> str:
    arguments = json.dumps({"query": "a query " * 12})
    usage = Usage(1_000, 0, 200, 50)
    record = StepRecord(1, "r1", usage, "stop", 32_000, 0.0, 0, 0.1)
    result = RunResult("Done: the final answer.", "completed", [], [record], usage, 0.001)
    events: list[ev.Event] = [
        ev.RunStarted("a task", "kimi-k2.6"),
        ev.StepStarted(1, 32_000),
        ev.ReasoningDelta(1, "First I think about the query carefully."),
        ev.ToolCallStarted(1, "c1", "search", arguments),
        ev.ToolCallFinished(1, "c1", "search", True, None, 0.01, "[1] hit"),
        ev.StepFinished(1, record, usage, 0.001),
        ev.RunFinished(result),
    ]
    with TranscriptWriter(path) as writer:
        for event in events:
            writer.write(event)
    return f"  -> search({arguments})"


def test_piped_replay_is_not_wrapped_and_each_flag_means_one_thing(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    call_line = long_transcript(path)
    assert len(call_line) > 100
    plain = agentloop("replay", str(path), "--plain", cwd=tmp_path, key=None)
    assert plain.returncode == 0, plain.stderr
    assert call_line in plain.stdout.splitlines()
    default = agentloop("replay", str(path), cwd=tmp_path, key=None)
    summary = agentloop("replay", str(path), "--summary", cwd=tmp_path, key=None)
    assert default.returncode == summary.returncode == 0
    assert call_line in default.stdout.splitlines()  # the run as it went, then the summary
    assert "Done: the final answer." in default.stdout and "tool time" in default.stdout
    assert call_line not in summary.stdout and "-> search(" not in summary.stdout
    assert "Done: the final answer." in summary.stdout and "tool time" in summary.stdout
    reasoning = agentloop(
        "replay", str(path), "--plain", "--show-reasoning", cwd=tmp_path, key=None
    )
    assert "First I think about the query carefully." in reasoning.stdout
    assert "First I think" not in plain.stdout


def test_replay_summary_is_the_same_on_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    long_transcript(path)
    master, process = in_pty(["replay", str(path), "--summary"], tmp_path)
    screen = read_pty(master, process)
    assert process.wait(timeout=30) == 0
    os.close(master)
    assert "-> search(" not in screen
    assert "Done: the final answer." in screen and "tool time" in screen
    master, process = in_pty(["replay", str(path)], tmp_path)
    screen = read_pty(master, process)
    assert process.wait(timeout=30) == 0
    os.close(master)
    assert "-> search(" in screen and "tool time" in screen


def test_run_show_reasoning_piped_prints_the_reasoning(sim: SimServer, workdir: Path) -> None:
    done = agentloop(
        "run",
        "count",
        "--tools",
        "mytools",
        "--base-url",
        sim.base_url,
        "--show-reasoning",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    assert "Step 1: to answer I will call" in done.stdout
    assert "I have what I need and can answer now." in done.stdout
    quiet = agentloop("run", "count", "--tools", "mytools", "--base-url", sim.base_url, cwd=workdir)
    assert "Step 1: to answer I will call" not in quiet.stdout


# -- the live view ---------------------------------------------------------------------------
def test_the_live_view_shows_every_step_and_the_reasoning_when_asked(tmp_path: Path) -> None:
    master, process = in_pty(["demo", "--show-reasoning"], tmp_path)
    screen = read_pty(master, process)
    assert process.wait(timeout=60) == 0
    os.close(master)
    for n in (1, 2, 3):
        assert f"step {n}:" in screen, screen
    assert "I should search the collection" in screen  # step 1's reasoning
    assert "I will read them" in screen  # step 2's
    master, process = in_pty(["demo"], tmp_path)
    quiet = read_pty(master, process)
    assert process.wait(timeout=60) == 0
    os.close(master)
    for n in (1, 2, 3):
        assert f"step {n}:" in quiet, quiet
    assert "textwrap.shorten" in quiet and "completed" in quiet
