"""Long-search benchmark: context strategies on a 200-step search against the simulator.

The task needs facts found at several points of the search; every tool result is 2–8K tokens;
the window is Kimi's 256K with the ``browsecomp`` budget (48K per step, 256K total). The
simulated model (``ResearchPolicy``) answers only from what is in the context it receives, and
the simulator reports ``cached_tokens`` from byte-identical prompt prefixes, so the table shows
what each strategy costs at kimi-k2.6 prices and whether it kept the facts.

Two shapes of search, a table each. ``spread``: the four facts at 10%, 35%, 60% and 85% of the
pages, 250 tokens of reasoning per step, so tool results are nearly all of the context.
``clustered``: the facts at 3%, 6%, 9% and 12% of the pages (they must survive every later
edit) and 1–3K tokens of reasoning per step, billed as output and kept in the history with its
turn, so the reasoning alone outgrows the window and clearing tool results cannot finish.
"finished" is ``completed``; a run a limit stopped still answers through its final-answer call,
whose cost is in its dollars (``final $``), and may still be right ("none" on ``clustered``).

The default (``TruncateResults(10K)``, ``Compact(trigger=0.5)``) is the cheapest list here
that finishes correctly on both shapes: 0.80× the cost of the former default (clear results past
40%, compact past 70%) on each shape, and 0.59× / 0.73× of compacting at 85% (kimi-cli's rule).
Compacting leaves the task and a short summary, so the prompt stays small between edits;
clearing keeps every turn and its reasoning and rewrites the history 2–2.5× as often.
Compacting earlier is cheaper still in this bench (at 30%: 0.77× / 0.88× of the default, with
1.6× the compactions) because the simulated summary keeps every fact; a real model's summary
may drop one each time, which the bench cannot price, so stopping at 50% is a judgement, not a
measurement.

Below the tables, a default run per shape stopped by the step cap halfway shows the
final-answer call: it keeps the run's tools and history and sends ``tool_choice: "none"``, so
its prompt is a cache hit but for the last turn; the same call with the tools dropped (as
agentloop once sent it) would change the first bytes of the prompt and pay for all of it
uncached.

    python -m bench long_search [--pages 200] [--shape spread clustered] [--strategy NAME]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
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
    shape: str = "spread"
    # where the facts are, as shares of the pages
    facts_at: tuple[float, ...] = (0.1, 0.35, 0.6, 0.85)
    # reasoning_content per step (tokens; a range when max_reasoning_tokens is set)
    reasoning_tokens: int = 250
    max_reasoning_tokens: int | None = None

    def fact_pages(self) -> dict[int, tuple[str, str]]:
        rng = random.Random(self.seed)
        pages: list[int] = []
        for share in self.facts_at:
            page = max(1, int(self.pages * share))
            while page in pages:  # a short search: shares that round to one page move on
                page += 1
            pages.append(page)
        return {
            page: (
                key,
                "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(6)),
            )
            for page, key in zip(pages, FACT_KEYS, strict=True)
        }

    def policy(self) -> ResearchPolicy:
        return ResearchPolicy(
            pages=self.pages,
            reasoning_tokens=self.reasoning_tokens,
            max_reasoning_tokens=self.max_reasoning_tokens,
            seed=self.seed,
        )

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


SHAPES: dict[str, Callable[[int], Scenario]] = {
    # facts far apart, short reasoning: tool results are nearly all of the context
    "spread": lambda pages: Scenario(pages=pages),
    # facts in the first eighth, 1-3K tokens of reasoning per step: the facts must survive
    # every later edit, and the kept reasoning alone outgrows the window
    "clustered": lambda pages: Scenario(
        pages=pages,
        shape="clustered",
        facts_at=(0.03, 0.06, 0.09, 0.12),
        reasoning_tokens=1_000,
        max_reasoning_tokens=3_000,
    ),
}


@dataclass
class Row:
    shape: str
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
    final_usd: float  # the final-answer call of a run a limit stopped (counted in cost_usd)
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
        # the default until issue 18: clear results past 40%, summarise past 70%
        "clear 40%, compact 70%": lambda: [
            TruncateResults(),
            ClearToolResults(),
            Compact(trigger=0.7, keep_turns=1),
        ],
        "clear 40%, compact 50%": lambda: [
            TruncateResults(),
            ClearToolResults(),
            Compact(trigger=0.5, keep_turns=1),
        ],
        "default": default_strategies,  # truncate at 10K, compact at 50%
    }


async def run_one(
    name: str, make: Callable[[], Sequence[ContextStrategy]], scenario: Scenario
) -> Row:
    search = _search_tool(scenario)
    budget = scenario.budget or Budget.preset("browsecomp")
    config = SimConfig(policy=scenario.policy(), chunk_chars=4096)
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
    last = result.steps[-1] if result.steps else None
    # a limit's final-answer call is the run's last step, made without tool calls
    final = (
        KIMI_K2_6.cost(last.usage)
        if last is not None and result.stop_reason != "completed" and not last.tool_calls
        else 0.0
    )
    return Row(
        scenario.shape,
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
        final,
        time.perf_counter() - started,
    )


@dataclass
class FinalAnswer:
    shape: str
    steps: int
    prompt_tokens: int
    cached_tokens: int
    cost_usd: float  # as sent: tools kept, tool_choice "none"
    cost_without_tools_usd: float  # the same call with no cached prefix


async def final_answer_call(scenario: Scenario) -> FinalAnswer:
    """Stop a default-strategy run halfway with the step cap and price its final-answer call."""
    budget = (scenario.budget or Budget.preset("browsecomp")).with_(max_steps=scenario.pages // 2)
    halfway = replace(scenario, budget=budget)
    config = SimConfig(policy=scenario.policy(), chunk_chars=4096)
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
        scenario.shape,
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
    """One table per shape; "$ vs default" compares within the shape."""
    head = (
        f"{'strategy':<28} {'end':<13} {'steps':>5} {'correct':>7} {'input':>11} {'cached':>11} "
        f"{'uncached':>10} {'output':>9} {'edits':>5} {'final $':>7} {'$':>8} {'$ vs default':>12}"
    )
    blocks = []
    for shape in dict.fromkeys(r.shape for r in rows):
        mine = [r for r in rows if r.shape == shape]
        base = next((r for r in mine if r.strategy == "default"), mine[0])
        lines = [f"shape: {shape}", head, "-" * len(head)]
        for r in mine:
            ratio = r.cost_usd / base.cost_usd if base.cost_usd else float("nan")
            final = f"{r.final_usd:.3f}" if r.final_usd else "-"
            lines.append(
                f"{r.strategy:<28} {r.stop_reason:<13} {r.steps:>5} "
                f"{'yes' if r.correct else 'NO':>7} {r.input_tokens:>11,} {r.cached_tokens:>11,} "
                f"{r.uncached_tokens:>10,} {r.output_tokens:>9,} {r.edits:>5} {final:>7} "
                f"{r.cost_usd:>8.3f} {ratio:>11.2f}×"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def cheapest(rows: Sequence[Row]) -> str:
    """The strategy that finished correctly on every shape run for the least money in all."""
    shapes = {r.shape for r in rows}
    totals: dict[str, float] = {}
    for name in dict.fromkeys(r.strategy for r in rows):
        mine = [r for r in rows if r.strategy == name]
        if {r.shape for r in mine} == shapes and all(r.finished and r.correct for r in mine):
            totals[name] = sum(r.cost_usd for r in mine)
    if not totals:
        return "no strategy finished correctly on every shape"
    ranked = ", ".join(f"{n} ${c:.3f}" for n, c in sorted(totals.items(), key=lambda t: t[1]))
    return f"finished correctly on every shape ({', '.join(sorted(shapes))}), cost in all: {ranked}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench long_search", description=__doc__)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument(
        "--shape", nargs="+", choices=list(SHAPES), default=list(SHAPES), help="searches to run"
    )
    parser.add_argument("--strategy", action="append", help="run only these (repeatable)")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    scenarios = [SHAPES[shape](args.pages) for shape in args.shape]
    rows = [row for s in scenarios for row in anyio.run(run_all, s, args.strategy)]
    print(table(rows))
    print("\n" + cheapest(rows))
    for scenario in scenarios:
        final = anyio.run(final_answer_call, scenario)
        print(
            f"\n{final.shape}: final-answer call after {final.steps - 1} steps (step cap "
            f"{final.steps}): prompt {final.prompt_tokens:,} tokens, {final.cached_tokens:,} "
            f"cached: ${final.cost_usd:.4f}; with the tools dropped (nothing cached): "
            f"${final.cost_without_tools_usd:.4f} "
            f"({final.cost_without_tools_usd / final.cost_usd:.1f}x)"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(r) for r in rows], out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
