"""Client-side rate limiting: requests per minute, tokens per minute and concurrency.

Why not a leaky bucket (aiolimiter's ``AsyncLimiter``)? A bucket of capacity N per minute lets N
requests through at once and then one every 60/N seconds, so 51 requests land inside one
60-second window and a server that counts a sliding window (as Moonshot's does, and as every
fixed-window counter implies) answers 429. ``RateLimiter`` keeps a log of admissions instead and
admits a request only when the last ``window`` seconds hold fewer than ``rpm`` of them, which is
exact for sliding and fixed windows alike. Token use is reserved at admission (prompt estimate +
max_tokens) and reconciled with the usage the server reports.

One limiter is shared by every run that uses the same model client, and ``shared_limiter`` hands
the same one to every client built for the same base URL and key, for the life of the process:
a client created and closed per task still draws on the account's log. Settings that differ for
one account resolve to the strictest, with a ``LimiterConflictWarning``; the limiter tightens in
place, so clients created earlier obey it too. The log outlives event loops (``run_sync`` starts
a new one per call) and is shared by loops in other threads; the anyio primitives that queue the
waiters belong to one loop, so each loop gets its own (``_Gate``).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import os
import sys
import threading
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.lowlevel

from .clock import DEFAULT_CLOCK, Clock, MonotonicClock, ScaledClock


class LimiterConflictWarning(UserWarning):
    """Two clients of one account asked for different limits; both now use the stricter."""


class AdmissionPermit(Protocol):
    """What a model client does with an admitted request (``Permit``, ``DatabasePermit``):
    ``touch`` when the server answers, ``reconcile`` with the billed tokens, then ``release``.
    ``waited`` is the time spent queued, on the limiter's clock."""

    waited: float

    def reconcile(self, actual_tokens: int) -> None: ...

    def touch(self) -> None: ...

    def release(self) -> None: ...


