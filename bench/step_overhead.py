"""Step overhead: client CPU and wall time per model step of a 20-step tool-calling run.

Zero latency, ~1.5 KB tool results, streamed and non-streamed; the simulator runs in its own
process (its CPU per step is reported so it is seen not to be the bottleneck). Each contender
runs in a fresh process, ``--repeat`` times; the table shows medians and ratios measured in this
run: against the hand-written httpx2 loop (the floor of our HTTP stack) and the hand-written
aiohttp loop (the floor of ``transport="aiohttp"``), and agentloop's cost as a share of each
contender's.

    python -m bench step_overhead [--runs 10] [--repeat 3] [--only NAME ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from typing import Any

from .contenders import CONTENDERS, available
from .harness import run_contender, simulator, table

FLOOR = "httpx2 loop (floor)"
AIOHTTP_FLOOR = "aiohttp loop (floor)"


def measure(names: Sequence[str], runs: int, repeat: int, steps: int = 20) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with simulator(steps=steps - 1) as sim:
        for stream in (False, True):
            for name in names:
                samples: list[dict[str, Any]] = []
                for _ in range(repeat):
                    sim_cpu = sim.cpu()
                    report = run_contender(name, sim.base_url, runs=runs, stream=stream)
                    if "error" in report:
                        samples = []
                        rows.append({"contender": name, "stream": stream, "error": report["error"]})
                        break
                    report["sim_cpu_s"] = sim.cpu() - sim_cpu
                    samples.append(report)
                if not samples:
                    continue
                calls = samples[0]["calls"]
                rows.append(
                    {
                        "contender": name,
                        "stream": stream,
                        "steps": calls,
                        "cpu_ms_per_step": statistics.median(s["cpu_s"] for s in samples)
                        / calls
                        * 1e3,
                        "wall_ms_per_step": statistics.median(s["wall_s"] for s in samples)
                        / calls
                        * 1e3,
                        # the simulator also served the contender's warm-up run
                        "sim_cpu_ms_per_step": statistics.median(s["sim_cpu_s"] for s in samples)
                        / (calls + calls // runs)
                        * 1e3,
                        "rss_mb": max(s["rss_mb"] for s in samples),
                    }
                )
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    out = []
    for stream in (False, True):
        group = [r for r in rows if r["stream"] == stream and "error" not in r]
        floor = next((r for r in group if r["contender"] == FLOOR), None)
        fast = next((r for r in group if r["contender"] == AIOHTTP_FLOOR), None)
        ours = next((r for r in group if r["contender"] == "agentloop"), None)
        body = []
        for r in group:
            vs_floor = r["cpu_ms_per_step"] / floor["cpu_ms_per_step"] if floor else float("nan")
            vs_fast = r["cpu_ms_per_step"] / fast["cpu_ms_per_step"] if fast else float("nan")
            share = ours["cpu_ms_per_step"] / r["cpu_ms_per_step"] if ours else float("nan")
            body.append(
                [
                    r["contender"],
                    f"{r['cpu_ms_per_step']:.2f}",
                    f"{r['wall_ms_per_step']:.2f}",
                    f"{r['sim_cpu_ms_per_step']:.2f}",
                    f"{r['rss_mb']:.0f}",
                    f"{vs_floor:.2f}x",
                    f"{vs_fast:.2f}x",
                    f"{share:.2f}x",
                ]
            )
        title = "streamed" if stream else "non-streamed"
        out.append(
            f"{title}:\n"
            + table(
                [
                    "contender",
                    "client CPU ms/step",
                    "wall ms/step",
                    "sim CPU ms/step",
                    "peak RSS MB",
                    "CPU vs floor",
                    "CPU vs aiohttp floor",
                    "agentloop CPU / this",
                ],
                body,
            )
        )
        out.extend(
            f"  {r['contender']}: {r['error']}"
            for r in rows
            if r["stream"] == stream and "error" in r
        )
    return "\n\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench step_overhead", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per contender (median)")
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), help="these contenders only")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    names = args.only or available()
    rows = measure(names, args.runs, args.repeat)
    print(render(rows))
    missing = [n for n in CONTENDERS if n not in names]
    if missing:
        print(f"\nnot run: {', '.join(missing)} (pip install -e '.[bench]' for the peers)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0
