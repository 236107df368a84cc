"""A browse/search agent that answers from a real local corpus: the Python standard library's
docstrings, indexed into SQLite FTS5 on the spot.

Offline, the simulator plays the model (no key needed; from a checkout, after
``pip install -e .``):

    python examples/browse_agent.py

Online, against Kimi K2.6 (``MOONSHOT_BASE_URL`` too for a key from platform.moonshot.cn):

    MOONSHOT_API_KEY=sk-... python examples/browse_agent.py --online

Either takes a question: ``python examples/browse_agent.py "How do I compute a median?"``.
Offline, the simulator's model searches, opens the best hits and quotes them.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--online", action="store_true", help="use Kimi (MOONSHOT_API_KEY)")
    args = parser.parse_args()
    result = anyio.run(answer, args.question, not args.online)
    print()
    print(result.output)
    print(
        f"\n[{result.stop_reason}: {len(result.steps)} steps, {result.usage.total_tokens:,} tokens]"
    )


if __name__ == "__main__":
    main()
