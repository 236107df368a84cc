"""A durable run in a process of its own, for the crash tests (tests/test_durable.py).

    python tests/durable_worker.py BASE_URL DB RUN_ID LOG [--unsafe] [--billed N] [--steps N]

Each line of LOG is one event of the run as JSON (flushed at once, so a test can kill this
process at a known point); each call of the tool appends its query to LOG + ".tool". The last
line on stdout is the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import anyio

from agentloop import Agent, Budget, tool
from agentloop import events as ev
from agentloop.durable import DurableStore
from agentloop.models import KimiModel

KEY = "sk-canary-7f3a9c0d-durable"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("base_url")
    p.add_argument("db")
    p.add_argument("run_id")
    p.add_argument("log")
    p.add_argument("--unsafe", action="store_true")
    p.add_argument("--billed", type=int)
    p.add_argument("--tool-s", type=float, default=0.4)
    args = p.parse_args()
    calls = Path(args.log + ".tool")

    @tool(repeat_safe=not args.unsafe)
    def act(query: str) -> str:
        """Do a thing.

        Args:
            query: what.
        """
        with calls.open("a") as f:
            f.write(query + "\n")
        time.sleep(args.tool_s)
        return f"done: {query}"

    log = open(args.log, "a")  # noqa: SIM115 - open for the whole run, written line by line

    async def run() -> None:
        model = KimiModel(api_key=KEY, base_url=args.base_url, rpm=None)
        budget = Budget(max_billed_tokens=args.billed) if args.billed else Budget()
        agent = Agent(model, [act], budget=budget)
        with log:
            async with DurableStore(args.db) as store:
                async with agent.stream("do the things", run_id=args.run_id, store=store) as run:
                    async for event in run:
                        if isinstance(event, ev.ReasoningDelta | ev.TextDelta):
                            line = {"event": type(event).__name__, "step": event.step}
                        elif isinstance(event, ev.RunFinished):
                            continue
                        else:
                            line = {"event": type(event).__name__}
                            line.update(
                                {
                                    k: getattr(event, k)
                                    for k in ("step", "name", "call_id")
                                    if hasattr(event, k)
                                }
                            )
                        log.write(json.dumps(line) + "\n")
                        log.flush()
                result = run.result
                assert result is not None
        print(
            json.dumps(
                {
                    "stop_reason": result.stop_reason,
                    "steps": len(result.steps),
                    "usage": result.usage.total_tokens,
                    "cost": result.cost_usd,
                    "output": result.output,
                    "tools": [m["content"] for m in result.messages if m["role"] == "tool"],
                    "durations": [s.duration_s for s in result.steps],
                }
            )
        )

    anyio.run(run)


if __name__ == "__main__":
    sys.exit(main())
