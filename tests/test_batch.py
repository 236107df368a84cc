"""Batch evaluation (``agentloop.batch``, ``agentloop batch``) over real HTTP against the
simulator on 127.0.0.1: result lines, avg@k / pass@k, resuming without new model calls, a torn
last line, bad task files, the JSON summary, the command line's exit codes and Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import agentloop
from agentloop import Budget, ConfigurationError, tool
from agentloop.batch import (
    Progress,
    abatch,
    exact_match,
    load_tasks,
    normalise,
    prepare,
    run_id,
)
from agentloop.batch_view import render_progress, run_line, summary_table
from agentloop.budget import PRESETS
from agentloop.presets import SAMPLING, sampling
from agentloop.sim import FaultPlan, PolicyContext, SimConfig, SimServer, ToolCall, Turn
from tests.conftest import kimi

TASKS = [
    {"id": "capital", "task": "What is the capital of France?", "answer": "Paris"},
    {"id": "coin", "task": "Flip a coin.", "answer": "heads"},
    {"id": 7, "task": "A hard sum (use a tool).", "answer": "42"},
]
K = 2
# capital: both runs right (1.0); coin: one of two (0.5); 7: none (0.0)
AVG_AT_K = (1.0 + 0.5 + 0.0) / 3
PASS_AT_K = 2 / 3
# model calls of a clean 3-by-2 batch: one per run, and one more for each run of the tool task
CLEAN_CALLS = 3 * K + K

TOOLS_MODULE = '''
from agentloop import tool

@tool
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: the first.
        b: the second.
    """
    return a + b
