"""Long-search benchmark: context strategies on a 200-step search against the simulator.

The task needs facts found at several points of the search; every tool result is 2–8K tokens;
the window is Kimi's 256K with the ``browsecomp`` budget (48K per step, 256K total). The
simulated model (``ResearchPolicy``) answers only from what is in the context it receives, and
the simulator reports ``cached_tokens`` from byte-identical prompt prefixes, so the table shows
what each strategy costs at kimi-k2.6 prices and whether it kept the facts.

Below the table, one run stopped by the step cap halfway shows the final-answer call: it keeps
the run's tools and history and sends ``tool_choice: "none"``, so its prompt is a cache hit but
for the last turn; the same call with the tools dropped (as agentloop once sent it) would change
the first bytes of the prompt and pay for all of it uncached.

    python -m bench long_search [--pages 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import anyio

from agentloop import KIMI_K2_6, Agent, Budget, KimiModel, Usage, tool
from agentloop.context import (
    ClearToolResults,
    Compact,
    ContextStrategy,
    DiscardAll,
    TruncateResults,
    default_strategies,
)
from agentloop.sim import ResearchPolicy, SimConfig, SimServer

WORDS = (
    "river archive ledger harbour signal mosaic quarry lantern vessel meadow cipher orchard "
    "beacon granite tundra falcon violet ember canyon summit"
).split()
FACT_KEYS = ("alpha", "bravo", "charlie", "delta")


@dataclass
class Scenario:
    pages: int = 200
    min_tokens: int = 2_000
    max_tokens: int = 8_000
    budget: Budget | None = None  # None: the browsecomp preset
    seed: int = 7

    def fact_pages(self) -> dict[int, tuple[str, str]]:
        rng = random.Random(self.seed)
        spread = [int(self.pages * share) for share in (0.1, 0.35, 0.6, 0.85)]
        return {
            max(1, page): (
                key,
                "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6)),
            )
            for page, key in zip(spread, FACT_KEYS, strict=True)
        }

    def expected(self) -> dict[str, str]:
        return dict(self.fact_pages().values())

    def page_text(self, page: int) -> str:
        rng = random.Random(self.seed * 100_003 + page)
        tokens = rng.randint(self.min_tokens, self.max_tokens)
        words: list[str] = []
        size = 0
        while size < tokens * 4:
            word = rng.choice(WORDS)
            words.append(word)
            size += len(word) + 1
        fact = self.fact_pages().get(page)
        if fact:
            words.insert(len(words) // 2, f"FACT {fact[0]} = {fact[1]}")
        return f"Result page {page}:\n" + " ".join(words)


@dataclass
class Row:
    strategy: str
    finished: bool
    stop_reason: str
    steps: int
    correct: bool
    input_tokens: int
    cached_tokens: int
    uncached_tokens: int
    output_tokens: int
    cost_usd: float
    edits: int
    seconds: float


def strategies() -> dict[str, Callable[[], Sequence[ContextStrategy]]]:
    eighty_five = int(0.85 * 256_000)  # 85% of the window, the rule some Kimi clients use
    return {
        "none": lambda: [],
        "truncate results at 4K": lambda: [TruncateResults(4_000)],
        "clear tool results (keep 3)": lambda: [ClearToolResults()],
        "clear every step (keep 3)": lambda: [ClearToolResults(trigger=0, clear_at_least=0)],
        "compact at 85%": lambda: [Compact(trigger=eighty_five)],
        "compact at 50%": lambda: [Compact(trigger=0.5)],
        "discard-all at 85%": lambda: [DiscardAll(trigger=eighty_five)],
        "default": default_strategies,
    }


async def run_one(
    name: str, make: Callable[[], Sequence[ContextStrategy]], scenario: Scenario
) -> Row:
    search = _search_tool(scenario)
    budget = scenario.budget or Budget.preset("browsecomp")
    config = SimConfig(policy=ResearchPolicy(pages=scenario.pages), chunk_chars=4096)
    started = time.perf_counter()
    async with SimServer(config) as sim:
        sim.stats.keep_bodies = False
        agent = Agent(
            KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=None),
            tools=[search],
            instructions="Find the codes named in the task by searching the archive page by page.",
            budget=budget,
            context=make(),
            max_result_chars=10**9,
        )
        edits = 0
        stream = agent.stream(
            "Search every page of the archive and report the codes alpha, bravo, charlie and delta."
        )
        async for event in stream:
            if type(event).__name__ == "ContextEdited":
                edits += 1
        result = stream.result
        assert result is not None
    expected = scenario.expected()
    correct = all(f"{k} = {v}" in result.output for k, v in expected.items())
    usage = result.usage
    return Row(
        name,
        result.stop_reason == "completed",
        result.stop_reason,
        len(result.steps),
        correct,
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.uncached_input_tokens,
        usage.output_tokens,
        result.cost_usd,
        edits,
        time.perf_counter() - started,
    )


@dataclass
class FinalAnswer:
    steps: int
    prompt_tokens: int
    cached_tokens: int
    cost_usd: float  # as sent: tools kept, tool_choice "none"
    cost_without_tools_usd: float  # the same call with no cached prefix


async def final_answer_call(scenario: Scenario) -> FinalAnswer:
    """Stop a default-strategy run halfway with the step cap and price its final-answer call."""
    budget = (scenario.budget or Budget.preset("browsecomp")).with_(max_steps=scenario.pages // 2)
    halfway = Scenario(scenario.pages, scenario.min_tokens, scenario.max_tokens, budget)
    config = SimConfig(policy=ResearchPolicy(pages=scenario.pages), chunk_chars=4096)
    async with SimServer(config) as sim:
        sim.stats.keep_bodies = False
        agent = Agent(
            KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=None),
            tools=[_search_tool(halfway)],
            budget=budget,
            max_result_chars=10**9,
        )
        result = await agent.run("Search every page of the archive and report the codes.")
    assert result.stop_reason == "max_steps", result.stop_reason
    final = result.steps[-1].usage
    uncached = Usage(final.input_tokens, 0, final.output_tokens)
    return FinalAnswer(
        len(result.steps),
        final.input_tokens,
        final.cached_input_tokens,
        KIMI_K2_6.cost(final),
        KIMI_K2_6.cost(uncached),
    )


def _search_tool(scenario: Scenario) -> Any:
    @tool
    def search(query: str, page: int) -> str:
        """Search the archive.

        Args:
            query: what to look for.
            page: which page of results to read (1 is the first).
        """
        return scenario.page_text(page)

    return search


async def run_all(scenario: Scenario, names: Sequence[str] | None = None) -> list[Row]:
    rows = []
    for name, make in strategies().items():
        if names is None or name in names:
            rows.append(await run_one(name, make, scenario))
    return rows


def table(rows: Sequence[Row]) -> str:
    base = next((r for r in rows if r.strategy == "default"), rows[0])
    head = (
        f"{'strategy':<28} {'end':<13} {'steps':>5} {'correct':>7} {'input':>11} {'cached':>11} "
        f"{'uncached':>10} {'output':>9} {'edits':>5} {'$':>8} {'$ vs default':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r.cost_usd / base.cost_usd if base.cost_usd else float("nan")
        lines.append(
            f"{r.strategy:<28} {r.stop_reason:<13} {r.steps:>5} {'yes' if r.correct else 'NO':>7} "
            f"{r.input_tokens:>11,} {r.cached_tokens:>11,} {r.uncached_tokens:>10,} "
            f"{r.output_tokens:>9,} {r.edits:>5} {r.cost_usd:>8.3f} {ratio:>11.2f}×"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench long_search", description=__doc__)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--strategy", action="append", help="run only these (repeatable)")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    scenario = Scenario(pages=args.pages)
    rows = anyio.run(run_all, scenario, args.strategy)
    print(table(rows))
    final = anyio.run(final_answer_call, scenario)
    print(
        f"\nfinal-answer call after {final.steps - 1} steps (step cap {final.steps}): prompt "
        f"{final.prompt_tokens:,} tokens, {final.cached_tokens:,} cached: ${final.cost_usd:.4f}; "
        f"with the tools dropped (nothing cached): ${final.cost_without_tools_usd:.4f} "
        f"({final.cost_without_tools_usd / final.cost_usd:.1f}x)"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(r) for r in rows], out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
