"""A browse/search agent that answers from a real local corpus: the Python standard library's
docstrings, indexed into SQLite FTS5 on the spot.

    python examples/browse_agent.py "How do I shorten text to a width with a placeholder?"

Offline (no MOONSHOT_API_KEY, or --offline) it runs against the simulator, whose model searches,
opens the best hits and quotes them. With MOONSHOT_API_KEY set it runs against Kimi K2.6.
"""

from __future__ import annotations

import argparse
import os
from contextlib import AsyncExitStack

import anyio
from agentloop_tools.stdlib_docs import stdlib_index

from agentloop import Agent, Budget, KimiModel, RunResult, events
from agentloop.sim import BrowsePolicy, SimConfig, SimServer

INSTRUCTIONS = (
    "You answer questions about Python's standard library from its documentation. Use search "
    "to find candidates, open to read them, and answer briefly, naming the functions you cite."
)
QUESTION = "How do I shorten text to fit a width, and what placeholder is used by default?"


async def answer(question: str, offline: bool, show: bool = True) -> RunResult:
    index = stdlib_index()
    async with AsyncExitStack() as stack:
        if offline:
            sim = await stack.enter_async_context(SimServer(SimConfig(policy=BrowsePolicy())))
            model = KimiModel(api_key="sk-sim", base_url=sim.base_url)
        else:
            model = KimiModel()  # MOONSHOT_API_KEY (and MOONSHOT_BASE_URL for the China region)
        agent = Agent(
            model, tools=index.tools(), instructions=INSTRUCTIONS, budget=Budget(max_steps=12)
        )
        stream = agent.stream(question)
        async for event in stream:
            if not show:
                continue
            if isinstance(event, events.ToolCallStarted):
                print(f"step {event.step}: {event.name}({event.arguments})")
            elif isinstance(event, events.ToolCallFinished):
                print(f"    -> {event.result.splitlines()[0][:100]}")
        assert stream.result is not None
        return stream.result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--offline", action="store_true", help="use the simulator even with a key")
    args = parser.parse_args()
    offline = args.offline or not os.environ.get("MOONSHOT_API_KEY")
    result = anyio.run(answer, args.question, offline)
    print()
    print(result.output)
    print(
        f"\n[{result.stop_reason}: {len(result.steps)} steps, {result.usage.total_tokens:,} tokens]"
    )


if __name__ == "__main__":
    main()