class Limiter(Protocol):
    """What a model client takes as ``limiter=``: ``RateLimiter`` (one process) or
    ``agentloop.limits_db.DatabaseLimiter`` (a fleet of processes sharing a database)."""

    async def acquire(self, tokens: int = 0) -> AdmissionPermit: ...


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
    own: FIFO admission and ``max_concurrency`` hold per loop, the rpm/tpm log for all.

    The concurrency slots are a count read against the limiter's current ``max_concurrency``
    (not a semaphore sized once), so a limit tightened while requests are in flight holds at
    once: nobody new is let in until the in-flight count is below the new limit."""

    __slots__ = ("admission", "freed", "in_use", "loop", "waiters")

    def __init__(self, loop: object) -> None:
        self.loop = loop
        self.admission = anyio.Lock()
        self.freed = anyio.Event()  # set when a reconcile gives tokens back
        self.in_use = 0  # slots held, counted even without a limit (it may be set later)
        self.waiters: deque[anyio.Event] = deque()  # FIFO; each set when handed a slot

    async def take(self, limiter: RateLimiter) -> None:
        limit = limiter.max_concurrency
        if limit is None or (self.in_use < limit and not self.waiters):
            self.in_use += 1
            return
        granted = anyio.Event()
        self.waiters.append(granted)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():  # handed a slot as it was cancelled: pass the slot on
                self.give(limiter.max_concurrency)
            else:
                self.waiters.remove(granted)
            raise

    def give(self, limit: int | None) -> None:
        self.in_use -= 1
        while self.waiters and (limit is None or self.in_use < limit):
            self.in_use += 1
            self.waiters.popleft().set()


_UNBOUND = _Gate(None)  # matches no running loop


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
            self.gate.give(self.limiter.max_concurrency)


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
        _check(rpm, tpm, max_concurrency)
        self.rpm = rpm
        self.tpm = tpm
        self.max_concurrency = max_concurrency or None  # 0 has always meant no limit
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
        estimate = tokens
        gate = self._gate
        if gate.loop is not (loop := current_loop()):
            gate = self._gate_for(loop)
        start = self.clock.now()
        await gate.take(self)
        try:
            async with gate.admission:  # first come, first served
                while True:
                    with self._log_lock:  # check and record in one step, whatever the thread
                        # (the tpm may have been tightened while this request waited)
                        tokens = estimate if self.tpm is None else min(estimate, self.tpm)
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
            gate.give(self.max_concurrency)
            raise
        return Permit(self, charge, waited, gate)

    def _gate_for(self, loop: object) -> _Gate:
        # A thread runs one loop at a time, so its gate is found again after another thread's
        # loop took the shared slot; a thread that moves on to a new loop replaces it.
        gate: _Gate | None = getattr(self._local, "gate", None)
        if gate is None or gate.loop is not loop:
            gate = _Gate(loop)
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
        await sleep_until_set(self.clock, wait, gate.freed)

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

    def tighten(
        self, rpm: int | None, tpm: int | None, max_concurrency: int | None
    ) -> list[tuple[str, int, int]]:
        """Lower each limit to the given one where that is stricter (None asks for nothing);
        returns the ``(setting, held, asked)`` pairs that differed. Waiters re-check the log
        when they wake and requests in flight keep their concurrency slots, so the stricter
        limit holds from now on without cutting anything already admitted."""
        _check(rpm, tpm, max_concurrency)
        conflicts: list[tuple[str, int, int]] = []
        with self._log_lock:
            for name, asked in (
                ("rpm", rpm),
                ("tpm", tpm),
                ("max_concurrency", max_concurrency or None),
            ):
                held: int | None = getattr(self, name)
                if asked is None or held == asked:
                    continue
                if held is not None:
                    conflicts.append((name, held, asked))
                if held is None or asked < held:
                    setattr(self, name, asked)
        return conflicts


async def sleep_until_set(clock: Clock, wait: float, freed: anyio.Event) -> None:
    """Sleep ``wait`` seconds of ``clock``, or less if ``freed`` is set meanwhile (a request
    gave a slot or tokens back)."""

    async def wake() -> None:
        await freed.wait()
        group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(wake)
        await clock.sleep(wait)
        group.cancel_scope.cancel()


def _check(rpm: int | None, tpm: int | None, max_concurrency: int | None) -> None:
    if rpm is not None and rpm < 1:
        raise ValueError("rpm must be at least 1")
    if tpm is not None and tpm < 1:
        raise ValueError("tpm must be at least 1")
    if max_concurrency is not None and max_concurrency < 0:
        raise ValueError("max_concurrency must not be negative")


# One limiter per account (base URL + SHA-256 of the key; the key itself is never kept), held
# for the life of the process so that clients created and closed per task share one log. Each
# holds at most a window's worth of admissions (rpm entries when rpm is set), its settings and
# one gate per thread that used it, and a process talks to few accounts.
_shared: dict[tuple[str, str], RateLimiter] = {}
_shared_lock = threading.Lock()
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _time_scale(clock: Clock) -> object:
    """Clocks that agree on ``now()`` can share a log: every MonotonicClock, ScaledClocks of
    one factor; any other clock only with itself."""
    if type(clock) is MonotonicClock:
        return MonotonicClock
    if type(clock) is ScaledClock:
        return (ScaledClock, clock.factor)
    return clock


def _safe_url(url: str) -> str:
    """The base URL for a message: without user info, query or fragment (none is the key's
    place, but a URL with credentials in it must not be echoed either)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable base URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _outside_caller() -> int:
    """The ``stacklevel`` of the first frame outside agentloop, seen from our caller."""
    frame = sys._getframe(2)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def shared_limiter(
    base_url: str,
    api_key: str | None,
    *,
    rpm: int | None,
    tpm: int | None,
    max_concurrency: int | None,
    clock: Clock = DEFAULT_CLOCK,
) -> RateLimiter:
    """The process-wide limiter of one account (base URL + key), created on first use and kept
    for the life of the process.

    A later client that asks for a different rpm, tpm or max_concurrency tightens the account's
    limiter to the stricter of the two values, in place (earlier clients obey it too), with a
    ``LimiterConflictWarning`` naming both values and the base URL. A setting left at None asks
    for no limit of its own and takes the account's. A clock on another time scale (a
    ``ManualClock``, a ``ScaledClock`` of another factor) cannot read the log, so it starts a
    fresh limiter for the account."""
    _check(rpm, tpm, max_concurrency)
    digest = hashlib.sha256((api_key or "").encode()).hexdigest()
    url = base_url.rstrip("/")
    key = (url, digest)
    with _shared_lock:
        limiter = _shared.get(key)
        if limiter is None or _time_scale(limiter.clock) != _time_scale(clock):
            limiter = RateLimiter(rpm, tpm, max_concurrency, clock=clock)
            _shared[key] = limiter
            return limiter
        conflicts = limiter.tighten(rpm, tpm, max_concurrency)
    if conflicts:
        where = _safe_url(url)
        said = "; ".join(
            f"{name} {held} and {asked}, using {min(held, asked)}"
            for name, held, asked in conflicts
        )
        warnings.warn(
            f"clients of the account at {where} asked for different limits ({said}); every "
            "client of that account now uses the stricter",
            LimiterConflictWarning,
            stacklevel=_outside_caller(),
        )
    return limiter
