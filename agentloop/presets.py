"""Seed 000's sampling settings per benchmark preset: temperature, top_p, thinking and the
recommended number of runs (the kimi-k2.6 table). The budgets of the same rows are
``budget.PRESETS``; this module names the same presets and adds what a batch needs to run them
the way Moonshot's numbers were measured.

Every K2.6 row says temperature 1.0, top_p 0.95 and ``thinking={"type": "enabled"}``, which is
also the fixed sampler of a thinking Kimi call (``KimiModel`` sends none of them); the rows
differ in their recommended runs. A benchmark that is not listed gets seed 000's advice for
unlisted ones (temperature 1.0, top_p 0.95) and one run.
"""

from __future__ import annotations

from dataclasses import dataclass

from .budget import PRESETS
from .errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 0.95
    thinking: bool = True
    runs: int = 1  # seed 000's "recommended runs"


DEFAULT = Sampling()

_RUNS: dict[str, int] = {
    # Agent rows
    "hle-tools": 1,
    "hle-full-tools": 1,
    "browsecomp": 1,
    "deepsearchqa": 1,
    "widesearch": 4,
    "toolathlon": 4,
    "mcpmark": 4,
    "claw-eval": 4,
    "apex-agents": 4,
    # Multi-modal rows
    "mmmu-pro": 3,
    "mmmu-pro-python": 3,
    "charxiv": 3,
    "charxiv-python": 3,
    "mathvision": 3,
    "mathvision-python": 3,
    "vstar-python": 3,
    # Coding rows
    "terminal-bench": 3,
    "swe-bench-pro": 5,
    "swe-bench-multilingual": 5,
    "swe-bench-verified": 5,
    "scicode": 4,
    "ojbench": 8,
    "livecodebench": 1,
    # Math rows
    "aime": 32,
    "hmmt": 32,
    "imo-answerbench": 4,
    # Knowledge rows
    "hle": 1,
    "gpqa-diamond": 8,
}

SAMPLING: dict[str, Sampling] = {name: Sampling(runs=runs) for name, runs in _RUNS.items()}


def preset_key(name: str) -> str:
    """A preset name as ``Budget.preset`` spells it (case, ``_`` and spaces folded to ``-``)."""
    return name.lower().replace("_", "-").replace(" ", "-")


def sampling(name: str | None) -> Sampling:
    """The sampling settings of preset ``name`` (``DEFAULT`` for None)."""
    if name is None:
        return DEFAULT
    key = preset_key(name)
    if key not in SAMPLING or key not in PRESETS:
        raise ConfigurationError(
            f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}"
        )
    return SAMPLING[key]


__all__ = ["DEFAULT", "SAMPLING", "Sampling", "preset_key", "sampling"]
