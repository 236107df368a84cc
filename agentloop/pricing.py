"""Rate cards: dollars per million tokens, and the cost of a ``Usage``."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Usage


@dataclass(frozen=True, slots=True)
class RateCard:
    """USD per million tokens. Reasoning tokens are billed as output."""

    input_per_m: float
    cached_input_per_m: float
    output_per_m: float

    def cost(self, usage: Usage) -> float:
        return (
            usage.uncached_input_tokens * self.input_per_m
            + usage.cached_input_tokens * self.cached_input_per_m
            + usage.output_tokens * self.output_per_m
        ) / 1_000_000


# Seed 001 (2026-05-20): kimi-k2.6 cache miss $0.95/M, cache hit $0.16/M, output $4.00/M.
KIMI_K2_6 = RateCard(input_per_m=0.95, cached_input_per_m=0.16, output_per_m=4.00)

RATE_CARDS: dict[str, RateCard] = {
    "kimi-k2.6": KIMI_K2_6,
}

FREE = RateCard(0.0, 0.0, 0.0)


def rate_card_for(model: str) -> RateCard | None:
    """The known rate card of ``model``, or None when we do not know its price."""
    return RATE_CARDS.get(model)
