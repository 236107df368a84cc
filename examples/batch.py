"""Many tasks at once under the account's rate limit (Kimi's default tier: 50 requests/min),
keeping every finished result even when some tasks fail.

Offline, the simulator plays the model (no key needed; from a checkout, after
``pip install -e .``):

    python examples/batch.py

Online, against Kimi K2.6 (``MOONSHOT_BASE_URL`` too for a key from platform.moonshot.cn):

    MOONSHOT_API_KEY=sk-... python examples/batch.py --online

Options: ``--tasks N`` (40 by default), ``--out FILE`` (each finished result appended as JSONL).

All runs share one rate limiter per API key (``KimiModel(rpm=50)`` is the default), so they
queue on the client instead of collecting 429s. Offline, the simulator and the client share a
clock running 60× faster, so a minute of rate limit passes in a second; the simulator enforces
the same 50 RPM and counts any 429 it sends.
"""

from __future__ import annotations

import argparse
import json
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

from agentloop import Agent, Budget, KimiModel, RunResult, ScaledClock, tool
from agentloop.sim import SimConfig, SimServer, ToolLoopPolicy


@tool
def square(n: int) -> int:
    """Square a number.

    Args:
        n: the number.
    """
    return n * n


async def run_batch(tasks: list[str], online: bool, out: Path | None = None) -> dict[str, object]:
    results: dict[int, RunResult] = {}
    async with AsyncExitStack() as stack:
        if online:
            model = KimiModel(rpm=50)
            sim = None
        else:
            clock = ScaledClock(60)
            config = SimConfig(policy=ToolLoopPolicy(steps=1), rpm=50, clock=clock)
            sim = await stack.enter_async_context(SimServer(config))
            model = KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=50, clock=clock)
        agent = Agent(model, tools=[square], budget=Budget(max_steps=5))

        async def one(index: int, task: str) -> None:
            results[index] = await agent.run(task)
            if out is not None:  # write as each finishes: a crash later loses nothing done
                with out.open("a") as sink:
                    sink.write(json.dumps({"task": task, "output": results[index].output}) + "\n")

        async with anyio.create_task_group() as group:
            for index, task in enumerate(tasks):
                group.start_soon(one, index, task)
    return {
        "finished": sum(r.ok for r in results.values()),
        "tasks": len(tasks),
        "requests": sum(len(r.steps) for r in results.values()),
        "rate_limited_by_server": sim.stats.rate_limited if sim else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--online", action="store_true", help="use Kimi (MOONSHOT_API_KEY)")
    parser.add_argument("--out", type=Path, help="append each finished result to this JSONL file")
    args = parser.parse_args()
    tasks = [f"What is {n} squared?" for n in range(args.tasks)]
    print(anyio.run(run_batch, tasks, args.online, args.out))
