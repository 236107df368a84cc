"""The ``agentloop`` command: ``sim`` (run the simulator) and ``demo`` (the offline main job)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

import anyio

from . import events as ev
from .agent import Agent
from .budget import Budget
from .models.kimi import KimiModel
from .sim import POLICIES, FaultPlan, SimConfig, SimServer, ToolLoopPolicy
from .tools import tool


def _sim(args: argparse.Namespace) -> int:
    try:
        faults = FaultPlan.parse(args.faults or "", seed=args.seed)
    except ValueError as exc:
        print(f"agentloop sim: {exc}", file=sys.stderr)
        return 2
    config = SimConfig(
        policy=POLICIES[args.policy](),
        rpm=args.rpm,
        tpm=args.tpm,
        max_concurrency=args.concurrency,
        faults=faults,
        strict=args.strict,
        api_keys={args.key: "ai"},
    )
    server = SimServer(config, port=args.port)

    async def main() -> None:
        await server.start()
        print(
            f"Kimi API simulator on {server.base_url} (key {args.key!r}, policy {args.policy})",
            flush=True,
        )
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


@tool
def word_count(text: str) -> int:
    """Count the words in a text.

    Args:
        text: the text to count.
    """
    return len(text.split())


@tool
async def reverse(text: str) -> str:
    """Reverse a text.

    Args:
        text: the text to reverse.
    """
    return text[::-1]


def _print(event: ev.Event) -> None:
    if isinstance(event, ev.RunStarted):
        print(f"run: {event.task!r} on {event.model}")
    elif isinstance(event, ev.StepStarted):
        print(f"\nstep {event.step} (budget {event.max_tokens} tokens)")
    elif isinstance(event, ev.ToolCallStarted):
        print(f"  → {event.name}({event.arguments})")
    elif isinstance(event, ev.ToolCallFinished):
        status = "ok" if event.ok else f"error: {event.error}"
        print(f"  ← {event.name} [{status}, {event.duration_s * 1000:.1f} ms] {event.result[:70]}")
    elif isinstance(event, ev.Retry):
        print(f"  retry {event.attempt} in {event.wait:.1f}s: {event.error}")
    elif isinstance(event, ev.StepFinished):
        u = event.record.usage
        print(
            f"  usage: {u.input_tokens} in ({u.cached_input_tokens} cached), "
            f"{u.output_tokens} out; finish={event.record.finish_reason}; "
            f"cost so far ${event.cost_so_far:.5f}"
        )
    elif isinstance(event, ev.LimitHit):
        print(f"\nlimit: {event.reason} ({event.detail})")
    elif isinstance(event, ev.RunFinished):
        r = event.result
        print(
            f"\nanswer: {r.output}\nstop: {r.stop_reason} after {len(r.steps)} steps, "
            f"{r.usage.total_tokens} tokens, ${r.cost_usd:.5f}"
        )


def _demo(args: argparse.Namespace) -> int:
    async def main() -> int:
        config = SimConfig(policy=ToolLoopPolicy(steps=args.steps, parallel=2), strict=True)
        async with SimServer(config) as sim:
            model = KimiModel(api_key="sk-sim", base_url=sim.base_url)
            agent = Agent(
                model,
                tools=[word_count, reverse],
                instructions="Use the tools, then answer briefly.",
                budget=Budget(max_steps=10),
            )
            stream = agent.stream(args.task)
            async for event in stream:
                _print(event)
            await model.aclose()
            return 0 if stream.result is not None and stream.result.ok else 1

    return anyio.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sim", help="run the Kimi API simulator on loopback")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--policy", choices=sorted(POLICIES), default="tools")
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--faults", help='e.g. "429@3,cut@7" or "500=0.05,reset=0.01"')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="enforce the soft rules too")
    p.add_argument("--key", default="sk-sim", help="the API key the simulator accepts")
    p.set_defaults(func=_sim)
    d = sub.add_parser("demo", help="a multi-step tool-calling run against the simulator")
    d.add_argument("task", nargs="?", default="How many words are in 'to be or not to be'?")
    d.add_argument("--steps", type=int, default=3)
    d.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
