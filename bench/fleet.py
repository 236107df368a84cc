"""Fleet: many concurrent 10-step runs at 200 ms server latency.

Ideal wall time is 10 × 0.2 s = 2 s whatever the fleet size; the table shows how close each
contender gets, its client CPU per model call (one call per step), peak RSS and requests per
second, with the simulator's CPU share (it runs in its own process and must not be the
bottleneck). agentloop alone, on both transports (httpx2 and aiohttp), also runs the largest
fleet; a transport whose library is not installed is skipped and named.

    python -m bench fleet [--sizes 100 500] [--large 2000] [--only NAME ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from .contenders import CONTENDERS, available
from .harness import run_contender, simulator, table

# the contenders that also run the ``--large`` fleet: agentloop on each transport
LARGE = ("agentloop", "agentloop (aiohttp)")

# ours and the hand-written loops: "wall vs fastest framework" compares with the others only
NOT_FRAMEWORKS = (
    "agentloop",
    "agentloop (aiohttp)",
    "httpx2 loop (floor)",
    "aiohttp loop (floor)",
    "openai SDK loop",
)
LATENCY = 0.2
STEPS = 10


def large_contenders(names: Sequence[str]) -> list[str]:
    """Who runs the large fleet: the agentloop transports among ``names`` (both if none is)."""
    chosen = [n for n in LARGE if n in names]
    return chosen or list(LARGE)


def measure(names: Sequence[str], sizes: Sequence[int], large: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    plan = [(size, name) for size in sizes for name in names]
    if large:
        ready = set(available())
        plan.extend((large, n) for n in large_contenders(names) if n in ready)
    for size, name in plan:
        # a fresh simulator per measurement, so one contender's leftovers never slow another
        with simulator(steps=STEPS - 1, latency=LATENCY) as sim:
            before = sim.cpu()
            report = run_contender(name, sim.base_url, runs=size, concurrency=size, stream=True)
            sim_cpu = sim.cpu() - before
        if "error" in report:
            rows.append({"contender": name, "size": size, "error": report["error"]})
            continue
        rows.append(
            {
                "contender": name,
                "size": size,
                "wall_s": report["wall_s"],
                "ideal_s": STEPS * LATENCY,
                "cpu_ms_per_step": report["cpu_s"] / report["calls"] * 1e3,
                "rss_mb": report["rss_mb"],
                "requests_per_s": report["calls"] / report["wall_s"],
                "sim_cpu_share": sim_cpu / report["wall_s"],
                "calls": report["calls"],
            }
        )
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        if "error" in r:
            body.append(
                [r["contender"], r["size"], "error: " + r["error"][:60], "", "", "", "", "", ""]
            )
            continue
        peers = [
            p["wall_s"]
            for p in rows
            if p["size"] == r["size"] and "error" not in p and p["contender"] not in NOT_FRAMEWORKS
        ]
        ours = next(
            (
                p
                for p in rows
                if p["size"] == r["size"] and p["contender"] == "agentloop" and "error" not in p
            ),
            None,
        )
        vs_best_peer = f"{ours['wall_s'] / min(peers):.2f}x" if ours and peers and r is ours else ""
        body.append(
            [
                r["contender"],
                r["size"],
                f"{r['wall_s']:.2f}",
                f"{r['wall_s'] / r['ideal_s']:.2f}x",
                f"{r['cpu_ms_per_step']:.2f}",
                f"{r['rss_mb']:.0f}",
                f"{r['requests_per_s']:.0f}",
                f"{r['sim_cpu_share']:.0%}",
                vs_best_peer,
            ]
        )
    return table(
        [
            "contender",
            "runs",
            "wall s",
            "vs ideal",
            "CPU ms/call",
            "peak RSS MB",
            "requests/s",
            "sim CPU",
            "wall vs fastest framework",
        ],
        body,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fleet", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument(
        "--large",
        type=int,
        default=2000,
        help="agentloop alone, both transports (those of --only if it names any; 0: skip)",
    )
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    ready = available()
    names = [n for n in args.only or ready if n in ready]
    rows = measure(names, args.sizes, args.large or None)
    print(render(rows))
    wanted = set(args.only or CONTENDERS)
    if args.large:
        wanted |= set(large_contenders(args.only or list(CONTENDERS)))
    missing = [n for n in CONTENDERS if n in wanted and n not in ready]
    if missing:
        print(
            f"\nnot run: {', '.join(missing)} (not installed: pip install -e '.[bench]' for the "
            "peers, '.[fast]' for aiohttp)"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0
