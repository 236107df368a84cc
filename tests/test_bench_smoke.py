"""Benchmarks must not rot: each runs here in a seconds-long version (no thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import long_search


def test_long_search_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rows.json"
    assert long_search.main(["--pages", "8", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert {r["strategy"] for r in rows} == set(long_search.strategies())
    assert all(r["stop_reason"] == "completed" for r in rows)
    by_name = {r["strategy"]: r for r in rows}
    assert by_name["default"]["correct"] and by_name["none"]["correct"]
    # cutting the middle of results loses a fact planted there: the table must show it
    assert not by_name["truncate results at 4K"]["correct"]
    assert "$ vs default" in table and "default" in table
