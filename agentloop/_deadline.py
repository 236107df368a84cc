"""Deadlines for the per-request waits, cheap on asyncio.

Every model call waits under two or more deadlines (headers, body or each stream gap) and every
tool call under one. ``anyio.CancelScope`` costs about 8 µs of CPU each on asyncio and
``anyio.current_time`` 0.8 µs, which at a few thousand calls a second is a measurable part of
the client's cost (bench/step_overhead). On asyncio ``within`` arms one loop timer that cancels
the task, and takes back only its own cancellation; under any other backend it is an anyio
cancel scope. Both expose ``cancelled_caught`` as a cancel scope does.

A cancellation from outside (an enclosing anyio scope, ``task.cancel()``) always propagates:
the guard swallows a ``CancelledError`` only when its timer fired and no other cancellation
of the task is pending.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Protocol

import anyio


class Guard(Protocol):
    @property
    def cancelled_caught(self) -> bool: ...

    def __enter__(self) -> Guard: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


class _AsyncioGuard:
    __slots__ = ("_deadline", "_fired", "_handle", "_task", "cancelled_caught")

    def __init__(self, deadline: float, task: asyncio.Task[object]) -> None:
        self._deadline = deadline
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        self.cancelled_caught = False

    def __enter__(self) -> _AsyncioGuard:
        if self._deadline != math.inf:
            self._handle = self._task.get_loop().call_at(self._deadline, self._fire)
        return self

    def _fire(self) -> None:
        # a loop callback: the task is suspended inside the block, so the CancelledError this
        # sends is raised at the await it is suspended at, inside the block
        self._handle = None
        self._fired = True
        self._task.cancel()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._fired:
            return False
        # ours to take back; swallowed only if nobody else has asked to cancel the task too
        if self._task.uncancel() == 0 and isinstance(exc, asyncio.CancelledError):
            self.cancelled_caught = True
            return True
        return False


def within(deadline: float) -> Guard:
    """A guard that stops the block at ``deadline`` (on ``now()``'s clock; ``math.inf``: never)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    if task is None:
        return anyio.CancelScope(deadline=deadline)
    return _AsyncioGuard(deadline, task)


def now() -> float:
    """The event loop's clock, the one deadlines are on (``anyio.current_time``, faster)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return anyio.current_time()
