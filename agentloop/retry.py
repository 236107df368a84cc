"""Retry policy: which errors to retry, how long to wait, and when to give up.

Retries burn the RPM quota (seed 002), so only retryable errors are retried, a stated wait
(``Retry-After`` or "try again after N seconds") is honoured, and the whole call — attempts and
waits together — is bounded by ``max_total_s``.
"""

from __future__ import annotations

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
        return (
            error.retryable and attempt < self.max_attempts and elapsed + wait <= self.max_total_s
        )


NO_RETRY = RetryPolicy(max_attempts=1)
