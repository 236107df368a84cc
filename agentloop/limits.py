"""Client-side rate limiting: requests per minute, tokens per minute and concurrency.

Why not a leaky bucket (aiolimiter's ``AsyncLimiter``)? A bucket of capacity N per minute lets N
requests through at once and then one every 60/N seconds, so 51 requests land inside one
60-second window and a server that counts a sliding window (as Moonshot's does, and as every
fixed-window counter implies) answers 429. ``RateLimiter`` keeps a log of admissions instead and
admits a request only when the last ``window`` seconds hold fewer than ``rpm`` of them, which is
exact for sliding and fixed windows alike. Token use is reserved at admission (prompt estimate +
max_tokens) and reconciled with the usage the server reports.

One limiter is shared by every run that uses the same model client, and ``shared_limiter`` hands
the same one to every client built for the same base URL and key.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import weakref
from dataclasses import dataclass, field

import anyio

from .clock import DEFAULT_CLOCK, Clock


@dataclass(slots=True)
class _Charge:
    at: float
    tokens: int


@dataclass(slots=True)
class Permit:
    """One admitted request. Call ``reconcile`` with the billed tokens, then ``release``."""

    limiter: RateLimiter
    charge: _Charge
    waited: float
    released: bool = field(default=False)

    def reconcile(self, actual_tokens: int) -> None:
        self.limiter._reconcile(self.charge, actual_tokens)

    def touch(self) -> None:
        """Re-stamp the admission when the server answered: the server counted the request on
        arrival, which is after we admitted it, so our record must not expire before its."""
        self.limiter._touch(self.charge)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter._release()


class RateLimiter:
    """Admit requests within ``rpm``, ``tpm`` and ``max_concurrency`` (None means no limit)."""

    def __init__(
        self,
        rpm: int | None = 50,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        *,
        clock: Clock = DEFAULT_CLOCK,
        window: float = 60.0,
        margin: float = 0.5,
    ) -> None:
        if rpm is not None and rpm < 1:
            raise ValueError("rpm must be at least 1")
        self.rpm = rpm
        self.tpm = tpm
        self.max_concurrency = max_concurrency
        self.clock = clock
        # The server stamps a request when it arrives, a little after we admit it: keep each
        # admission in the log a little longer than the server does so the two never disagree.
        self.window = window + margin
        # Sorted admission times, and the token charges (each stamped like its request).
        self._requests: list[float] = []
        self._charges: list[_Charge] = []
        self._tokens_in_window = 0
        self._admission = anyio.Lock()
        self._freed = anyio.Event()  # set when a reconcile gives tokens back
        self._slots = anyio.Semaphore(max_concurrency) if max_concurrency else None
        self.admitted = 0
        self.total_wait = 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        cut = bisect.bisect_right(self._requests, horizon)
        if cut:
            del self._requests[:cut]
        if self._charges and self._charges[0].at <= horizon:
            kept = [c for c in self._charges if c.at > horizon]
            self._tokens_in_window = sum(c.tokens for c in kept)
            self._charges = kept

    def _wait_needed(self, tokens: int) -> float:
        now = self.clock.now()
        self._expire(now)
        wait = 0.0
        if self.rpm is not None and len(self._requests) >= self.rpm:
            wait = self._requests[len(self._requests) - self.rpm] + self.window - now
        if self.tpm is not None and self._tokens_in_window + tokens > self.tpm:
            excess = self._tokens_in_window + tokens - self.tpm
            for charge in sorted(self._charges, key=lambda c: c.at):
                excess -= charge.tokens
                if excess <= 0:
                    wait = max(wait, charge.at + self.window - now)
                    break
        # never spin: if the arithmetic says 0 but the window is full, wait a tick
        return max(0.0, wait) if wait > 0 or not self._full(tokens) else 1e-3

    def _full(self, tokens: int) -> bool:
        if self.rpm is not None and len(self._requests) >= self.rpm:
            return True
        return self.tpm is not None and self._tokens_in_window + tokens > self.tpm

    async def acquire(self, tokens: int = 0) -> Permit:
        """Wait until the request may be sent; ``tokens`` is its estimated total (in + out)."""
        if self.tpm is not None:
            tokens = min(tokens, self.tpm)
        start = self.clock.now()
        if self._slots is not None:
            await self._slots.acquire()
        try:
            async with self._admission:  # first come, first served
                while (wait := self._wait_needed(tokens)) > 0:
                    await self._sleep(wait)
                now = self.clock.now()
                bisect.insort(self._requests, now)
                charge = _Charge(now, tokens)
                self._charges.append(charge)
                self._tokens_in_window += tokens
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        waited = self.clock.now() - start
        self.admitted += 1
        self.total_wait += waited
        return Permit(self, charge, waited)

    async def _sleep(self, wait: float) -> None:
        """Sleep ``wait``, or less if a finished request gives reserved tokens back (a request
        reserves its whole max_tokens but is billed what it used; waiting for the reservation
        to expire would waste most of a TPM limit)."""
        if self.tpm is None:
            await self.clock.sleep(wait)
            return
        freed = self._freed

        async def wake() -> None:
            await freed.wait()
            group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(wake)
            await self.clock.sleep(wait)
            group.cancel_scope.cancel()

    def _reconcile(self, charge: _Charge, actual: int) -> None:
        if any(c is charge for c in self._charges):  # still inside the window
            self._tokens_in_window += actual - charge.tokens
        if actual < charge.tokens:
            self._freed.set()
            self._freed = anyio.Event()
        charge.tokens = actual

    def _touch(self, charge: _Charge) -> None:
        now = self.clock.now()
        index = bisect.bisect_left(self._requests, charge.at)
        if index < len(self._requests) and self._requests[index] == charge.at:
            del self._requests[index]
            bisect.insort(self._requests, now)
        charge.at = now

    def _release(self) -> None:
        if self._slots is not None:
            self._slots.release()


_shared: weakref.WeakValueDictionary[tuple[str, str], RateLimiter] = weakref.WeakValueDictionary()
_shared_lock = threading.Lock()


def shared_limiter(
    base_url: str,
    api_key: str | None,
    *,
    rpm: int | None,
    tpm: int | None,
    max_concurrency: int | None,
    clock: Clock = DEFAULT_CLOCK,
) -> RateLimiter:
    """The process-wide limiter of one account (base URL + key); created on first use."""
    digest = hashlib.sha256((api_key or "").encode()).hexdigest()
    key = (base_url.rstrip("/"), digest)
    with _shared_lock:
        limiter = _shared.get(key)
        if limiter is None:
            limiter = RateLimiter(rpm, tpm, max_concurrency, clock=clock)
            _shared[key] = limiter
        return limiter
