"""Durable runs with the store on a real Postgres (tests/postgres.py starts a throwaway server):
a run killed with SIGKILL continues after its last committed step, and no key reaches any table.
The worker processes take the ``postgresql://`` URL where they take a SQLite path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from .test_durable import (
    KEY,
    STEPS,
    assert_no_secret,
    durable_sim,
    events,
    kill_when,
    tool_running,
    worker,
)

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


async def test_sigkill_mid_tool_resumes_on_postgres(
    sim_factory: SimFactory, postgres_server: Any, tmp_path: Path
) -> None:
    clean_sim = await durable_sim(sim_factory)
    clean_db = postgres_server.fresh_url()
    clean = await worker(clean_sim, clean_db, "r", tmp_path / "clean.log")
    assert clean["stop_reason"] == "completed" and clean["steps"] == STEPS + 1
    clean_calls = clean_sim.stats.completions

    sim = await durable_sim(sim_factory)
    db, log = postgres_server.fresh_url(), tmp_path / "run.log"
    await kill_when(sim, db, "r", log, tool_running(log, 3))
    assert sim.stats.completions == 3  # three model calls answered, the third step's tool running
    assert await _status(db, "r") == "PENDING"  # the kill left the run in the database
    resumed = await worker(sim, db, "r", log)

    assert resumed["stop_reason"] == "completed"
    assert resumed["steps"] == clean["steps"]
    assert resumed["usage"] == clean["usage"]
    assert resumed["cost"] == pytest.approx(clean["cost"])
    assert resumed["output"] == clean["output"]
    assert sim.stats.completions == clean_calls  # no finished model call was sent again
    queries = (tmp_path / "run.log.tool").read_text().splitlines()
    assert len(queries) == STEPS + 1 and queries[2] == queries[3]  # only the one in flight
    # the second process replayed steps 1-3's model calls from Postgres: no deltas for them
    log_events = events(log)
    starts = [i for i, e in enumerate(log_events) if e["event"] == "RunStarted"]
    assert len(starts) == 2
    second = log_events[starts[-1] :]
    deltas = {e["step"] for e in second if e["event"] in ("ReasoningDelta", "TextDelta")}
    assert deltas and min(deltas) == 4
    assert await _status(db, "r") == "SUCCESS"


async def test_no_secret_is_written_to_postgres(
    sim_factory: SimFactory, postgres_url: str, tmp_path: Path
) -> None:
    sim = await durable_sim(sim_factory)
    done = await worker(sim, postgres_url, "s", tmp_path / "s.log")
    assert done["stop_reason"] == "completed"
    tables, cells = await _every_cell(postgres_url)
    assert any(schema == "dbos" for schema, _ in tables), tables  # DBOS's own schema was read
    assert ("dbos", "operation_outputs") in tables  # where the steps' records are
    assert_no_secret(b"", cells)  # no file: the cells are the store
    assert KEY not in postgres_url  # (the canary is the model's key, not the store's password)


async def _every_cell(url: str) -> tuple[list[tuple[str, str]], list[Any]]:
    """Every cell of every table in every non-system schema, as str or bytes."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        found = await conn.execute(
            "select table_schema, table_name from information_schema.tables "
            "where table_type = 'BASE TABLE' and table_schema <> all(%s)",
            (list(SYSTEM_SCHEMAS),),
        )
        tables = [(str(s), str(t)) for s, t in await found.fetchall()]
        cells: list[Any] = []
        for schema, table in tables:
            rows = await conn.execute(
                sql.SQL("select * from {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            )
            for row in await rows.fetchall():
                cells.extend(_as_text(c) for c in row if c is not None)
    return tables, cells


def _as_text(cell: Any) -> str | bytes:
    if isinstance(cell, str | bytes):
        return cell
    if isinstance(cell, memoryview):
        return bytes(cell)
    return repr(cell)  # numbers, timestamps, JSON values: searched as their text


async def _status(url: str, run_id: str) -> str | None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        found = await conn.execute(
            "select status from dbos.workflow_status where workflow_uuid = %s", (run_id,)
        )
        row = await found.fetchone()
    return None if row is None else str(row[0])
