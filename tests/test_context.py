"""Context management: strategy invariants, and whole runs over HTTP against the simulator."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentloop import Agent, Budget, Tool, tool
from agentloop.context import (
    NOTES_MARK,
    STUB_MARK,
    SUMMARY_MARK,
    ClearToolResults,
    Compact,
    ContextStrategy,
    DiscardAll,
    TruncateResults,
    default_strategies,
    split_head,
)
from agentloop.events import ContextEdited
from agentloop.messages import Message
from agentloop.models.openai import estimate_message_tokens
from agentloop.sim import ResearchPolicy
from bench.long_search import Scenario, run_one
from tests.conftest import kimi

pytestmark = pytest.mark.anyio


class FakeWindow:
    """A ContextWindow with a summariser that records what it was sent."""

    def __init__(self, messages: list[Message], limit: int, window: int | None = None) -> None:
        self.messages = messages
        self._limit = limit
        self._window = window or limit * 2
        self.sent: list[list[Message]] = []

    @property
    def tokens(self) -> int:
        return self.estimate(self.messages)

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def window(self) -> int:
        return self._window

    def estimate(self, messages: Sequence[Message]) -> int:
        return sum(estimate_message_tokens(m) for m in messages)

    def replace(self, messages: list[Message]) -> None:
        self.messages[:] = messages

    async def summarise(self, messages: list[Message], max_tokens: int) -> str:
        self.sent.append(messages)
        return "FACT alpha = X1"


def history(sizes: list[tuple[int, int]]) -> list[Message]:
    """system + task, then per turn (calls, result chars): an assistant message with that many
    tool calls (with reasoning) and one result each."""
    messages: list[Message] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the task"},
    ]
    n = 0
    for turn, (calls, chars) in enumerate(sizes):
        ids = [f"functions.search:{n + k}" for k in range(calls)]
        n += calls
        messages.append(
            {
                "role": "assistant",
                "content": f"turn {turn}",
                "reasoning_content": f"thinking {turn}",
                "tool_calls": [
                    {
                        "id": i,
                        "type": "function",
                        "function": {"name": "search", "arguments": json.dumps({"page": turn})},
                    }
                    for i in ids
                ],
            }
        )
        for i in ids:
            messages.append({"role": "tool", "tool_call_id": i, "content": "x" * chars})
    return messages


def assert_well_formed(before: list[Message], after: list[Message]) -> None:
    """The task stays, every tool call keeps its result right after it, and kept assistant
    messages keep their reasoning."""
    head = split_head(before)
    assert after[:head] == before[:head]
    pending: set[str] = set()
    for message in after:
        if message.get("role") == "tool":
            assert message["tool_call_id"] in pending, "a tool result lost its assistant message"
            pending.discard(message["tool_call_id"])
            continue
        assert not pending, "an assistant message lost a tool result"
        if message.get("role") == "assistant":
            original = next(
                m
                for m in before
                if m.get("role") == "assistant" and m["content"] == message["content"]
            )
            assert message.get("reasoning_content") == original.get("reasoning_content")
            pending = {c["id"] for c in message.get("tool_calls") or ()}
    assert not pending or after[-1].get("role") == "tool"


STRATEGIES: list[ContextStrategy] = [
    ClearToolResults(trigger=0.1, keep=2, clear_at_least=0),
    Compact(trigger=0.1, keep_turns=2),
    Compact(trigger=0.1, keep_turns=0),
    DiscardAll(trigger=0.1),
    *default_strategies(),
]


@given(
    sizes=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 4000)), min_size=1, max_size=12),
    which=st.integers(0, len(STRATEGIES) - 1),
)
@settings(max_examples=150, deadline=None)
async def test_every_strategy_keeps_pairs_whole_and_the_task(
    sizes: list[tuple[int, int]], which: int
) -> None:
    before = history(sizes)
    window = FakeWindow(json.loads(json.dumps(before)), limit=2_000)
    await STRATEGIES[which].manage(window)
    assert_well_formed(before, window.messages)


async def test_clear_tool_results_keeps_the_last_n_and_says_how_to_get_the_rest_back() -> None:
    before = history([(1, 8000)] * 6)
    window = FakeWindow(json.loads(json.dumps(before)), limit=20_000)
    edit = await ClearToolResults(trigger=0.4, keep=2, clear_at_least=0.1).manage(window)
    assert edit is not None and edit.tokens_after < edit.tokens_before
    tool_messages = [m for m in window.messages if m["role"] == "tool"]
    assert [m["content"].startswith(STUB_MARK) for m in tool_messages] == [True] * 4 + [False] * 2
    assert 'call search with {"page": 0}' in tool_messages[0]["content"]
    assert "about 2,00" in tool_messages[0]["content"]  # how big it was
    # under the trigger, or too little to free: the history is left alone (the cache stays)
    small = history([(1, 100)] * 6)
    assert await ClearToolResults(trigger=0.4).manage(FakeWindow(small, 20_000)) is None
    again = FakeWindow(window.messages, limit=2_000)
    assert await ClearToolResults(trigger=0.1, keep=2, clear_at_least=0.5).manage(again) is None


def test_truncate_results_keeps_head_and_tail() -> None:
    strategy = TruncateResults(max_tokens=100, head=0.75)
    text = "H" * 500 + "M" * 1000 + "T" * 500
    cut = strategy.shape_result(text, "fetch", "{}")
    assert cut.startswith("H" * 300) and cut.endswith("T" * 100)
    assert "1,600 characters" in cut and "fetch" in cut
    assert strategy.shape_result("short", "fetch", "{}") == "short"


async def test_compaction_call_respects_the_window() -> None:
    before = history([(1, 40_000)] * 8)  # ~80K tokens, window 30K
    window = FakeWindow(json.loads(json.dumps(before)), limit=20_000, window=30_000)
    edit = await Compact(trigger=0.5, max_summary_tokens=4_000).manage(window)
    assert edit is not None
    (sent,) = window.sent
    assert window.estimate(sent) <= 30_000 - 4_000
    assert sent[-1]["content"].startswith("Context is running out")
    assert sent[:2] == before[:2]
    assert window.messages[2]["content"].startswith(SUMMARY_MARK)
    assert "FACT alpha = X1" in window.messages[2]["content"]


async def test_discard_all_restarts_from_the_task_and_notes() -> None:
    before = history([(1, 4000)] * 5)
    window = FakeWindow(json.loads(json.dumps(before)), limit=1_000)
    await DiscardAll(trigger=0.5).manage(window)
    assert window.messages[:2] == before[:2] and len(window.messages) == 3
    assert window.messages[2]["content"].startswith(NOTES_MARK)
    assert "turn 0" in window.messages[2]["content"] and "turn 4" in window.messages[2]["content"]


# -- whole runs over HTTP ----------------------------------------------------------------------
SMALL = Scenario(
    pages=40,
    min_tokens=500,
    max_tokens=2_000,
    # 16K per step: a thinking Kimi call gets at least 16,000 tokens whatever it asks for
    budget=Budget(max_steps=120, per_step_tokens=16_000, total_tokens=80_000),
)


def archive_search(scenario: Scenario) -> Tool:
    @tool
    def search(query: str, page: int) -> str:
        """Search.

        Args:
            query: what.
            page: which page.
        """
        return scenario.page_text(page)

    return search


async def test_default_finishes_correctly_where_no_management_overflows() -> None:
    none = await run_one("none", list, SMALL)
    default = await run_one("default", default_strategies, SMALL)
    assert none.stop_reason == "token_budget" and not none.correct
    assert default.stop_reason == "completed" and default.correct and default.edits > 0
    compact = await run_one("compact", lambda: [Compact(trigger=0.85)], SMALL)
    assert compact.correct
    assert default.cost_usd < compact.cost_usd


SMALL_CLUSTERED = replace(
    SMALL,
    shape="clustered",
    facts_at=(0.03, 0.06, 0.09, 0.12),
    reasoning_tokens=1_000,
    max_reasoning_tokens=3_000,
)


async def test_the_default_is_the_cheaper_finisher_on_both_search_shapes() -> None:
    others: dict[str, Callable[[], list[ContextStrategy]]] = {
        "former default": lambda: [
            TruncateResults(),
            ClearToolResults(),
            Compact(trigger=0.7, keep_turns=1),
        ],
        "compact at 85%": lambda: [Compact(trigger=0.85)],
    }
    for scenario in (SMALL, SMALL_CLUSTERED):
        default = await run_one("default", default_strategies, scenario)
        assert default.finished and default.correct, scenario.shape
        for name, make in others.items():
            row = await run_one(name, make, scenario)
            assert row.finished and row.correct, (scenario.shape, name)
            assert default.cost_usd < row.cost_usd, (scenario.shape, name)
    # long reasoning, kept with every turn: clearing results alone runs out of room; the run
    # still answers by its final-answer call, which is billed with the rest
    cleared = await run_one("clear", lambda: [ClearToolResults()], SMALL_CLUSTERED)
    assert cleared.stop_reason == "token_budget" and not cleared.finished and cleared.correct
    assert 0 < cleared.final_usd < cleared.cost_usd


def test_research_reasoning_varies_per_page_within_its_range() -> None:
    policy = ResearchPolicy(pages=10, reasoning_tokens=1_000, max_reasoning_tokens=3_000, seed=7)
    lengths = [len(policy._think("Page read.", page)) // 4 for page in range(1, 30)]
    assert all(990 <= n <= 3_000 for n in lengths) and len(set(lengths)) > 10
    assert policy._think("Page read.", 5) == policy._think("Page read.", 5)
    plain = ResearchPolicy(pages=10)  # the default: 250 tokens every step
    assert {len(plain._think("Page read.", page)) // 4 for page in range(1, 10)} == {247}


async def test_the_default_compacts_a_history_heavy_with_reasoning(sim_factory: Any) -> None:
    # big reasoning per step, kept with every turn: the summary must carry the facts
    sim = await sim_factory(policy=ResearchPolicy(pages=40, reasoning_tokens=600))
    scenario = SMALL
    agent = Agent(kimi(sim), tools=[archive_search(scenario)], budget=scenario.budget)
    stream = agent.stream("report the codes alpha, bravo, charlie and delta")
    edits = [e async for e in stream if isinstance(e, ContextEdited)]
    result = stream.result
    assert result is not None and result.stop_reason == "completed"
    assert {e.strategy for e in edits} == {"compact"}
    for key, value in scenario.expected().items():
        assert f"{key} = {value}" in result.output
    compaction = next(e for e in edits if e.strategy == "compact")
    assert compaction.usage.output_tokens > 0  # the summary call is billed to the run
    # the summary call sent the same tools and history prefix, so most of it was a cache hit
    summary_calls = [
        b
        for b in sim.stats.bodies
        if "write a summary" in str(b["messages"][-1].get("content")).lower()
    ]
    assert summary_calls and all(b.get("tools") for b in summary_calls)
    assert compaction.usage.cached_input_tokens > compaction.usage.input_tokens // 2
    assert all(s.usage.input_tokens + s.max_tokens <= 80_000 for s in result.steps)


class Recorder:
    """A strategy that only records the size it is shown before each step."""

    name = "recorder"

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def shape_result(self, content: str, tool_name: str, arguments: str) -> str:
        return content

    async def manage(self, ctx: Any) -> None:
        self.sizes.append(ctx.tokens)


async def test_prompt_size_is_measured_from_usage(sim_factory: Any) -> None:
    sim = await sim_factory(policy=ResearchPolicy(pages=6))
    search = archive_search(Scenario(pages=6, min_tokens=100, max_tokens=200))

    recorder = Recorder()
    # an estimator that is 40% low: from step 2 on, the size comes from the server's usage
    model = kimi(sim)
    estimate = model.estimate_tokens
    model.estimate_tokens = lambda m, t=(): int(estimate(m, t) * 0.6)  # type: ignore[method-assign]
    result = await Agent(model, tools=[search], context=[recorder]).run("report the codes")
    actual = [s.usage.input_tokens for s in result.steps]
    assert len(recorder.sizes) == len(actual) == 7
    assert recorder.sizes[0] < actual[0] * 0.7  # step 1: only the (bad) estimate exists
    for guess, real in zip(recorder.sizes[2:], actual[2:], strict=True):
        # the measured part is exact; only the newest tool result is (badly) estimated
        assert abs(guess - real) / real < 0.12
