"""Validation: checking a tool call's arguments, with the validator compiled once per tool (what
agentloop does) against ``jsonschema.validate`` on every call (what a naive loop does).

    python -m bench validation [--calls 20000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel

from agentloop import tool


class Filter(BaseModel):
    field: str
    op: Literal["eq", "lt", "gt", "contains"]
    value: str | int | float


@tool
def query(table: str, filters: list[Filter], columns: list[str], limit: int = 50) -> str:
    """Query a table.

    Args:
        table: the table.
        filters: conditions rows must meet.
        columns: columns to return.
        limit: most rows to return.
    """
    return table


ARGUMENTS = json.dumps(
    {
        "table": "vessels",
        "filters": [
            {"field": "port", "op": "eq", "value": "Lyttelton"},
            {"field": "tonnage", "op": "gt", "value": 1200},
            {"field": "name", "op": "contains", "value": "Star"},
        ],
        "columns": ["name", "port", "tonnage", "arrived"],
        "limit": 20,
    }
)


def measure(calls: int) -> dict[str, Any]:
    schema = query.parameters
    t0 = time.perf_counter()
    for _ in range(calls):
        _, problem = query.parse(ARGUMENTS)
        assert problem is None
    compiled = (time.perf_counter() - t0) / calls
    naive_calls = max(1, calls // 10)
    t0 = time.perf_counter()
    for _ in range(naive_calls):
        jsonschema.validate(json.loads(ARGUMENTS), schema)
    naive = (time.perf_counter() - t0) / naive_calls
    return {"compiled_us": compiled * 1e6, "naive_us": naive * 1e6, "speedup": naive / compiled}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench validation", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    row = measure(args.calls)
    print("tool-argument validation per call (nested schema: 4 fields, a list of 3 objects)")
    print(f"  agentloop Tool.parse (JSON decode + compiled validator): {row['compiled_us']:.1f} us")
    print(f"  jsonschema.validate on every call:                     {row['naive_us']:.1f} us")
    print(f"  speed-up: {row['speedup']:.1f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(row, out, indent=1)
    return 0
