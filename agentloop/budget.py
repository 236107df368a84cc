"""Budgets and step caps, and the benchmark presets of seed 000.

Names users see:

- ``per_step_tokens``: the output budget of one model call (reasoning + answer); clamped to what
  is left of the window and of ``total_tokens``.
- ``total_tokens``: the length the run's trajectory may reach — prompt + completion of a step —
  which is what seed 000's "total max tokens" means (its pairs such as "per turn 96k, total 96k"
  only make sense that way). Context management keeps a long run under it.
- ``max_billed_tokens``: the sum of input + output tokens billed over all steps.
- ``max_cost_usd``, ``max_steps``, ``deadline_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import ConfigurationError


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
