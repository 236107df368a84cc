"""Deadlines for the per-request waits, cheap on asyncio.

Every model call waits under two or more deadlines (headers, body or each stream gap) and every
tool call under one. ``anyio.CancelScope`` costs about 8 µs of CPU each on asyncio, and even a
bare asyncio timer is a dozen Python calls (``TimerHandle``, the heap, its cancellation), which
at a few thousand calls a second is a measurable part of the client's cost
(bench/step_overhead). So on asyncio a ``Watchdog`` guards a task's successive waits with one
loop timer that cancels the task and takes back only its own cancellation, moved only when a
wait's deadline comes sooner than the one armed; inside ``run_watchdog()`` (a run) the model
attempts and tool calls all share one. Under any other backend each wait is an anyio cancel
scope. Both expose ``cancelled_caught`` as a cancel scope does.

A cancellation from outside (an enclosing anyio scope, ``task.cancel()``) always propagates:
a wait swallows a ``CancelledError`` only when its own deadline fired and no other
cancellation of the task is pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
from collections.abc import Iterator
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


class _AsyncioWatchdog:
    """One task's successive waits (a model attempt's headers, body, each stream gap) under one
    loop timer. A wait sets its deadline; the timer is moved only when that comes sooner than
    the one armed, and a timer that fires early for a later deadline (a stream that had news)
    re-arms itself. A stream of a thousand chunks costs one or two timers, not a thousand."""

    __slots__ = (
        "_deadline",
        "_fired",
        "_handle",
        "_loop",
        "_shared",
        "_task",
        "_waiting",
        "_when",
        "cancelled_caught",
    )

    def __init__(self, task: asyncio.Task[object], *, shared: bool = False) -> None:
        self._shared = shared  # a run's: its borrowers' close() leaves the timer armed
        self._task = task
        self._loop = task.get_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._when = math.inf  # when the armed timer fires
        self._deadline = math.inf  # the running wait's deadline (inf: none, or no bound)
        self._waiting = False  # inside a wait (one without a deadline too)
        self._fired = False
        self.cancelled_caught = False

    def until(self, deadline: float) -> _AsyncioWatchdog:
        """The next wait: ``with watchdog.until(deadline) as scope:`` (one at a time)."""
        task = asyncio.current_task()
        if task is not self._task and task is not None:  # iterated from another task now
            self._close()  # its timer may be on another loop
            self._task, self._loop = task, task.get_loop()
        self._deadline = deadline
        self._waiting = True
        self._fired = False
        self.cancelled_caught = False
        if deadline < self._when:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(deadline, self._fire)
            self._when = deadline
        return self

    def __enter__(self) -> _AsyncioWatchdog:
        return self

    def _fire(self) -> None:
        self._handle = None
        self._when = math.inf
        deadline = self._deadline
        if deadline == math.inf:
            return  # between waits: the next one arms afresh
        if deadline > self._loop.time() + _EARLY:
            self._handle = self._loop.call_at(deadline, self._fire)  # the wait moved on
            self._when = deadline
            return
        self._fired = True
        self._task.cancel()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._deadline = math.inf  # the timer stays armed for the next wait, or for close()
        self._waiting = False
        if not self._fired:
            return False
        self._fired = False
        if self._task.uncancel() == 0 and isinstance(exc, asyncio.CancelledError):
            self.cancelled_caught = True
            return True
        return False

    def close(self) -> None:
        """The waits are over: cancel the timer (a run's watchdog keeps it for the next)."""
        if not self._shared:
            self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._when = math.inf


class _ScopeWatchdog:
    """``Watchdog`` off asyncio: a cancel scope per wait."""

    __slots__ = ()

    def until(self, deadline: float) -> Guard:
        return anyio.CancelScope(deadline=deadline)

    def close(self) -> None:
        pass


# a timer may fire this much before its deadline (the loop's clock resolution): that is the
# deadline, not a wait that moved on
_EARLY = 1e-6


class Watchdog(Protocol):
    def until(self, deadline: float) -> Guard: ...

    def close(self) -> None: ...


def watchdog() -> Watchdog:
    """A ``Watchdog`` for the current task: ``until(deadline)`` guards one wait as a cancel
    scope would; ``close()`` when the waits are over. Inside ``run_watchdog()`` it is the run's
    (unless that one is in a wait: a tool that runs a model call of its own gets a new one)."""
    task = _current_task()
    if task is None:
        return _ScopeWatchdog()
    dog = _RUN_WATCHDOG.get()
    if dog is not None and dog._task is task and not dog._waiting:
        return dog
    return _AsyncioWatchdog(task)


def _current_task() -> asyncio.Task[object] | None:
    """The asyncio task running this, or None (no loop running, or another backend's)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


# the watchdog of the run in this task (a child task inherits it, and does not use it)
_RUN_WATCHDOG: contextvars.ContextVar[_AsyncioWatchdog | None] = contextvars.ContextVar(
    "agentloop_run_watchdog", default=None
)


@contextlib.contextmanager
def run_watchdog() -> Iterator[None]:
    """A run: its model attempts and tool calls, one after another in this task, share one
    watchdog and so one loop timer, re-armed about once a tool timeout rather than twice a
    step (each timer is a dozen Python calls in asyncio)."""
    task = _current_task()
    if task is None:
        yield
        return
    dog = _AsyncioWatchdog(task, shared=True)
    token = _RUN_WATCHDOG.set(dog)
    try:
        yield
    finally:
        _RUN_WATCHDOG.reset(token)
        dog._close()


def now() -> float:
    """The event loop's clock, the one deadlines are on (``anyio.current_time``, faster)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return anyio.current_time()
