"""Budgets and step caps, and the benchmark presets of seed 000.

Names users see:

- ``per_step_tokens``: the output budget of one model call (reasoning + answer); clamped to what
  is left of the window and of ``total_tokens``.
- ``total_tokens``: the length the run's trajectory may reach — prompt + completion of a step —
  which is what seed 000's "total max tokens" means (its pairs such as "per turn 96k, total 96k"
  only make sense that way). Context management keeps a long run under it.
- ``max_billed_tokens``: the sum of input + output tokens billed over all steps.
- ``max_cost_usd``, ``max_steps``, ``deadline_s``.

Every limit is checked *before* a call, against that call's worst case (``room_for``): no
request is sent that could take the trajectory past ``total_tokens``, the billed sum past
``max_billed_tokens`` or the spend past ``max_cost_usd``, whatever the model then does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .pricing import RateCard
    from .result import StopReason


@dataclass(frozen=True, slots=True)
class Budget:
    max_steps: int | None = 50
    per_step_tokens: int | None = None  # None: the model client's default (32K for Kimi)
    total_tokens: int | None = None
    max_billed_tokens: int | None = None
    max_cost_usd: float | None = None
    deadline_s: float | None = None
    final_answer_on_limit: bool = True

    def with_(self, **changes: object) -> Budget:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def preset(cls, name: str) -> Budget:
        """The recommended settings of a benchmark row of seed 000 (kimi-k2.6 table)."""
        key = name.lower().replace("_", "-").replace(" ", "-")
        if key not in PRESETS:
            raise ConfigurationError(
                f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}"
            )
        return PRESETS[key]


K = 1000
_AGENT = Budget(max_steps=300, per_step_tokens=48 * K, total_tokens=256 * K)
_PYTHON = Budget(max_steps=50, per_step_tokens=64 * K, total_tokens=256 * K)
_SWE = Budget(max_steps=300, per_step_tokens=32 * K, total_tokens=256 * K)
_SINGLE = Budget(max_steps=1, per_step_tokens=96 * K, total_tokens=None)

PRESETS: dict[str, Budget] = {
    # Agent rows: per step 48k, total 256k, 300 steps
    **{
        n: _AGENT
        for n in (
            "hle-tools",
            "hle-full-tools",
            "browsecomp",
            "deepsearchqa",
            "widesearch",
            "toolathlon",
            "mcpmark",
            "claw-eval",
            "apex-agents",
        )
    },
    # Multi-modal rows with python: per step 64k, total 256k, 50 steps
    **{
        n: _PYTHON
        for n in ("mmmu-pro-python", "charxiv-python", "mathvision-python", "vstar-python")
    },
    # Coding rows: per step 32k, total 256k, 300 steps
    **{n: _SWE for n in ("swe-bench-pro", "swe-bench-multilingual", "swe-bench-verified")},
    # Single-answer rows: max tokens 96k
    **{
        n: _SINGLE
        for n in (
            "aime",
            "hmmt",
            "imo-answerbench",
            "hle",
            "gpqa-diamond",
            "mmmu-pro",
            "charxiv",
            "mathvision",
            "scicode",
            "ojbench",
            "livecodebench",
        )
    },
    "terminal-bench": Budget(max_steps=None, per_step_tokens=256 * K, total_tokens=None),
}


# -- the room each call gets -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Spent:
    """What the run has used so far, as the budgets count it."""

    billed_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Room:
    """Output tokens the limits leave for one call, given its prompt: ``window`` is what the
    model's context window leaves, ``trajectory`` what ``total_tokens`` leaves, ``spend`` what
    ``max_billed_tokens`` and ``max_cost_usd`` leave (None: not set); ``binding`` names the
    tightest limit."""

    window: int
    trajectory: int | None
    spend: int | None
    binding: str

    @property
    def tokens(self) -> int:
        return min(r for r in (self.window, self.trajectory, self.spend) if r is not None)


@dataclass(frozen=True, slots=True)
class Fit:
    """The ``max_tokens`` of a call, or None when it may not be sent; ``room`` says why."""

    max_tokens: int | None
    room: Room

    @property
    def stop(self) -> StopReason:
        return "cost_budget" if self.room.binding == "max_cost_usd" else "token_budget"


CallKind = Literal["step", "final", "extra"]


def room_for(
    budget: Budget,
    *,
    prompt: int,
    context_window: int,
    spent: Spent = Spent(),
    rate_card: RateCard | None = None,
    cached_prefix: int = 0,
) -> Room:
    """The worst case of one call is its whole prompt plus its whole ``max_tokens``: that much
    joins the trajectory and is billed, and is paid for with the output priced in full. The
    prompt is priced uncached except ``cached_prefix``, the prefix the previous call reported
    as cached."""
    window = context_window - prompt
    trajectory = None if budget.total_tokens is None else budget.total_tokens - prompt
    spend, spend_limit = _spend_room(budget, prompt, spent, rate_card, cached_prefix)
    binding = "context_window"
    tightest = window
    if trajectory is not None and trajectory < tightest:
        binding, tightest = "total_tokens", trajectory
    if spend is not None and spend < tightest:
        binding = spend_limit
    return Room(window, trajectory, spend, binding)


def _spend_room(
    budget: Budget, prompt: int, spent: Spent, rate_card: RateCard | None, cached_prefix: int
) -> tuple[int | None, str]:
    rooms: list[tuple[int, str]] = []
    if budget.max_billed_tokens is not None:
        left = budget.max_billed_tokens - spent.billed_tokens - prompt
        rooms.append((left, "max_billed_tokens"))
    if budget.max_cost_usd is not None and rate_card is not None:
        dollars = budget.max_cost_usd - spent.cost_usd
        dollars -= prompt_cost(rate_card, prompt, cached_prefix)
        if rate_card.output_per_m > 0:
            # a hair under the exact quotient, so float rounding never lands a token over
            tokens = math.floor(dollars * 1_000_000 / rate_card.output_per_m * (1 - 1e-12))
            rooms.append((tokens, "max_cost_usd"))
        elif dollars < 0:
            rooms.append((-1, "max_cost_usd"))
    if not rooms:
        return None, ""
    return min(rooms)


def prompt_cost(rate_card: RateCard, prompt: int, cached_prefix: int) -> float:
    cached = max(0, min(cached_prefix, prompt))
    return (
        (prompt - cached) * rate_card.input_per_m + cached * rate_card.cached_input_per_m
    ) / 1_000_000


def fit_call(
    budget: Budget,
    kind: CallKind,
    *,
    prompt: int,
    wanted: int,
    floor: int,
    context_window: int,
    spent: Spent = Spent(),
    rate_card: RateCard | None = None,
    cached_prefix: int = 0,
    final_prompt: int = 0,
) -> Fit:
    """The ``max_tokens`` of the next call within every limit; the one place that decides it.

    Every call asks for at least ``floor`` (Kimi gives a thinking call 16,000 tokens whatever
    it asks for), and is shrunk to what the window and ``total_tokens`` leave, down to the
    floor, as every chat client clamps ``max_tokens``. By ``kind``:

    - ``"step"``, an ordinary step: when the run ends limits with a final answer
      (``final_answer_on_limit``), it leaves the floor of ``total_tokens`` for that answer; and
      it is sent only with its whole ``wanted`` budget within the spend limits
      (``max_billed_tokens``, ``max_cost_usd``), and only if a final answer at the floor would
      still be affordable after its worst case. So a step the budgets stop is followed by an
      answer rather than by nothing.
    - ``"final"`` and ``"extra"`` (the final answer; a length or empty-answer retry; a
      summary): shrunk to whatever every limit leaves, down to the floor.

    ``final_prompt`` is what the request for a final answer adds to the prompt; the results of
    the step's tool calls are not known beforehand and are not reserved for.
    """
    wanted = max(wanted, floor)
    room = room_for(
        budget,
        prompt=prompt,
        context_window=context_window,
        spent=spent,
        rate_card=rate_card,
        cached_prefix=cached_prefix,
    )
    if kind != "step":
        tokens = min(wanted, room.tokens)
        return Fit(tokens if tokens >= floor else None, room)
    reserve = floor + final_prompt if budget.final_answer_on_limit else 0
    tokens = min(wanted, room.window)
    if room.trajectory is not None:
        tokens = min(tokens, room.trajectory - reserve)
    if tokens < floor:
        return Fit(None, room)
    if room.spend is not None:
        if room.spend < wanted:
            return Fit(None, room)
        if reserve:
            worst = prompt_cost(rate_card, prompt, cached_prefix) if rate_card else 0.0
            if rate_card is not None:
                worst += tokens * rate_card.output_per_m / 1_000_000
            after = Spent(spent.billed_tokens + prompt + tokens, spent.cost_usd + worst)
            final, name = _spend_room(
                budget, prompt + tokens + final_prompt, after, rate_card, cached_prefix
            )
            if final is not None and final < floor:
                return Fit(None, Room(room.window, room.trajectory, final, name))
    return Fit(tokens, room)


def context_line(
    budget: Budget, *, context_window: int, step_tokens: int, floor: int, final_prompt: int = 0
) -> int:
    """The most a prompt may hold before context management must act: room for one full step
    in the window, and in ``total_tokens`` room for a final answer after it too."""
    line = context_window - step_tokens
    if budget.total_tokens is not None:
        reserve = floor + final_prompt if budget.final_answer_on_limit else 0
        line = min(line, budget.total_tokens - step_tokens - reserve)
    return line
