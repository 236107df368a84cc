"""Client-side rate limiting: requests per minute, tokens per minute and concurrency.

Why not a leaky bucket (aiolimiter's ``AsyncLimiter``)? A bucket of capacity N per minute lets N
requests through at once and then one every 60/N seconds, so 51 requests land inside one
60-second window and a server that counts a sliding window (as Moonshot's does, and as every
fixed-window counter implies) answers 429. ``RateLimiter`` keeps a log of admissions instead and
admits a request only when the last ``window`` seconds hold fewer than ``rpm`` of them, which is
exact for sliding and fixed windows alike. Token use is reserved at admission (prompt estimate +
max_tokens) and reconciled with the usage the server reports.

One limiter is shared by every run that uses the same model client, and ``shared_limiter`` hands
the same one to every client built for the same base URL and key. The log outlives event loops
(``run_sync`` starts a new one per call) and is shared by loops in other threads; the anyio
primitives that queue the waiters belong to one loop, so each loop gets its own (``_Gate``).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import threading
import weakref
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from .clock import DEFAULT_CLOCK, Clock


def current_loop() -> object:
    """The identity of the running event loop: compared with ``is`` on every request to notice
    a new loop. ``get_running_loop`` is a C call; other anyio backends (trio) pay a bit more."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return anyio.lowlevel.current_token().native_token


class _Gate:
    """The loop-bound half of a limiter. An anyio primitive serves one event loop (an asyncio
    Event binds to the first loop that waits on it; none is thread-safe), so each loop gets its
    own: FIFO admission and ``max_concurrency`` hold per loop, the rpm/tpm log for all."""

    __slots__ = ("admission", "freed", "loop", "slots")

    def __init__(self, loop: object, max_concurrency: int | None) -> None:
        self.loop = loop
        self.admission = anyio.Lock()
        self.freed = anyio.Event()  # set when a reconcile gives tokens back
        self.slots = anyio.Semaphore(max_concurrency) if max_concurrency else None


_UNBOUND = _Gate(None, None)  # matches no running loop


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
    gate: _Gate = field(repr=False)  # the loop it was admitted in: its slot goes back there
    released: bool = field(default=False)

    def reconcile(self, actual_tokens: int) -> None:
        self.limiter._reconcile(self.charge, actual_tokens, self.gate)

    def touch(self) -> None:
        """Re-stamp the admission when the server answered: the server counted the request on
        arrival, which is after we admitted it, so our record must not expire before its."""
        self.limiter._touch(self.charge)

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.gate.slots is not None:
                self.gate.slots.release()


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
        self._log_lock = threading.Lock()  # the log is shared by loops in any thread
        self._gate = _UNBOUND  # the last loop's gate; other threads keep theirs in _local
        self._local = threading.local()
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
        gate = self._gate
        if gate.loop is not (loop := current_loop()):
            gate = self._gate_for(loop)
        start = self.clock.now()
        slots = gate.slots
        if slots is not None:
            await slots.acquire()
        try:
            async with gate.admission:  # first come, first served
                while True:
                    with self._log_lock:  # check and record in one step, whatever the thread
                        wait = self._wait_needed(tokens)
                        if wait <= 0:
                            now = self.clock.now()
                            bisect.insort(self._requests, now)
                            charge = _Charge(now, tokens)
                            self._charges.append(charge)
                            self._tokens_in_window += tokens
                            waited = now - start
                            self.admitted += 1
                            self.total_wait += waited
                            break
                    await self._sleep(wait, gate)
        except BaseException:
            if slots is not None:
                slots.release()
            raise
        return Permit(self, charge, waited, gate)

    def _gate_for(self, loop: object) -> _Gate:
        # A thread runs one loop at a time, so its gate is found again after another thread's
        # loop took the shared slot; a thread that moves on to a new loop replaces it.
        gate: _Gate | None = getattr(self._local, "gate", None)
        if gate is None or gate.loop is not loop:
            gate = _Gate(loop, self.max_concurrency)
            self._local.gate = gate
        self._gate = gate
        return gate

    async def _sleep(self, wait: float, gate: _Gate) -> None:
        """Sleep ``wait``, or less if a finished request gives reserved tokens back (a request
        reserves its whole max_tokens but is billed what it used; waiting for the reservation
        to expire would waste most of a TPM limit). Only this loop's reconciles wake it early;
        a sleeper in another thread's loop waits out its time."""
        if self.tpm is None:
            await self.clock.sleep(wait)
            return
        freed = gate.freed

        async def wake() -> None:
            await freed.wait()
            group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(wake)
            await self.clock.sleep(wait)
            group.cancel_scope.cancel()

    def _reconcile(self, charge: _Charge, actual: int, gate: _Gate) -> None:
        with self._log_lock:
            if any(c is charge for c in self._charges):  # still inside the window
                self._tokens_in_window += actual - charge.tokens
            freed = actual < charge.tokens
            charge.tokens = actual
        if freed:
            gate.freed.set()
            gate.freed = anyio.Event()

    def _touch(self, charge: _Charge) -> None:
        with self._log_lock:
            now = self.clock.now()
            index = bisect.bisect_left(self._requests, charge.at)
            if index < len(self._requests) and self._requests[index] == charge.at:
                del self._requests[index]
                bisect.insort(self._requests, now)
            charge.at = now


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
