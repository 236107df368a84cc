"""Time as a parameter: the limiter, the retry loop and the simulator read time only from a Clock,
so tests can run a minute of rate-limit in a fraction of a second (``ScaledClock``) or exactly
(``ManualClock``)."""

from __future__ import annotations

import time
from typing import Protocol

import anyio
import anyio.lowlevel


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Real time."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class ScaledClock:
    """Real time sped up ``factor`` times: one simulated minute lasts 60/factor real seconds.

    Two ScaledClocks with the same factor agree on ``now()`` (both read the process-independent
    monotonic clock), so a client and a simulator in another process can share a time scale.
    """

    def __init__(self, factor: float) -> None:
        if factor <= 0:
            raise ValueError("factor must be positive")
        self.factor = factor

    def now(self) -> float:
        return time.monotonic() * self.factor

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self.factor)


class ManualClock:
    """Virtual time: ``sleep`` advances the clock at once and records the wait."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        self._now += seconds
        await anyio.lowlevel.checkpoint()


DEFAULT_CLOCK: Clock = MonotonicClock()
