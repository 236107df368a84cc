"""Benchmarks must not rot: each runs here in a seconds-long version (no peers, no thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import (
    durable_cost,
    estimate_error,
    fleet,
    fleet_limit,
    layer,
    long_history,
    long_search,
    rate_limit,
    soak,
    step_overhead,
    streaming_parse,
    validation,
)
from bench.harness import installed
from bench.pgserver import missing_reason


def rows(path: Path) -> object:
    return json.loads(path.read_text())


def test_long_search_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    assert long_search.main(["--pages", "8", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for shape in long_search.SHAPES:  # both searches run by default, a table and a final each
        assert f"shape: {shape}" in table
        assert f"{shape}: final-answer call after 3 steps" in table
    assert "with the tools dropped" in table and "finished correctly on every shape" in table
    data = rows(out)
    assert isinstance(data, list)
    assert {(r["shape"], r["strategy"]) for r in data} == {
        (shape, name) for shape in long_search.SHAPES for name in long_search.strategies()
    }
    assert all(r["stop_reason"] == "completed" and r["final_usd"] == 0 for r in data)
    for shape in long_search.SHAPES:
        by_name = {r["strategy"]: r for r in data if r["shape"] == shape}
        assert by_name["default"]["correct"] and by_name["none"]["correct"]
        # cutting the middle of results loses a fact planted there: the table must show it
        assert not by_name["truncate results at 4K"]["correct"]
    assert "$ vs default" in table and "default" in table


def test_step_overhead_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    only = ["httpx2 loop (floor)", "agentloop"]
    assert (
        step_overhead.main(["--runs", "2", "--repeat", "1", "--only", *only, "--json", str(out)])
        == 0
    )
    data = rows(out)
    assert isinstance(data, list) and len(data) == 4
    assert all(r["steps"] == 40 and r["cpu_ms_per_step"] > 0 for r in data)
    assert "CPU vs floor" in capsys.readouterr().out


def test_layer_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    assert layer.main(["--both", "--runs", "2", "--repeat", "1", "--json", str(out)]) == 0
    data = rows(out)
    assert isinstance(data, list) and [r["stream"] for r in data] == [False, True]
    for row in data:
        assert row["agentloop_us"] > row["floor_us"] > 0
        assert set(row["parts_us"]) == set(layer.PARTS)
    assert "of which deadlines" in capsys.readouterr().out


def test_the_layer_transport_gives_the_simulators_tool_loop() -> None:
    """Both loops see 19 tool calls, then an answer, streamed or not, with the parts off too."""
    import asyncio

    for stream in (False, True):
        assert asyncio.run(layer.floor(stream)()) == layer.STEPS + 1
        assert asyncio.run(layer.agentloop(stream)()) == layer.STEPS + 1
        with layer._switched_off("all of these"):
            assert asyncio.run(layer.agentloop(stream)()) == layer.STEPS + 1


def test_fleet_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    ours = ["agentloop"] + (["agentloop (aiohttp)"] if installed("aiohttp") else [])
    args = ["--sizes", "20", "--large", "40", "--only", *ours, "--json", str(out)]
    assert fleet.main(args) == 0
    data = rows(out)
    assert isinstance(data, list)
    # the large fleet runs on every transport
    expected = [(20, n, 200) for n in ours] + [(40, n, 400) for n in ours]
    assert [(r["size"], r["contender"], r["calls"]) for r in data] == expected
    assert all(r["wall_s"] >= r["ideal_s"] for r in data)
    table = capsys.readouterr().out
    assert "requests/s" in table and "CPU ms/call" in table and "peak RSS MB" in table


def test_soak_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    args = ["--concurrency", "50", "--seconds", "3", "--idle-timeout", "1", "--quiet"]
    assert soak.main([*args, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    data = rows(out)
    assert isinstance(data, dict)
    by_transport = {r["transport"]: r for r in data["rows"]}
    assert list(by_transport) == list(soak.TRANSPORTS)
    ran = ["httpx2"] + (["aiohttp"] if installed("aiohttp") else [])
    if not installed("aiohttp"):
        assert "skipped" in by_transport["aiohttp"] and "aiohttp: skipped" in table
    for name in ran:
        row = by_transport[name]
        assert "error" not in row, row
        # samples after warm-up, runs finished, the faults injected and retried (no timings)
        assert row["samples"] >= 2 and row["finished"] > 0 and row["calls"] > 0
        assert sum(row["faults_injected"].values()) > 0 and row["attempts"] > row["calls"]
        assert row["verdict"].startswith(("flat", "GROWS"))
        samples = data["samples"][name]
        assert [s["phase"] for s in samples[-2:]] == ["drained", "closed"]
        assert all(s["rss_mb"] > 0 and s["fds"] > 0 for s in samples)
        if soak._MALLOC_TRIM is not None:  # glibc: RSS after malloc_trim(0) at every sample
            assert all(0 < s["rss_trim_mb"] <= s["rss_mb"] * 1.05 for s in samples)
            assert row["rss_trim_mb_growth"] is not None and row["live"]["end"]["objects"] > 0
        assert samples[-1]["conns"] == 0  # closing the model closed every connection
    assert "verdict" in table and "CPU ms/call" in table and "RSS trimmed MB" in table


_BASE = {
    "rss_mb": 180.0,
    "rss_trim_mb": 150.0,
    "heap_mb": 80.0,
    "objects": 400_000,
    "fds": 1030,
    "tasks": 2100,
    "conns": 1010,
}


def _soak_samples(levels_at: float = 1.0, **growth: float) -> list[dict[str, object]]:
    """Steady samples every 5 s; each amount swings ±4% from one sample to the next (what the
    runs in flight hold) and grows by ``growth[name]`` (a share) at a steady rate until the
    ``levels_at`` share of the samples, then stays (1.0: it grows to the last)."""
    out: list[dict[str, object]] = []
    n = 12
    for i in range(n):
        sample: dict[str, object] = {"t": 30.0 + 5 * i, "phase": "steady"}
        progress = min(1.0, i / ((n - 1) * levels_at))
        for name, base in _BASE.items():
            value = base * (1 + growth.get(name, 0.0) * progress)
            if name in soak.AMOUNTS:
                sample[name] = value * (1 + 0.04 * (-1) ** i)
            else:
                sample[name] = round(value)
        out.append(sample)
    return out


_BEFORE = {"fds": 8, "tasks": 1, "conns": 0, "close_wait": 0}


def test_soak_verdict_flat_and_fragmentation() -> None:
    # ±4% swings and growth within the slack are flat
    row = soak.verdict(_soak_samples(objects=0.03, heap_mb=0.03), _BEFORE, _BEFORE)
    assert row["verdict"] == "flat"
    # raw RSS up 15% with malloc in use, objects and trimmed RSS flat: fragmentation, not GROWS
    row = soak.verdict(_soak_samples(rss_mb=0.15), _BEFORE, _BEFORE)
    assert row["verdict"].startswith("flat (fragmentation: RSS +")
    assert row["rss_mb_growth"] > soak.SLACK and abs(row["objects_growth"]) < 0.01
    # a warm-up that levels off before the middle third (+12% in use, then flat) is no leak
    row = soak.verdict(_soak_samples(levels_at=0.4, heap_mb=0.12, rss_trim_mb=0.12), _BEFORE)
    assert row["verdict"] == "flat" and row["heap_mb_growth"] > soak.SLACK
    # aiohttp's body-writer tasks come and go: crests (+30%) in the last third are no leak
    # while the floor stays
    samples = _soak_samples()
    for sample, tasks in zip(samples[-4:], (2730, 2600, 2100, 2650), strict=True):
        sample["tasks"] = tasks
    assert soak.verdict(samples, _BEFORE, _BEFORE)["verdict"] == "flat"


@pytest.mark.parametrize(
    ("growth", "named"),
    [
        ({"objects": 0.2}, "objects "),  # a leak of Python objects
        ({"heap_mb": 0.2}, "malloc in use MB "),  # a leak of malloc'd buffers
        ({"rss_trim_mb": 0.2}, "RSS trimmed MB "),  # held outside both (pymalloc, C)
        ({"fds": 0.05}, "fds "),  # +51 fds
        ({"tasks": 0.1}, "tasks "),
        ({"conns": 0.05}, "conns "),
    ],
)
def test_soak_verdict_grows(growth: dict[str, float], named: str) -> None:
    row = soak.verdict(_soak_samples(rss_mb=0.15, **growth), _BEFORE, _BEFORE)
    assert row["verdict"].startswith("GROWS: ") and named in row["verdict"], row["verdict"]
    assert "fragmentation" not in row["verdict"]
    if set(growth) & {"objects", "heap_mb", "rss_trim_mb"}:  # raw RSS is named with them
        assert row["verdict"].startswith("GROWS: RSS +")


def test_soak_verdict_a_steady_leak_just_over_the_slack_grows() -> None:
    # +8% objects at a steady rate: first third to last +5.8%, middle to last +2.9%
    row = soak.verdict(_soak_samples(objects=0.08), _BEFORE, _BEFORE)
    assert row["verdict"].startswith("GROWS: objects ") and row["objects_growth"] > soak.SLACK
    # +6% is +4.4% between the thirds' medians: within the slack
    assert soak.verdict(_soak_samples(objects=0.06), _BEFORE, _BEFORE)["verdict"] == "flat"


def test_soak_verdict_left_after_close_and_unmeasured() -> None:
    closed = {**_BEFORE, "conns": 1, "tasks": 3}
    row = soak.verdict(_soak_samples(), _BEFORE, closed)
    assert row["verdict"] == "GROWS: 1 connections left after close, tasks left after close 1->3"
    # without malloc_trim (no glibc, --no-trim) nothing vouches for raw RSS growth
    samples = _soak_samples(rss_mb=0.15)
    for sample in samples:
        sample["rss_trim_mb"] = None
    row = soak.verdict(samples, _BEFORE, _BEFORE)
    assert (
        row["verdict"].startswith("GROWS: RSS +")
        and "RSS trimmed MB not measured" in row["verdict"]
    )
    assert row["rss_trim_mb_growth"] is None


def test_rate_limit_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limit, "FACTOR", 120.0)
    out = tmp_path / "rows.json"
    assert rate_limit.main(["--runs", "30", "--json", str(out)]) == 0
    data = rows(out)
    assert isinstance(data, list) and len(data) == 3
    assert all(r["completed"] == 30 and r["requests"] == 60 for r in data)


def test_streaming_parse_and_validation_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert streaming_parse.main(["--mb", "0.2"]) == 0
    assert validation.main(["--calls", "200"]) == 0
    out = capsys.readouterr().out
    assert "MB/s" in out and "speed-up" in out


def test_estimate_error_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    assert estimate_error.main(["--sim-requests", "12", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "MAPE" in table and "goal: calibrated within 10%" in table
    data = rows(out)
    assert isinstance(data, list)
    sim = [r for r in data if r["source"].startswith("sim") and r["kind"] == "all"]
    assert [r["requests"] for r in sim] == [9, 9]  # 12 less the 3 of warm-up, two profiles
    if estimate_error.TRAFFIC.is_dir():
        [llama] = [r for r in data if r["source"] == "llamacpp" and r["kind"] == "all"]
        assert llama["requests"] == 12  # the 15 recorded responses with usage, less warm-up
        assert llama["calibrated_mape"] < llama["default_mape"]


def test_durable_cost_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    assert (
        durable_cost.main(["--steps", "3", "--runs", "1", "--repeat", "1", "--json", str(out)]) == 0
    )
    table = capsys.readouterr().out
    data = rows(out)
    assert isinstance(data, list)
    # the Postgres row only where a server can be started (tests/postgres.py fails CI without)
    expected = ["plain", "sqlite"] + (["postgres"] if missing_reason() is None else [])
    assert [r["store"] for r in data] == expected
    assert all("error" not in r and r["steps"] == 3 and r["cpu_ms_per_step"] > 0 for r in data)
    # the durable runs were journaled (each is finished in its store), the plain one not
    assert [r["finished_in_store"] for r in data] == [0] + [1] * (len(expected) - 1)
    assert data[0]["wall_vs_plain"] == 1.0
    assert "journal +wall ms/step" in table and "durable, sqlite" in table


def test_fleet_limit_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    args = ["--rpm", "6", "--factor", "60", "--windows", "1", "--cycles", "20", "--no-postgres"]
    assert fleet_limit.main([*args, "--json", str(out)]) == 0
    data = rows(out)
    assert isinstance(data, list)
    [sqlite] = data
    assert sqlite["requests"] == 12 and sqlite["errors"] == 0 and sqlite["server_429"] == 0
    assert sqlite["busiest_minute"] <= 1.0  # never more than the limit in any minute
    assert [c["cycles"] for c in sqlite["cost"]] == [20, 60]
    assert "busiest sliding minute" in capsys.readouterr().out


def test_long_history_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    args = ["--sizes", "2000", "8000", "--steps", "2", "--repeat", "1", "--json", str(out)]
    args += ["--only", "agentloop", "httpx2 loop (floor)"]
    assert long_history.main(args) == 0
    assert "beyond floor vs dumps" in capsys.readouterr().out
    data = rows(out)
    assert isinstance(data, list)
    assert [(r["contender"], r["target_tokens"]) for r in data] == [
        ("agentloop", 2000),
        ("agentloop", 8000),
        ("httpx2 loop (floor)", 2000),
        ("httpx2 loop (floor)", 8000),
    ]
    small, large, floor_small, floor_large = data
    assert small["history_tokens"] >= 2000 and large["history_tokens"] >= 8000
    assert large["body_kb"] > small["body_kb"] and small["reported_prompt_tokens"] > 0
    assert floor_large["body_kb"] > floor_small["body_kb"]
    assert all(r["steps_timed"] == 2 and r["cpu_ms_per_step"] > 0 for r in data)
    assert large["beyond_floor_growth_ms"] is not None
    assert floor_large["beyond_floor_growth_ms"] is None
