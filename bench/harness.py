"""Shared plumbing: a simulator process, contender subprocesses, CPU of a process, tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a live process has used (from /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Sim:
    process: subprocess.Popen[str]
    port: int
    final: dict[str, Any] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def cpu(self) -> float:
        return process_cpu(self.process.pid)


@contextmanager
def simulator(module: str = "bench.simproc", **options: Any) -> Iterator[Sim]:
    """The simulator in a process of its own (``module``'s ``serve``: bench/simproc.py, or one
    with faults), configured by ``options``."""
    args = ["serve"] if module != "bench.simproc" else []
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args, json.dumps(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    line = process.stdout.readline()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"the simulator did not start: {line!r}")
    sim = Sim(process, int(line.split()[1]))
    try:
        yield sim
    finally:
        process.stdin.close()
        tail = process.stdout.read()
        process.wait(timeout=60)
        if tail.strip():
            sim.final = json.loads(tail.strip().splitlines()[-1])


def run_contender(name: str, base_url: str, **options: Any) -> dict[str, Any]:
    """Run one contender in a fresh process (so its peak RSS is its own); returns its report."""
    args = [sys.executable, "-m", "bench.contenders", name, base_url, json.dumps(options)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
