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
    long_history,
    long_search,
    rate_limit,
    step_overhead,
    streaming_parse,
    validation,
)
from bench.pgserver import missing_reason


def rows(path: Path) -> object:
    return json.loads(path.read_text())


def test_long_search_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    assert long_search.main(["--pages", "8", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "final-answer call after 3 steps" in table and "with the tools dropped" in table
    data = rows(out)
    assert isinstance(data, list)
    assert {r["strategy"] for r in data} == set(long_search.strategies())
    assert all(r["stop_reason"] == "completed" for r in data)
    by_name = {r["strategy"]: r for r in data}
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


def test_fleet_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    args = ["--sizes", "20", "--large", "40", "--only", "agentloop", "--json", str(out)]
    assert fleet.main(args) == 0
    data = rows(out)
    assert isinstance(data, list)
    assert [(r["size"], r["calls"]) for r in data] == [(20, 200), (40, 400)]
    assert all(r["wall_s"] >= r["ideal_s"] for r in data)
    assert "requests/s" in capsys.readouterr().out


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
    assert long_history.main(args) == 0
    assert "growth vs dumps" in capsys.readouterr().out
    data = rows(out)
    assert isinstance(data, list) and [r["target_tokens"] for r in data] == [2000, 8000]
    small, large = data
    assert small["history_tokens"] >= 2000 and large["history_tokens"] >= 8000
    assert large["body_kb"] > small["body_kb"] and small["reported_prompt_tokens"] > 0
    assert all(r["steps_timed"] == 2 and r["cpu_ms_per_step"] > 0 for r in data)