'''


@tool
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: the first.
        b: the second.
    """
    return a + b


class AnswerPolicy:
    """Answers each task the same way every time, except the coin, which alternates heads and
    tails across calls; the tool task calls the first tool it is offered, then answers wrong."""

    def __init__(self) -> None:
        self.flips = 0
        self.lock = threading.Lock()

    def __call__(self, ctx: PolicyContext) -> Turn:
        task = ctx.task
        if "capital" in task:
            return Turn(reasoning="Easy.", content="**Paris.**")
        if "coin" in task:
            with self.lock:
                self.flips += 1
                side = "heads" if self.flips % 2 else "tails"
            return Turn(reasoning="Flipping.", content=f'"{side}"')
        names = ctx.function_names()
        if names and ctx.step == 0:
            return Turn(
                reasoning="I will add.", tool_calls=[ToolCall(names[0], '{"a": 40, "b": 1}')]
            )
        return Turn(reasoning="Done.", content="41")


def write_tasks(path: Path, tasks: list[dict[str, Any]] = TASKS) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "the results file ends mid-line"
    return [json.loads(line) for line in text.splitlines()]


def pairs(path: Path) -> list[tuple[str, int]]:
    return [(str(r["id"]), r["run"]) for r in lines(path)]


# -- from Python ---------------------------------------------------------------------------------
async def run_batch(sim: SimServer, tasks: Path, out: Path, **options: Any) -> Any:
    model = kimi(sim)
    try:
        options.setdefault("runs", K)
        options.setdefault("concurrency", 3)
        options.setdefault("tools", [add])
        return await abatch(tasks, out, model=model, **options)
    finally:
        await model.aclose()


@pytest.mark.anyio
async def test_a_batch_writes_one_line_per_run_and_scores_them(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = await sim_factory(policy=AnswerPolicy())
    out = tmp_path / "results.jsonl"
    summary = await run_batch(sim, write_tasks(tmp_path / "tasks.jsonl"), out)

    records = lines(out)
    assert sorted(pairs(out)) == sorted((str(t["id"]), r) for t in TASKS for r in range(K))
    assert sim.stats.completions == CLEAN_CALLS
    by_pair = {(str(r["id"]), r["run"]): r for r in records}
    for record in records:
        assert record["run_id"] == f"{record['id']}#{record['run']}"
        assert record["stop_reason"] == "completed" and record["error"] is None
        usage = record["usage"]
        assert usage["total"] == usage["input"] + usage["output"] > 0
        assert usage["estimated"] is False and record["cost_usd"] > 0
        # the settings the run was made with, so the file says how to reproduce it
        assert (record["model"], record["preset"]) == ("kimi-k2.6", None)
        assert (record["temperature"], record["top_p"], record["thinking"]) == (1.0, 0.95, True)
        assert record["budget"]["max_steps"] == Budget().max_steps
    assert all(by_pair[("capital", r)]["correct"] for r in range(K))  # "**Paris.**" ~ "Paris"
    assert sorted(by_pair[("coin", r)]["correct"] for r in range(K)) == [False, True]
    assert [by_pair[("7", r)]["steps"] for r in range(K)] == [2, 2]
    assert not any(by_pair[("7", r)]["correct"] for r in range(K))
    assert isinstance(by_pair[("7", 0)]["id"], int)  # the id as the task file gave it

    assert summary.avg_at_k == pytest.approx(AVG_AT_K)
    assert summary.pass_at_k == pytest.approx(PASS_AT_K)
    assert summary.scored_tasks == 3 and summary.complete
    assert (summary.ran, summary.skipped, summary.cancelled) == (6, 0, 0)
    assert summary.stop_reasons == {"completed": 6}
    assert summary.usage["total"] == sum(r["usage"]["total"] for r in records)
    assert summary.usage["total"] == sim.stats.prompt_tokens + sim.stats.completion_tokens
    assert summary.cost_usd == pytest.approx(sum(r["cost_usd"] for r in records))

    # the same batch again: every pair is there, so nothing runs and nothing is written
    before = out.read_bytes()
    again = await run_batch(sim, tmp_path / "tasks.jsonl", out)
    assert sim.stats.completions == CLEAN_CALLS
    assert out.read_bytes() == before
    assert (again.ran, again.skipped, again.recorded) == (0, 6, 6)
    assert again.avg_at_k == pytest.approx(AVG_AT_K)


@pytest.mark.anyio
async def test_more_runs_later_do_only_the_new_pairs(sim_factory: Any, tmp_path: Path) -> None:
    sim = await sim_factory(policy=AnswerPolicy())
    tasks, out = write_tasks(tmp_path / "tasks.jsonl"), tmp_path / "results.jsonl"
    first = await run_batch(sim, tasks, out, runs=1)
    assert first.recorded == 3 and sim.stats.completions == 4
    second = await run_batch(sim, tasks, out, runs=3)
    assert (second.skipped, second.ran, second.recorded) == (3, 6, 9)
    assert sim.stats.completions == 4 * 3
    assert sorted(Counter(pairs(out)).values()) == [1] * 9


@pytest.mark.anyio
async def test_a_torn_last_line_is_dropped_and_that_run_done_again(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = await sim_factory(policy=AnswerPolicy())
    tasks, out = write_tasks(tmp_path / "tasks.jsonl"), tmp_path / "results.jsonl"
    await run_batch(sim, tasks, out, concurrency=1)
    whole = out.read_bytes()
    last = whole[:-1].rsplit(b"\n", 1)[1] + b"\n"
    torn = whole[: len(whole) - len(last) // 2]  # a crash half way through the last write
    out.write_bytes(torn)
    torn_pair = json.loads(last)
    calls = sim.stats.completions

    summary = await run_batch(sim, tasks, out)
    assert summary.repaired_bytes == len(torn) - (len(whole) - len(last))
    assert (summary.ran, summary.recorded) == (1, 6)
    assert sim.stats.completions == calls + (2 if torn_pair["id"] == 7 else 1)
    assert sorted(Counter(pairs(out)).values()) == [1] * 6
    assert out.read_bytes()[: len(whole) - len(last)] == whole[: len(whole) - len(last)]


@pytest.mark.anyio
async def test_a_scorer_can_be_plugged_in(sim_factory: Any, tmp_path: Path) -> None:
    sim = await sim_factory(policy=AnswerPolicy())
    seen: list[tuple[str, Any]] = []

    def scorer(output: str, answer: Any) -> bool:
        seen.append((output, answer))
        return output == "41" and answer == "42"  # off by one counts, here

    summary = await run_batch(
        sim, write_tasks(tmp_path / "t.jsonl"), tmp_path / "r.jsonl", scorer=scorer
    )
    assert len(seen) == 6 and ("41", "42") in seen
    assert summary.avg_at_k == pytest.approx(1 / 3) and summary.pass_at_k == pytest.approx(1 / 3)


@pytest.mark.anyio
async def test_runs_without_answers_are_not_scored(sim_factory: Any, tmp_path: Path) -> None:
    sim = await sim_factory(policy=AnswerPolicy())
    tasks = write_tasks(tmp_path / "t.jsonl", [{"id": "a", "task": "capital?"}])
    summary = await run_batch(sim, tasks, tmp_path / "r.jsonl")
    assert all("correct" not in r and "answer" not in r for r in lines(tmp_path / "r.jsonl"))
    assert summary.avg_at_k is None and summary.pass_at_k is None and summary.scored_tasks == 0


@pytest.mark.anyio
async def test_at_most_n_runs_are_in_flight_and_429s_are_counted(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = await sim_factory(
        policy=AnswerPolicy(),
        latency=0.15,
        faults=FaultPlan(schedule={2: "429"}, retry_after=0),
    )
    views: list[Progress] = []

    class Watch:
        def started(self, progress: Progress, note: str | None) -> None:
            pass

        def update(self, progress: Progress) -> None:
            views.append(progress)

        def finished(self, progress: Progress, record: dict[str, Any]) -> None:
            assert progress.in_flight <= 2

        def stopped(self) -> None:
            pass

        def ended(self, summary: Any) -> None:
            pass

    summary = await run_batch(
        sim,
        write_tasks(tmp_path / "t.jsonl"),
        tmp_path / "r.jsonl",
        concurrency=2,
        reporter=Watch(),
    )
    assert sim.stats.max_in_flight == 2  # two at a time, never more
    assert summary.rate_limited == 1 and sim.stats.rate_limited == 0  # the fault, not a limit
    assert sim.stats.by_status.get(429) == 1
    assert summary.recorded == 6 and views


@pytest.mark.anyio
async def test_a_rejected_key_stops_the_batch_and_writes_nothing(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = await sim_factory(policy=AnswerPolicy())
    model = agentloop.KimiModel(api_key="sk-wrong", base_url=sim.base_url, rpm=None)
    out = tmp_path / "r.jsonl"
    with pytest.raises(ConfigurationError, match="401"):
        await abatch(write_tasks(tmp_path / "t.jsonl"), out, model=model, runs=K)
    await model.aclose()
    assert not out.exists() or out.read_text() == ""


# -- the task file, the results file, settings -------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": "a", "task": "x"}\n{"id": "b", "task": \n', "line 2: not JSON"),
        ('{"id": "a", "task": "x"}\n\n{"task": "y"}\n', 'line 3: missing "id"'),
        ('{"id": "a"}\n', 'line 1: missing "task"'),
        ('{"id": "a", "task": "x"}\n{"id": "a", "task": "y"}\n', "line 2: duplicate id 'a'"),
        ('{"id": 1, "task": "x"}\n{"id": "1", "task": "y"}\n', "line 2: duplicate id '1'"),
        ('{"id": null, "task": "x"}\n', 'line 1: "id" must be'),
        ('{"id": "a", "task": ""}\n', 'line 1: "task" must be'),
        ('["a", "x"]\n', "line 1: expected an object"),
        ("\n", "no tasks"),
    ],
)
def test_a_bad_task_file_names_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_tasks(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


@pytest.mark.anyio
async def test_a_damaged_middle_line_or_other_settings_refuse_to_resume(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = await sim_factory(policy=AnswerPolicy())
    tasks, out = write_tasks(tmp_path / "t.jsonl"), tmp_path / "r.jsonl"
    await run_batch(sim, tasks, out, runs=1)
    good = out.read_text()
    model = kimi(sim)
    with pytest.raises(ConfigurationError, match=r"preset None \(this batch: 'aime'\)"):
        await abatch(tasks, out, model=model, runs=1, preset="aime")
    out.write_text("garbage\n" + good)
    with pytest.raises(ConfigurationError, match=r"r\.jsonl line 1: not a result line"):
        await abatch(tasks, out, model=model, runs=1)
    await model.aclose()


def test_normalised_exact_match() -> None:
    assert normalise('  "The  Answer."\n') == "the answer"
    assert exact_match("**Paris.**", "paris") and exact_match("« Paris »", "PARIS")
    assert exact_match("(B)", "b") and exact_match("42", 42) and exact_match("x", ["y", "X"])
    assert not exact_match("-5", "5") and not exact_match("$5", "5")
    assert not exact_match("Paris, France", "Paris")


def test_every_budget_preset_has_its_sampling_and_runs() -> None:
    assert set(SAMPLING) == set(PRESETS)
    assert sampling("aime").runs == 32 and sampling("GPQA_Diamond").runs == 8
    assert sampling("widesearch").runs == 4 and sampling("browsecomp").runs == 1
    assert sampling("swe-bench-verified").runs == 5 and sampling(None).runs == 1
    assert {(s.temperature, s.top_p, s.thinking) for s in SAMPLING.values()} == {(1.0, 0.95, True)}
    with pytest.raises(ConfigurationError, match="valid presets"):
        sampling("aime2099")


def test_a_preset_gives_the_runs_the_budget_and_the_sampler(tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl")
    job = prepare(
        tasks,
        tmp_path / "r.jsonl",
        preset="gpqa-diamond",
        api_key="sk-x",
        base_url="http://127.0.0.1:9/v1",
    )
    assert job.runs == 8 and job.agent.budget == Budget.preset("gpqa-diamond")
    model = job.agent.model
    assert isinstance(model, agentloop.KimiModel)
    assert (model.thinking, model.temperature, model.top_p) == (True, 1.0, 0.95)
    assert job.settings.preset == "gpqa-diamond" and job.settings.budget["max_steps"] == 1
    assert prepare(tasks, tmp_path / "r.jsonl", preset="aime", runs=2, api_key="k").runs == 2


def test_run_ids_are_id_hash_run() -> None:
    assert run_id("q1", 0) == "q1#0" and run_id(7, 31) == "7#31"


# -- the durable hooks (agentloop.durable is the lead's; here a stand-in) ----------------------
@pytest.mark.anyio
async def test_with_a_db_runs_go_through_the_store_and_come_back_from_it(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = await sim_factory(policy=AnswerPolicy())
    db = str(tmp_path / "runs.db")
    summary = await run_batch(sim, write_tasks(tmp_path / "t.jsonl"), tmp_path / "r.jsonl", db=db)
    assert summary.recorded == 6 and sim.stats.completions == CLEAN_CALLS
    assert sorted(r["run_id"] for r in lines(tmp_path / "r.jsonl")) == sorted(
        f"{t['id']}#{r}" for t in TASKS for r in range(K)
    )
    # a second results file for the same store: every pair comes back from it, no model call
    again = await run_batch(sim, tmp_path / "t.jsonl", tmp_path / "r2.jsonl", db=db)
    assert again.recorded == 6 and sim.stats.completions == CLEAN_CALLS
    first = {(r["id"], r["run"]): r["output"] for r in lines(tmp_path / "r.jsonl")}
    assert first == {(r["id"], r["run"]): r["output"] for r in lines(tmp_path / "r2.jsonl")}


@pytest.mark.anyio
async def test_a_store_reused_with_other_tasks_under_the_same_ids_runs_them_afresh(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = await sim_factory(policy=AnswerPolicy())
    db = str(tmp_path / "runs.db")
    await run_batch(sim, write_tasks(tmp_path / "t.jsonl"), tmp_path / "r.jsonl", db=db)
    calls = sim.stats.completions
    other = [{**t, "task": "What is the capital of France, again?"} for t in TASKS[:1]]
    summary = await run_batch(
        sim, write_tasks(tmp_path / "o.jsonl", other), tmp_path / "o-r.jsonl", db=db
    )
    assert summary.recorded == K and sim.stats.completions == calls + K  # run, not reused
    assert all(r["correct"] for r in lines(tmp_path / "o-r.jsonl"))


def test_a_batch_with_a_db_keeps_the_rate_limit_in_it(tmp_path: Path) -> None:
    from agentloop.limits_db import DatabaseLimiter

    db = str(tmp_path / "runs.db")
    job = prepare(write_tasks(tmp_path / "t.jsonl"), tmp_path / "r.jsonl", api_key="k", db=db)
    limiter = job.agent.model.limiter  # type: ignore[attr-defined]
    assert isinstance(limiter, DatabaseLimiter) and limiter.rpm == 50
    limiter.close()
    plain = prepare(tmp_path / "t.jsonl", tmp_path / "r.jsonl", api_key="k")
    assert not isinstance(plain.agent.model.limiter, DatabaseLimiter)  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_a_db_without_the_durable_extra_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "agentloop.durable", None)  # import fails
    job = prepare(
        write_tasks(tmp_path / "t.jsonl"),
        tmp_path / "r.jsonl",
        api_key="k",
        base_url="http://127.0.0.1:9/v1",
        db=str(tmp_path / "runs.db"),
    )
    with pytest.raises(ConfigurationError, match=r"agentloop\[durable\]"):
        await job.run()
    await job.agent.model.aclose()


# -- rendering -----------------------------------------------------------------------------------
def test_the_progress_panel_and_the_summary_table_render() -> None:
    progress = Progress(
        tasks=30,
        runs=2,
        pairs=60,
        skipped=4,
        recorded=10,
        tasks_done=3,
        ran=6,
        in_flight=4,
        steps=17,
        tokens=12_345,
        cost_usd=0.5,
        rate_limited=2,
    )
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render_progress(progress))
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    for text in (
        "runs 10/60",
        "tasks 3/30",
        "4 already done",
        "in flight 4",
        "steps 17",
        "12,345 tokens",
        "$0.5000",
        "429s 2",
        "ETA ",
    ):
        assert text in shown, text
    record = {
        "run_id": "q#1",
        "stop_reason": "max_steps",
        "steps": 3,
        "usage": {"total": 99},
        "cost_usd": 0.01,
        "error": None,
        "correct": False,
    }
    assert (
        run_line(progress, record) == "[10/60] q#1: max_steps, 3 steps, 99 tokens, $0.01000, wrong"
    )


def test_the_summary_table_shows_the_figures(tmp_path: Path) -> None:
    from agentloop.batch import BatchSummary

    summary = BatchSummary(
        out="r.jsonl",
        tasks=3,
        runs=2,
        pairs=6,
        recorded=5,
        ran=5,
        skipped=0,
        cancelled=1,
        interrupted=True,
        scored_tasks=3,
        avg_at_k=0.5,
        pass_at_k=2 / 3,
        stop_reasons={"completed": 4, "max_steps": 1},
        usage={"input": 10, "output": 5, "cached": 2, "total": 15, "estimated": False},
        cost_usd=0.25,
        wall_s=75,
        rate_limited=3,
        errors=0,
        settings={
            "model": "kimi-k2.6",
            "preset": "aime",
            "temperature": 1.0,
            "top_p": 0.95,
            "thinking": True,
        },
    )
    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(summary_table(summary))
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    for text in (
        "avg@2",
        "0.500 (50.0%)",
        "pass@2",
        "0.667 (66.7%) over 3 tasks",
        "stop: max_steps",
        "15 (10 in, 2 cached, 5 out)",
        "$0.2500",
        "1:15",
        "cancelled",
        "run the same command again",
        "preset aime",
    ):
        assert text in shown, text


# -- the command line ----------------------------------------------------------------------------
@pytest.fixture
def threaded_sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(policy=AnswerPolicy())).run_in_thread() as server:
        yield server


@pytest.fixture
def slow_threaded_sim() -> Iterator[SimServer]:
    config = SimConfig(policy=AnswerPolicy(), latency=0.4)
    with SimServer(config).run_in_thread() as server:
        yield server


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mytools.py").write_text(TOOLS_MODULE)
    write_tasks(tmp_path / "tasks.jsonl")
    return tmp_path


def env(key: str | None = "sk-sim") -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MOONSHOT_")}
    if key:
        out["MOONSHOT_API_KEY"] = key
    return out


def cli(*args: str, cwd: Path, key: str | None = "sk-sim") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentloop.cli", "batch", *args],
        cwd=cwd,
        env=env(key),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_batch_command_end_to_end(threaded_sim: SimServer, workdir: Path) -> None:
    base = (
        "tasks.jsonl",
        "--out",
        "results.jsonl",
        "--runs",
        "2",
        "--tools",
        "mytools",
        "--base-url",
        threaded_sim.base_url,
    )
    done = cli(*base, cwd=workdir)
    assert done.returncode == 0, done.stderr
    finished = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(finished) == 6 and "[6/6]" in finished[-1]
    assert "avg@2" in done.stdout and "0.500 (50.0%)" in done.stdout
    assert "pass@2" in done.stdout and "0.667 (66.7%) over 3 tasks" in done.stdout
    assert len(lines(workdir / "results.jsonl")) == 6
    calls = threaded_sim.stats.completions
    assert calls == CLEAN_CALLS

    again = cli(*base, "--json", cwd=workdir)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)  # one object, nothing else on stdout
    assert (summary["recorded"], summary["ran"], summary["skipped"]) == (6, 0, 6)
    assert summary["avg_at_k"] == pytest.approx(AVG_AT_K)
    assert summary["pass_at_k"] == pytest.approx(PASS_AT_K)
    assert summary["stop_reasons"] == {"completed": 6}
    assert summary["settings"]["thinking"] is True
    assert threaded_sim.stats.completions == calls  # resumed: no new model call


def test_the_batch_command_refuses_bad_input_with_exit_2(
    threaded_sim: SimServer, workdir: Path
) -> None:
    (workdir / "bad.jsonl").write_text('{"id": "a", "task": "x"}\n{"id": "a", "task": "y"}\n')
    bad = cli("bad.jsonl", "--out", "r.jsonl", "--base-url", threaded_sim.base_url, cwd=workdir)
    assert bad.returncode == 2
    assert "bad.jsonl line 2: duplicate id 'a'" in bad.stderr and "Traceback" not in bad.stderr
    no_key = cli("tasks.jsonl", "--out", "r.jsonl", cwd=workdir, key=None)
    assert no_key.returncode == 2 and "MOONSHOT_API_KEY is not set" in no_key.stderr
    wrong = cli(
        "tasks.jsonl",
        "--out",
        "r.jsonl",
        "--base-url",
        threaded_sim.base_url,
        cwd=workdir,
        key="sk-wrong",
    )
    assert wrong.returncode == 2 and "401" in wrong.stderr
    assert not (workdir / "r.jsonl").exists() or not (workdir / "r.jsonl").read_text()
    flag = cli("tasks.jsonl", "--out", "r.jsonl", "--runs", "0", cwd=workdir)
    assert flag.returncode == 2 and "--runs" in flag.stderr
    preset = cli("tasks.jsonl", "--out", "r.jsonl", "--preset", "aime2099", cwd=workdir)
    assert preset.returncode == 2 and "valid presets" in preset.stderr
    missing = cli("tasks.jsonl", cwd=workdir)
    assert missing.returncode == 2 and "--out" in missing.stderr


def test_ctrl_c_stops_cleanly_and_a_rerun_does_the_rest(
    slow_threaded_sim: SimServer, workdir: Path
) -> None:
    args = [
        sys.executable,
        "-m",
        "agentloop.cli",
        "batch",
        "tasks.jsonl",
        "--out",
        "r.jsonl",
        "--runs",
        "2",
        "--concurrency",
        "2",
        "--tools",
        "mytools",
        "--base-url",
        slow_threaded_sim.base_url,
    ]
    child = subprocess.Popen(
        args, cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    seen = []
    for line in child.stdout:  # the first finished run, then Ctrl-C with others in flight
        seen.append(line)
        if line.startswith("[1/6]"):
            break
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 130, (seen, out, err)
    assert "stopping" in err and "run the same command again" in err
    records = lines(workdir / "r.jsonl")  # only complete lines
    assert 1 <= len(records) < 6
    assert all(r["stop_reason"] == "completed" for r in records)  # no cancelled run written
    assert "cancelled" in out  # the summary says runs were stopped
    calls = slow_threaded_sim.stats.completions

    rerun = subprocess.run(args, cwd=workdir, env=env(), capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(Counter(pairs(workdir / "r.jsonl")).values()) == [1] * 6
    assert f"{len(records)} already done" in rerun.stdout
    # the rerun made only the calls of the runs that were not recorded
    left = [
        (t, r)
        for t in TASKS
        for r in range(K)
        if (str(t["id"]), r) not in {(str(x["id"]), x["run"]) for x in records}
    ]
    needed = sum(2 if t["id"] == 7 else 1 for t, _ in left)
    assert slow_threaded_sim.stats.completions - calls == needed


def test_the_sync_entry_works_in_a_script_and_inside_a_running_loop(
    threaded_sim: SimServer, tmp_path: Path
) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", TASKS[:2])
    where = {"base_url": threaded_sim.base_url, "api_key": "sk-sim", "rpm": None}
    summary = agentloop.batch(tasks, tmp_path / "a.jsonl", runs=1, **where)
    assert summary.recorded == 2 and summary.pass_at_k == pytest.approx(1.0)  # heads

    import asyncio

    async def notebook_cell() -> Any:  # a cell of a notebook has a loop running
        return agentloop.batch(tasks, tmp_path / "b.jsonl", runs=1, **where)

    inside = asyncio.run(notebook_cell())
    assert inside.recorded == 2 and inside.pass_at_k == pytest.approx(0.5)  # tails this time


# keep the helpers honest: a batch whose runs are written mid-line is caught by ``lines``
def test_lines_notices_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "run": 0}\n{"id": "a", "ru')
    with pytest.raises(AssertionError, match="mid-line"):
        lines(path)


def test_the_live_view_on_a_terminal(slow_threaded_sim: SimServer, workdir: Path) -> None:
    from tests.test_cli_hardening import in_pty, read_pty

    master, process = in_pty(
        [
            "batch",
            "tasks.jsonl",
            "--out",
            "r.jsonl",
            "--runs",
            "2",
            "--concurrency",
            "3",
            "--tools",
            "mytools",
            "--base-url",
            slow_threaded_sim.base_url,
        ],
        workdir,
    )
    try:
        during = read_pty(master, process, until="in flight 3")  # the panel, mid-batch
        screen = during + read_pty(master, process)
        assert process.wait(timeout=30) == 0, screen
    finally:
        os.close(master)
    assert "agentloop batch" in during and "runs 0/6" in during and "ETA" in during
    assert "runs 6/6" in screen and "tasks 3/3" in screen
    assert screen.count("capital#0: completed") == 1  # each finished run printed once
    assert "avg@2" in screen and "pass@2" in screen
