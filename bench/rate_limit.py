"""Rate limits: 200 concurrent runs against the simulator enforcing a limit, with the client
configured to the same limit. Reports how much of the allowed rate was used and the 429s.

The simulator runs in its own process; both sides use a ScaledClock, which two processes share
by factor. The factor is 5 (a simulated minute lasts 12 s): at 60× the client's own CPU time
(about 1.5 ms a request, and a window opens with a burst of them) is magnified into seconds of
simulated time and the limiter is blamed for it. Utilisation compares the elapsed
simulated time with the least the limit allows for the work done: for N requests at R per
minute the last one cannot start before ceil(N/R) - 1 full minutes (all work is ready at once,
and a sliding window admits the next batch only when the first one leaves it); for T tokens at
a TPM limit, ceil(T/TPM) - 1 minutes; under a concurrency limit C with latency L, N·L/C.

    python -m bench rate_limit [--runs 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

import anyio

from agentloop import Agent, Budget, KimiModel, ScaledClock, tool

from .harness import simulator, table

FACTOR = 5.0


@tool
async def lookup(query: str) -> str:
    """Look up.

    Args:
        query: what to look up.
    """
    return f"{query}: " + "ledger entry " * 20


async def scenario(name: str, runs: int, factor: float, **limits: Any) -> dict[str, Any]:
    latency = limits.pop("latency", 0.0)
    with simulator(steps=1, clock_factor=factor, latency=latency, **limits) as sim:
        clock = ScaledClock(factor)
        model = KimiModel(
            api_key="sk-sim",
            base_url=sim.base_url,
            thinking=False,
            max_tokens=1024,
            clock=clock,
            rpm=limits.get("rpm"),
            tpm=limits.get("tpm"),
            max_concurrency=limits.get("concurrency"),
        )
        agent = Agent(model, tools=[lookup], budget=Budget(max_steps=5), context=())
        results = []

        async def one(i: int) -> None:
            results.append(await agent.run(f"task {i}"))

        started = clock.now()
        async with anyio.create_task_group() as group:
            for i in range(runs):
                group.start_soon(one, i)
        elapsed = clock.now() - started
        await model.aclose()
    final = sim.final or {}
    requests = sum(len(r.steps) for r in results)
    tokens = sum(r.usage.total_tokens for r in results)
    retries = sum(s.retries for r in results for s in r.steps)
    if "rpm" in limits:
        ideal = (math.ceil(requests / limits["rpm"]) - 1) * 60.0
    elif "tpm" in limits:
        ideal = (math.ceil(tokens / limits["tpm"]) - 1) * 60.0
    else:
        ideal = requests * latency / limits["concurrency"]
    return {
        "scenario": name,
        "clock_factor": factor,
        "runs": runs,
        "completed": sum(r.ok for r in results),
        "requests": requests,
        "tokens": tokens,
        "elapsed_s": elapsed,
        "ideal_s": ideal,
        "utilisation": ideal / elapsed if elapsed else 0.0,
        "server_429": final.get("rate_limited", -1),
        "client_retries": retries,
    }


async def run_all(runs: int) -> list[dict[str, Any]]:
    return [
        await scenario("50 RPM", runs, FACTOR, rpm=50),
        await scenario("25,000 TPM", runs, FACTOR, tpm=25_000),
        await scenario("20 concurrent, 10 s latency", runs, FACTOR, concurrency=20, latency=10.0),
    ]


def render(rows: Sequence[dict[str, Any]]) -> str:
    return table(
        [
            "limit",
            "clock",
            "runs",
            "completed",
            "requests",
            "tokens",
            "elapsed (sim s)",
            "least possible",
            "utilisation",
            "429s from server",
            "client retries",
        ],
        [
            [
                r["scenario"],
                f"{r['clock_factor']:g}x",
                r["runs"],
                r["completed"],
                r["requests"],
                f"{r['tokens']:,}",
                f"{r['elapsed_s']:.1f}",
                f"{r['ideal_s']:.1f}",
                f"{r['utilisation']:.1%}",
                r["server_429"],
                r["client_retries"],
            ]
            for r in rows
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench rate_limit", description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = anyio.run(run_all, args.runs)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0
