"""Fleet limit: 3 worker processes share one account's RPM limit through a DatabaseLimiter.

Two measurements per database (SQLite file; Postgres when its server binaries are installed,
a throwaway server of bench/pgserver.py):

1. Utilisation. A simulator (its own process) enforces ``--rpm``; the workers (each its own
   process, all requests ready at once) hold the same rpm through one DatabaseLimiter. For N
   requests at R per minute the last one cannot be admitted before ceil(N/R) - 1 full minutes:
   utilisation is that least time over the time taken (go to the last admission). Also the
   admissions of each whole minute from the first (per rpm), the busiest sliding minute (per
   rpm: over 100% would be a 429 waiting to happen) and the 429s the server answered.
   By default the clock is scaled (``--factor``, a minute in 60/factor s); ``--real`` runs real
   60-second windows (about ``--windows`` + 1 minutes per database).
2. Admission cost. Each worker runs ``--cycles`` acquire → touch → reconcile → release cycles
   with no limit (every cycle still one admission transaction and its queued updates), alone
   and then the 3 at once: wall latency of ``acquire`` (p50, p99) and the process CPU per
   cycle (the background thread that writes the updates included).

    python -m bench fleet_limit [--rpm 50] [--factor 10 | --real] [--windows 2]
                                [--cycles 500] [--no-postgres] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from .harness import simulator, table

WORKERS = 3
KEY = "sk-sim"


# -- the worker (python -m bench.fleet_limit --worker ...) ------------------------------------
async def _worker_traffic(args: argparse.Namespace) -> dict[str, Any]:
    from agentloop.clock import MonotonicClock, ScaledClock
    from agentloop.limits_db import DatabaseLimiter
    from agentloop.models import KimiModel, ModelRequest

    clock = ScaledClock(args.factor) if args.factor != 1 else MonotonicClock()
    limiter = DatabaseLimiter(args.db, KEY, base_url=args.base_url, rpm=args.rpm, clock=clock)
    model = KimiModel(
        api_key=KEY, base_url=args.base_url, thinking=False, clock=clock, limiter=limiter
    )
    admitted: list[float] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        request = ModelRequest([{"role": "user", "content": f"task {i}"}], max_tokens=256)
        try:
            async for delta in model.stream(request):
                del delta
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    # the admissions, on the limiter's time scale (the wall clock, scaled)
    inner_acquire = limiter.acquire

    async def acquire(tokens: int = 0) -> Any:
        permit = await inner_acquire(tokens)
        admitted.append(permit.at)
        return permit

    limiter.acquire = acquire  # type: ignore[method-assign]
    print("READY", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    cpu = time.process_time()
    async with anyio.create_task_group() as group:
        for i in range(args.requests):
            group.start_soon(one, i)
    cpu = time.process_time() - cpu
    await model.aclose()
    limiter.close()
    return {
        "admitted": admitted,
        "errors": errors,
        "cpu_s": cpu,
        "transactions": limiter.transactions,
    }


async def _worker_cycles(args: argparse.Namespace) -> dict[str, Any]:
    from agentloop.limits_db import DatabaseLimiter

    limiter = DatabaseLimiter(args.db, "sk-cycles", rpm=None)
    print("READY", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    latencies = []
    cpu = time.process_time()
    for _ in range(args.cycles):
        start = time.perf_counter()
        permit = await limiter.acquire(1000)
        latencies.append(time.perf_counter() - start)
        permit.touch()
        permit.reconcile(700)
        permit.release()
    limiter.close()  # the queued updates written
    cpu = time.process_time() - cpu
    return {"latencies": latencies, "cpu_s": cpu, "cycles": args.cycles}


def _worker(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["traffic", "cycles"])
    p.add_argument("--db", required=True)
    p.add_argument("--base-url")
    p.add_argument("--rpm", type=int)
    p.add_argument("--factor", type=float, default=1.0)
    p.add_argument("--requests", type=int, default=0)
    p.add_argument("--cycles", type=int, default=0)
    args = p.parse_args(argv)
    run = _worker_traffic if args.mode == "traffic" else _worker_cycles
    report = anyio.run(run, args)
    print(json.dumps(report), flush=True)
    return 0


# -- the parent --------------------------------------------------------------------------------
def _fleet(per_worker: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Start one worker per argument list, let them go together, collect their reports."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.fleet_limit", "--worker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for args in per_worker
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            line = w.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"a worker did not start: {line!r}")
        for w in workers:  # all imported and connected: go at once
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        reports = []
        for w in workers:
            out, _ = w.communicate(timeout=3600)
            if w.returncode:
                raise RuntimeError(f"a worker failed (exit {w.returncode})")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()


def busiest_minute(stamps: Sequence[float]) -> int:
    ordered = sorted(stamps)
    most = start = 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= 60.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def utilisation(db: str, rpm: int, factor: float, windows: int) -> dict[str, Any]:
    requests = rpm * (windows + 1)
    each = [requests // WORKERS + (i < requests % WORKERS) for i in range(WORKERS)]
    with simulator(steps=1, clock_factor=factor if factor != 1 else None, rpm=rpm) as sim:
        # their shares differ by at most one request
        reports = _fleet(
            [
                [
                    *("traffic", "--db", db, "--base-url", sim.base_url, "--rpm", str(rpm)),
                    *("--factor", str(factor), "--requests", str(n)),
                ]
                for n in each
            ]
        )
    final = sim.final or {}
    admitted = sorted(a for r in reports for a in r["admitted"])
    first, last = admitted[0], admitted[-1]
    least = (math.ceil(len(admitted) / rpm) - 1) * 60.0
    per_minute = [
        sum(1 for a in admitted if first + 60 * k <= a < first + 60 * (k + 1)) / rpm
        for k in range(windows)
    ]
    cpu = sum(r["cpu_s"] for r in reports)
    return {
        "requests": len(admitted),
        "errors": sum(len(r["errors"]) for r in reports),
        "elapsed_s": last - first,
        "least_s": least,
        "utilisation": least / (last - first) if last > first else 0.0,
        "per_minute": per_minute,
        "busiest_minute": busiest_minute(admitted) / rpm,
        "server_429": final.get("rate_limited", -1),
        "transactions_per_request": sum(r["transactions"] for r in reports) / len(admitted),
        "worker_cpu_ms_per_request": cpu / len(admitted) * 1e3,
    }


def admission_cost(db: str, cycles: int, processes: int) -> dict[str, Any]:
    reports = _fleet([["cycles", "--db", db, "--cycles", str(cycles)]] * processes)
    latencies = sorted(x for r in reports for x in r["latencies"])
    total = sum(r["cycles"] for r in reports)
    return {
        "processes": processes,
        "cycles": total,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
        "cpu_ms_per_cycle": sum(r["cpu_s"] for r in reports) / total * 1e3,
    }


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    factor = 1.0 if args.real else args.factor
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agentloop-fleet-") as tmp:
        backends: list[tuple[str, Any]] = [("SQLite", lambda: str(Path(tmp) / "limits.db"))]
        server = None
        if not args.no_postgres:
            from .pgserver import PostgresServer, missing_reason

            reason = missing_reason()
            if reason is None:
                server = PostgresServer.start()
                backends.append(("Postgres", server.fresh_url))
            else:
                rows.append({"database": "Postgres", "skipped": reason})
        try:
            for name, url in backends:
                row: dict[str, Any] = {"database": name, "rpm": args.rpm, "factor": factor}
                row.update(utilisation(url(), args.rpm, factor, args.windows))
                row["cost"] = [
                    admission_cost(url(), args.cycles, 1),
                    admission_cost(url(), args.cycles, WORKERS),
                ]
                rows.append(row)
        finally:
            if server is not None:
                server.stop()
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    done = [r for r in rows if "skipped" not in r]
    first = table(
        [
            "database",
            "limit",
            "clock",
            "requests",
            "elapsed (sim s)",
            "least possible",
            "utilisation",
            "each whole minute",
            "busiest sliding minute",
            "429s from server",
            "DB tries/request",
            "worker CPU ms/request",
        ],
        [
            [
                r["database"],
                f"{r['rpm']} RPM",
                "real" if r["factor"] == 1 else f"{r['factor']:g}x",
                r["requests"],
                f"{r['elapsed_s']:.1f}",
                f"{r['least_s']:.1f}",
                f"{r['utilisation']:.1%}",
                " ".join(f"{m:.0%}" for m in r["per_minute"]),
                f"{r['busiest_minute']:.0%}",
                r["server_429"],
                f"{r['transactions_per_request']:.2f}",
                f"{r['worker_cpu_ms_per_request']:.2f}",
            ]
            for r in done
        ],
    )
    second = table(
        ["database", "processes", "cycles", "acquire p50 ms", "acquire p99 ms", "CPU ms/cycle"],
        [
            [
                r["database"],
                c["processes"],
                c["cycles"],
                f"{c['p50_ms']:.2f}",
                f"{c['p99_ms']:.2f}",
                f"{c['cpu_ms_per_cycle']:.2f}",
            ]
            for r in done
            for c in r["cost"]
        ],
    )
    skipped = "".join(f"\n{r['database']}: skipped: {r['skipped']}" for r in rows if "skipped" in r)
    return (
        f"{WORKERS} worker processes, one DatabaseLimiter log\n{first}\n\n"
        f"admission cost (acquire -> touch -> reconcile -> release, no limit)\n{second}{skipped}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench fleet_limit", description=__doc__)
    parser.add_argument("--rpm", type=int, default=50)
    parser.add_argument("--factor", type=float, default=10.0, help="clock scale (default 10)")
    parser.add_argument("--real", action="store_true", help="real 60-second windows")
    parser.add_argument("--windows", type=int, default=2, help="minutes of saturation")
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = measure(args)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
