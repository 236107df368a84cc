"""The token-room arithmetic of budget.py, as a pure function."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agentloop import Budget
from agentloop.budget import Room, Spent, context_line, fit_call, room_for
from agentloop.pricing import KIMI_K2_6, RateCard


def test_the_window_leaves_what_the_prompt_does_not_use() -> None:
    room = room_for(Budget(), prompt=200_000, context_window=262_144)
    assert room == Room(62_144, None, None, "context_window") and room.tokens == 62_144


def test_total_tokens_is_the_trajectory_ceiling() -> None:
    room = room_for(Budget(total_tokens=60_000), prompt=50_000, context_window=262_144)
    assert room.tokens == 10_000 and room.binding == "total_tokens"


def test_billed_tokens_count_what_was_billed_before() -> None:
    room = room_for(
        Budget(max_billed_tokens=100_000),
        prompt=30_000,
        context_window=262_144,
        spent=Spent(billed_tokens=60_000),
    )
    assert room.spend == 10_000 and room.binding == "max_billed_tokens"


def test_cost_prices_the_prompt_uncached_and_the_output_in_full() -> None:
    card = RateCard(input_per_m=1.0, cached_input_per_m=0.1, output_per_m=10.0)
    # $1 left; a 100K prompt costs $0.10 uncached: $0.90 buys 90,000 output tokens
    room = room_for(Budget(max_cost_usd=1.0), prompt=100_000, context_window=10**9, rate_card=card)
    assert room.spend == 89_999 and room.binding == "max_cost_usd"  # never a float rounding over
    cached = room_for(
        Budget(max_cost_usd=1.0),
        prompt=100_000,
        context_window=10**9,
        rate_card=card,
        cached_prefix=100_000,
    )
    assert cached.spend == 98_999  # the cached prefix at $0.1/M: $0.01


def fit(kind: str, budget: Budget, prompt: int, wanted: int, floor: int, **kw: Any) -> int | None:
    return fit_call(
        budget, kind, prompt=prompt, wanted=wanted, floor=floor, context_window=262_144, **kw
    ).max_tokens  # type: ignore[arg-type]


def test_a_step_needs_its_whole_budget_and_room_for_a_final_answer_after() -> None:
    budget = Budget(max_billed_tokens=100_000)
    # 5K prompt + 32K step = 37K billed; a final answer after it: 37K prompt + 16K = 53K
    assert fit("step", budget, 5_000, 32_000, 16_000, spent=Spent(10_000)) == 32_000
    # 1K more spent and the final answer would no longer fit: stop now, answer with what is left
    assert fit("step", budget, 5_000, 32_000, 16_000, spent=Spent(11_000)) is None
    assert fit("final", budget, 5_000, 32_000, 16_000, spent=Spent(11_000)) == 32_000
    no_final = budget.with_(final_answer_on_limit=False)
    assert fit("step", no_final, 5_000, 32_000, 16_000, spent=Spent(11_000)) == 32_000
    # a final answer (or a retry) shrinks to fit, down to the floor
    assert fit("final", budget, 10_000, 32_000, 16_000, spent=Spent(70_000)) == 20_000
    assert fit("extra", budget, 10_000, 32_000, 16_000, spent=Spent(80_000)) is None


def test_the_window_shrinks_any_call_down_to_the_floor() -> None:
    assert fit("step", Budget(), 242_144, 32_000, 16_000) == 20_000
    assert fit("step", Budget(), 250_000, 32_000, 16_000) is None


def test_total_tokens_shrinks_a_step_and_keeps_a_final_answer_in_reach() -> None:
    budget = Budget(total_tokens=100_000)
    assert fit("step", budget, 60_000, 32_000, 16_000) == 24_000  # 16K left for an answer
    assert fit("step", budget, 70_000, 32_000, 16_000) is None
    assert fit("final", budget, 70_000, 32_000, 16_000) == 30_000
    no_final = budget.with_(final_answer_on_limit=False)
    assert fit("step", no_final, 70_000, 32_000, 16_000) == 30_000


def test_every_call_asks_for_at_least_the_floor() -> None:
    assert fit("step", Budget(), 1_000, 4_000, 16_000) == 16_000


def test_which_limit_stops_a_call_is_named() -> None:
    card = RateCard(1.0, 0.1, 10.0)
    cost = fit_call(
        Budget(max_cost_usd=0.1, max_billed_tokens=10**6),
        "step",
        prompt=1_000,
        wanted=32_000,
        floor=1,
        context_window=262_144,
        rate_card=card,
    )
    assert cost.max_tokens is None and cost.stop == "cost_budget"
    assert cost.room.binding == "max_cost_usd"


def test_the_context_line_leaves_room_for_a_step_and_a_final_answer() -> None:
    line = context_line(Budget(), context_window=262_144, step_tokens=32_000, floor=16_000)
    assert line == 230_144
    budget = Budget(total_tokens=100_000)
    assert context_line(budget, context_window=262_144, step_tokens=32_000, floor=16_000) == 52_000


@given(
    prompt=st.integers(0, 300_000),
    window=st.integers(1, 300_000),
    total=st.none() | st.integers(1, 300_000),
    billed_limit=st.none() | st.integers(1, 2_000_000),
    billed=st.integers(0, 2_000_000),
    cost_limit=st.none() | st.floats(0.0, 5.0),
    cost=st.floats(0.0, 5.0),
    cached=st.integers(0, 300_000),
    wanted=st.integers(1, 100_000),
    floor=st.sampled_from([1, 16_000]),
    full=st.booleans(),
)
def test_a_fitted_call_never_exceeds_any_limit(
    prompt: int,
    window: int,
    total: int | None,
    billed_limit: int | None,
    billed: int,
    cost_limit: float | None,
    cost: float,
    cached: int,
    wanted: int,
    floor: int,
    full: bool,
) -> None:
    budget = Budget(total_tokens=total, max_billed_tokens=billed_limit, max_cost_usd=cost_limit)
    room = room_for(
        budget,
        prompt=prompt,
        context_window=window,
        spent=Spent(billed, cost),
        rate_card=KIMI_K2_6,
        cached_prefix=cached,
    )
    fitted = fit_call(
        budget,
        "step" if full else "final",
        prompt=prompt,
        wanted=wanted,
        floor=floor,
        context_window=window,
        spent=Spent(billed, cost),
        rate_card=KIMI_K2_6,
        cached_prefix=cached,
    )
    tokens = fitted.max_tokens
    if tokens is None:
        return
    assert tokens >= floor
    assert prompt + tokens <= window
    if total is not None:
        assert prompt + tokens <= total
    if billed_limit is not None:
        assert billed + prompt + tokens <= billed_limit
    if cost_limit is not None:
        hit = min(cached, prompt)
        worst = (
            (prompt - hit) * KIMI_K2_6.input_per_m
            + hit * KIMI_K2_6.cached_input_per_m
            + tokens * KIMI_K2_6.output_per_m
        ) / 1e6
        assert cost + worst <= cost_limit + 1e-12
    if full:
        reserve = floor if budget.final_answer_on_limit else 0
        if total is not None:  # a step leaves the floor of total_tokens for a final answer
            assert prompt + tokens + reserve <= total
        if room.spend is not None:  # and is sent whole within the spend limits
            trajectory = 10**9 if room.trajectory is None else room.trajectory - reserve
            assert tokens == min(max(wanted, floor), room.window, trajectory)
