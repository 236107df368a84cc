"""Token estimates calibrated from the usage a server reports (issue 13).

The default estimate is about four bytes of serialised JSON per token. Real tokenizers and chat
templates differ: a small model's template and tool preamble add a fixed cost to every prompt
(Qwen2.5 behind llama.cpp: ~150 tokens over three short tools, so short prompts ran ~18% over
the default estimate), and prose packs more bytes per token than JSON does. A ``Calibrator``
learns, per model client, ``prompt_tokens ~ ratio * request_bytes + overhead`` from every
response that reports ``prompt_tokens``, against the bytes of the request body it answered.

The fit is a least-squares line over (bytes, prompt_tokens) pairs in relative terms (each pair
weighted by 1 / prompt_tokens², so a short prompt counts as much as a long one: budgets care
about the error in percent), kept as seven running sums: O(1) per observation, no history
walked. Older pairs fade by ``DECAY`` per new one, so a server swapped behind the same URL is
followed. Two ridge terms keep the line sane while the data are few or all of one size: the
ratio is pulled toward the default (``RATIO_PRIOR``) and the overhead toward none
(``OVERHEAD_PRIOR``, relative to the mean prompt seen), so an overhead is learnt only when the
prompts of different sizes agree on it. Then the ratio is clamped to ``RATIO_RANGE`` and the
overhead to ``OVERHEAD_RANGE``, and a pair whose tokens per byte is implausible, or whose
prompt is under ``MIN_BYTES``, is ignored: no report can make an estimate absurd.
"""

from __future__ import annotations

import math

DEFAULT_RATIO = 0.25  # tokens per byte of the uncalibrated estimate
RATIO_RANGE = (0.1, 0.75)  # 10 down to ~1.3 bytes per token
OVERHEAD_RANGE = (0.0, 2048.0)  # tokens every whole prompt carries (template, tool preamble)
PLAUSIBLE = (0.02, 2.0)  # tokens per byte outside this: a report about something else
# a smaller prompt is mostly message framing, whose cost says little about text: learning
# from "hi" (5 tokens for ~30 bytes) would shrink the estimate of a long history below the truth
MIN_BYTES = 512
DECAY = 0.9  # weight left to a pair after each newer one (~10 pairs in memory)
# ridge strengths, in units of one pair's squared relative error: a ratio twice the default
# costs as much as a pair 45% off; an overhead of the whole mean prompt, as a pair 70% off
RATIO_PRIOR = 0.2
OVERHEAD_PRIOR = 0.5


class Calibrator:
    """Learns tokens per request byte and a fixed per-prompt overhead from reported usage."""

    __slots__ = ("_sums", "observations", "overhead", "ratio")

    def __init__(self) -> None:
        # decayed sums: w, w*x, w*y, w*x*x, w*x*y (w = 1/y²), then the count and y plain
        self._sums = [0.0] * 7
        self.observations = 0  # pairs taken (not the ones ignored)
        self.ratio = DEFAULT_RATIO
        self.overhead = 0.0

    @property
    def calibrated(self) -> bool:
        """False until a report has been taken: until then the default estimate stands."""
        return self.observations > 0

    def observe(self, request_bytes: int, prompt_tokens: int) -> bool:
        """Take one response's reported ``prompt_tokens`` for a request body of
        ``request_bytes``; False (and nothing learnt) for a pair that cannot be right."""
        if request_bytes < MIN_BYTES or prompt_tokens <= 0:
            return False
        if not PLAUSIBLE[0] <= prompt_tokens / request_bytes <= PLAUSIBLE[1]:
            return False
        x, y = float(request_bytes), float(prompt_tokens)
        w = 1.0 / (y * y)
        sums = self._sums
        for i, value in enumerate((w, w * x, w * y, w * x * x, w * x * y, 1.0, y)):
            sums[i] = sums[i] * DECAY + value
        self.observations += 1
        self._solve()
        return True

    def _solve(self) -> None:
        sw, sx, sy, sxx, sxy, count, total = self._sums
        mean = total / count
        # normal equations of the weighted fit plus the two ridge terms
        a = sxx + RATIO_PRIOR / DEFAULT_RATIO**2
        d = sw + OVERHEAD_PRIOR / mean**2
        det = a * d - sx * sx
        ratio = (d * (sxy + RATIO_PRIOR / DEFAULT_RATIO) - sx * sy) / det if det > 0 else 0.0
        if not math.isfinite(ratio) or det <= 0:
            ratio = DEFAULT_RATIO
        ratio = min(max(ratio, RATIO_RANGE[0]), RATIO_RANGE[1])
        # the overhead that best fits the (possibly clamped) ratio
        overhead = (sy - ratio * sx) / d
        self.ratio = ratio
        self.overhead = min(max(overhead, OVERHEAD_RANGE[0]), OVERHEAD_RANGE[1])

    def tokens(self, nbytes: int, whole: bool) -> int:
        """The estimate for ``nbytes`` of request: a whole prompt carries the fixed overhead,
        a part of one (messages added since the last report) only its bytes' share."""
        estimate = self.ratio * nbytes + (self.overhead if whole else 0.0)
        return math.ceil(estimate) + 1

    def __repr__(self) -> str:
        return (
            f"Calibrator(ratio={self.ratio:.4f}, overhead={self.overhead:.1f}, "
            f"observations={self.observations})"
        )
