"""Durable cost: what the journal adds per step, on SQLite and on Postgres, against the plain run.

The same N-step tool run (the simulator's tool loop in its own process, zero latency, thinking
off, one ``lookup`` call per step) run plain, then as a durable run with the store on a SQLite
file and on Postgres (a throwaway server of its own: bench/pgserver.py, defaults kept: fsync and
synchronous_commit on). Each measurement is a fresh process (DBOS is one per process) that makes
a warm-up run, then ``--runs`` runs one after another; the table shows medians over
``--repeat`` measurements: wall ms and client CPU ms (``time.process_time``) per model step,
what the journal adds to each against the plain run of this same invocation, and the ratios.
For Postgres the server's CPU per step (every process of its cluster) is shown too.

    python -m bench durable_cost [--steps 20] [--runs 5] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .harness import installed, simulator, table
from .pgserver import PostgresServer, missing_reason

STORES = ("plain", "sqlite", "postgres")
TICKS = os.sysconf("SC_CLK_TCK")


def measure(steps: int, runs: int, repeat: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows, and the notes on stores not measured."""
    notes: list[str] = []
    stores = ["plain"]
    if not installed("dbos"):
        notes.append("sqlite, postgres: not run: pip install -e '.[durable]' (DBOS)")
    else:
        stores.append("sqlite")
        reason = missing_reason()
        if reason is None:
            stores.append("postgres")
        else:
            notes.append(f"postgres: not run: {reason}")
    samples: dict[str, list[dict[str, Any]]] = {s: [] for s in stores}
    errors: dict[str, str] = {}
    with simulator(steps=steps - 1) as sim, tempfile.TemporaryDirectory() as tmp:
        server = PostgresServer.start() if "postgres" in stores else None
        try:
            # interleaved, so a slow spell of the machine falls on every store alike
            for n in range(repeat):
                for store in stores:
                    if store in errors:
                        continue
                    if store == "plain":
                        where = "plain"
                    elif store == "sqlite":
                        where = str(Path(tmp) / f"runs-{n}.db")
                    else:
                        assert server is not None
                        where = server.fresh_url("bench")
                    postmaster = _postmaster(server) if store == "postgres" else 0
                    report = _child(where, sim.base_url, runs, postmaster)
                    if "error" in report:
                        errors[store] = report["error"]
                    else:
                        samples[store].append(report)
        finally:
            if server is not None:
                server.stop()
    rows: list[dict[str, Any]] = []
    for store in stores:
        if store in errors:
            rows.append({"store": store, "error": errors[store]})
            continue
        got = samples[store]
        calls = got[0]["calls"]
        row: dict[str, Any] = {
            "store": store,
            "steps": calls,
            "runs": runs,
            "finished_in_store": got[0]["finished_in_store"],
            "wall_ms_per_step": statistics.median(s["wall_s"] for s in got) / calls * 1e3,
            "cpu_ms_per_step": statistics.median(s["cpu_s"] for s in got) / calls * 1e3,
            "rss_mb": max(s["rss_mb"] for s in got),
        }
        if store == "postgres":
            row["server_cpu_ms_per_step"] = (
                statistics.median(s["server_cpu_s"] for s in got) / calls * 1e3
            )
        rows.append(row)
    plain = next((r for r in rows if r["store"] == "plain" and "error" not in r), None)
    for r in rows:
        if plain is None or "error" in r:
            continue
        r["added_wall_ms_per_step"] = r["wall_ms_per_step"] - plain["wall_ms_per_step"]
        r["added_cpu_ms_per_step"] = r["cpu_ms_per_step"] - plain["cpu_ms_per_step"]
        r["wall_vs_plain"] = r["wall_ms_per_step"] / plain["wall_ms_per_step"]
        r["cpu_vs_plain"] = r["cpu_ms_per_step"] / plain["cpu_ms_per_step"]
    return rows, notes


def _postmaster(server: PostgresServer | None) -> int:
    assert server is not None
    return int((server.data / "postmaster.pid").read_text().split()[0])


