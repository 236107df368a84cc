"""Retry policy: which errors to retry, how long to wait, and when to give up.

Retries burn the RPM quota (seed 002), so only retryable errors are retried, a stated wait
(``Retry-After`` in seconds or as an HTTP date, or "try again after N seconds") is honoured, and
``max_total_s`` bounds the time a call goes without data from the server: failed attempts,
stalls and waits, counted from the call's start or from the last data event it received (so a
healthy stream that runs for many minutes and is then cut is still retried). A stated wait
longer than what is left of it fails at once.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import APIError

_TRY_AGAIN = re.compile(r"try again after (\d+(?:\.\d+)?) ?s", re.IGNORECASE)


def stated_wait(error: APIError) -> float | None:
    """The wait the server asked for, from Retry-After or the message text."""
    if error.retry_after is not None:
        return error.retry_after
    match = _TRY_AGAIN.search(error.message)
    return float(match.group(1)) if match else None


def _uniform(upper: float) -> float:
    return float(random.uniform(0.0, upper))


@dataclass(slots=True)
class RetryPolicy:
    """Jittered exponential backoff for retryable errors.

    ``jitter(x)`` returns a value in [0, x]; pass a fixed function in tests for exact waits.
    """

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_total_s: float = 300.0
    jitter: Callable[[float], float] = field(default=_uniform)

    def delay(self, attempt: int, error: APIError) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        stated = stated_wait(error)
        if stated is not None:
            # wait as told, plus a little spread so a crowd of clients does not return at once
            return stated + self.jitter(min(1.0, self.base_delay))
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return backoff / 2 + self.jitter(backoff / 2)

    def should_retry(self, attempt: int, error: APIError, elapsed: float, wait: float) -> bool:
        return self.give_up(attempt, error, elapsed, wait) is None

    def give_up(self, attempt: int, error: APIError, elapsed: float, wait: float) -> str | None:
        """Why attempt ``attempt + 1`` is not made after ``error`` (None: it is), ``elapsed``
        seconds into the call's time without data and with ``wait`` to go before it."""
        if not error.retryable:
            return "not retryable"
        if attempt >= self.max_attempts:
            return f"RetryPolicy.max_attempts={self.max_attempts} reached"
        if elapsed + wait < self.max_total_s:  # an attempt with no time left is never sent
            return None
        stated = stated_wait(error)
        left = max(0.0, self.max_total_s - elapsed)
        if stated is not None and stated > left:
            return (
                f"the server asked to wait {math.ceil(stated - 1e-9)}s, more than the {left:.1f}s "
                f"left of RetryPolicy.max_total_s={self.max_total_s:g}"
            )
        return f"RetryPolicy.max_total_s={self.max_total_s:g} ran out"


NO_RETRY = RetryPolicy(max_attempts=1)