def _child(where: str, base_url: str, runs: int, postmaster: int) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.durable_cost", "--child", where, base_url, str(runs)]
    args.append(str(postmaster))
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def cluster_cpu(postmaster: int) -> float:
    """CPU seconds used so far by a Postgres cluster: the postmaster, its live children
    (backends, walwriter, checkpointer...) and the children it has reaped."""

    def stat(pid: int) -> list[str] | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None

    main = stat(postmaster)
    assert main is not None, "the Postgres server is gone"
    total = sum(int(main[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat(int(entry))) and int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


# -- one measurement, in a process of its own --------------------------------------------------
def child(where: str, base_url: str, runs: int, postmaster: int) -> dict[str, Any]:
    import anyio

    from agentloop import Agent, Budget, KimiModel, tool

    from .contenders import KEY, TASK, lookup_impl

    @tool
    async def lookup(query: str) -> str:
        """Look up.

        Args:
            query: what to look up.
        """
        return await lookup_impl(query)

    model = KimiModel(api_key=KEY, base_url=base_url, thinking=False, rpm=None, max_tokens=4096)
    model.retry.max_attempts = 1
    agent = Agent(model, tools=[lookup], budget=Budget(max_steps=100))

    async def main() -> dict[str, Any]:
        store: Any = None
        if where != "plain":
            from agentloop.durable import DurableStore

            store = await DurableStore(where).__aenter__()

        async def one(run_id: str) -> int:
            if store is None:
                result = await agent.run(TASK)
            else:
                result = await agent.run(TASK, run_id=run_id, store=store)
            if not result.ok:
                raise RuntimeError(f"run ended {result.stop_reason}: {result.error}")
            return len(result.steps)

        try:
            await one("warm-up")  # imports, connections, DBOS's first queries
            server0 = cluster_cpu(postmaster) if postmaster else 0.0
            cpu0, wall0 = time.process_time(), time.perf_counter()
            calls = 0
            for n in range(runs):
                calls += await one(f"run-{n}")
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            server = cluster_cpu(postmaster) - server0 if postmaster else 0.0
            finished = 0
            if store is not None:  # the runs were journaled: the store has each as finished
                for n in range(runs):
                    finished += await store.status(f"run-{n}") == "finished"
        finally:
            if store is not None:
                await store.__aexit__(None, None, None)
        return {
            "wall_s": wall,
            "cpu_s": cpu,
            "server_cpu_s": server,
            "calls": calls,
            "finished_in_store": finished,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    report: dict[str, Any] = anyio.run(main)
    return report


def render(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["store"], "error: " + r["error"][:70], *[""] * 7])
            continue
        server = r.get("server_cpu_ms_per_step")
        body.append(
            [
                r["store"] if r["store"] == "plain" else f"durable, {r['store']}",
                f"{r['wall_ms_per_step']:.2f}",
                f"{r['cpu_ms_per_step']:.2f}",
                f"{r.get('added_wall_ms_per_step', float('nan')):+.2f}",
                f"{r.get('added_cpu_ms_per_step', float('nan')):+.2f}",
                f"{r.get('wall_vs_plain', float('nan')):.2f}x",
                f"{r.get('cpu_vs_plain', float('nan')):.2f}x",
                "" if server is None else f"{server:.2f}",
                f"{r['rss_mb']:.0f}",
            ]
        )
    steps = next((r["steps"] for r in rows if "steps" in r), 0)
    return f"{steps} model steps per measurement, zero latency:\n" + table(
        [
            "store",
            "wall ms/step",
            "client CPU ms/step",
            "journal +wall ms/step",
            "journal +CPU ms/step",
            "wall vs plain",
            "CPU vs plain",
            "server CPU ms/step",
            "peak RSS MB",
        ],
        body,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench durable_cost", description=__doc__)
    parser.add_argument("--steps", type=int, default=20, help="model steps per run (>= 2)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per store (median)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (tool steps, then the answer)")
    rows, notes = measure(args.steps, args.runs, args.repeat)
    print(render(rows))
    for note in notes:
        print(f"\n{note}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        where, base_url, runs, postmaster = sys.argv[2:]
        print(json.dumps(child(where, base_url, int(runs), int(postmaster))))
    else:
        raise SystemExit(main())
