"""``Agent`` (a model, tools, instructions, a budget) and ``RunStream`` (one run's events).

The loop itself is in ``_loop.py``. ``Agent.run`` drives it in the caller's task;
``Agent.stream`` drives it in a task of its own and hands each event over a zero-buffer memory
stream, so the deadline and ``cancel()`` never reach into the consumer's code between events.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from . import events as ev
from ._loop import Control, Run, waiting_calls
from .budget import Budget
from .clock import DEFAULT_CLOCK, Clock
from .context import ContextStrategy, default_strategies
from .errors import ConfigurationError
from .messages import Message
from .models.base import BuiltinTool, Model
from .output import OutputSpec
from .pricing import RateCard
from .result import Decision, RunResult
from .telemetry import NullRecorder, Telemetry
from .tools import Tool, Toolbox

if TYPE_CHECKING:
    from .durable import DurableStore

TASK_NAME = "agentloop run"
# Runs streamed without ``async with`` run in tasks nothing else holds: keep them referenced.
_DETACHED: set[asyncio.Task[None]] = set()


class Agent:
    """An agent: a model, tools, instructions and a budget. Reusable across runs."""

    def __init__(
        self,
        model: Model,
        tools: Sequence[Tool | BuiltinTool | Callable[..., Any]] = (),
        instructions: str | None = None,
        budget: Budget | None = None,
        *,
        max_result_chars: int = 40_000,
        loop_limit: int = 3,
        rate_card: RateCard | None = None,
        context: Sequence[ContextStrategy] | None = None,
        clock: Clock | None = None,
        output_type: Any = None,
        output_retries: int = 2,
    ) -> None:
        self.model = model
        self.clock: Clock = clock or getattr(model, "clock", None) or DEFAULT_CLOCK
        # with an output_type the answer is a call of its final_answer tool (agentloop.output)
        self.output = OutputSpec(output_type, retries=output_retries) if output_type else None
        offered = [*tools, self.output.tool] if self.output else tools
        self.toolbox = Toolbox(offered, max_result_chars=max_result_chars, now=self.clock.now)
        self.instructions = instructions
        self.loop_limit = loop_limit
        self.rate_card = rate_card or model.rate_card
        self.budget = budget or Budget()
        self.context: list[ContextStrategy] = (
            default_strategies() if context is None else list(context)
        )
        self.telemetry = Telemetry(model.name, getattr(model, "provider", "openai"))

    @property
    def budget(self) -> Budget:
        return self._budget

    @budget.setter
    def budget(self, budget: Budget) -> None:
        if budget.max_cost_usd is not None and self.rate_card is None:
            raise ConfigurationError(
                f"max_cost_usd needs prices, and {self.model.name!r} has no known rate card: "
                "pass rate_card=RateCard(input_per_m=..., cached_input_per_m=..., "
                "output_per_m=...) to the Agent or the model"
            )
        self._budget = budget

    @property
    def tools(self) -> dict[str, Tool]:
        return self.toolbox.tools

    @property
    def step_tokens(self) -> int:
        """The output budget of a full step: at least the model's floor, which is what a thinking
        Kimi call is given whatever it asks for."""
        wanted = self.budget.per_step_tokens or self.model.default_max_tokens
        return max(wanted, self.model.min_max_tokens)

    # -- public ------------------------------------------------------------------------------
    def stream(
        self,
        task: str | None = None,
        *,
        history: Sequence[Message] | None = None,
        run_id: str | None = None,
        store: DurableStore | None = None,
        approvals: Mapping[str, Decision] | None = None,
        resume: RunResult | None = None,
    ) -> RunStream:
        """Run the agent, yielding events; the last event is ``RunFinished``. Prefer
        ``async with agent.stream(task) as run: async for event in run: ...``, which releases
        the run's connections and task when the block ends, however it ends. ``run_id`` and
        ``store``: a durable run (see ``run``); steps replayed from the store emit their
        events again, without deltas."""
        _check_durable(run_id, store)
        durable = (store, run_id) if store is not None and run_id is not None else None
        messages = self._start_messages(task, _resumed(history, resume), approvals)
        return RunStream(self, task, messages, durable, approvals, resume)

    async def run(
        self,
        task: str | None = None,
        *,
        history: Sequence[Message] | None = None,
        run_id: str | None = None,
        store: DurableStore | None = None,
        approvals: Mapping[str, Decision] | None = None,
        resume: RunResult | None = None,
    ) -> RunResult:
        """Run the agent to the end and return its result. Continue a conversation or resume a
        stopped run by passing its ``messages`` as ``history`` (with a new task, or none).

        ``run_id`` and ``store`` (an open ``agentloop.durable.DurableStore``) make the run
        durable: every finished step is committed before the next, and calling ``run`` again
        with the same ``run_id``, task and history — after a crash, in a new process —
        continues after the last committed step (or returns the result, if it finished)."""
        _check_durable(run_id, store)
        history = _resumed(history, resume)
        messages = self._start_messages(task, history, approvals)
        recorder = self.telemetry.run(task or "")

        async def record(event: ev.Event) -> None:
            recorder.on_event(event)

        if store is not None and run_id is not None:
            return await store.drive(
                self, messages, task or "", run_id, record, Control(), approvals, resume
            )
        run = Run(
            self,
            messages,
            record,
            Control(cancellable=False),
            approvals=approvals,
            carried=resume,
            listening=not isinstance(recorder, NullRecorder),  # spans are built from events
        )
        return await run.drive(task or "")

    def run_sync(
        self,
        task: str | None = None,
        *,
        history: Sequence[Message] | None = None,
        approvals: Mapping[str, Decision] | None = None,
        resume: RunResult | None = None,
    ) -> RunResult:
        """``run`` for scripts without an event loop."""
        return anyio.run(
            lambda: self.run(task, history=history, approvals=approvals, resume=resume)
        )

    def _start_messages(
        self,
        task: str | None,
        history: Sequence[Message] | None,
        approvals: Mapping[str, Decision] | None = None,
    ) -> list[Message]:
        messages: list[Message] = list(history or [])
        waiting = waiting_calls(messages)
        undecided = [c for c in waiting if c.get("id") not in (approvals or {})]
        if undecided:
            names = ", ".join(f"{c['id']} ({c['function']['name']})" for c in undecided)
            raise ConfigurationError(
                f"the history has tool calls waiting for approval: {names}; pass "
                "approvals={call_id: True | False | Edited(arguments) | Rejected(reason)} "
                "with a decision for each"
            )
        unknown = set(approvals or {}) - {c.get("id") for c in waiting}
        if unknown:
            raise ConfigurationError(
                f"approvals for calls that are not waiting: {', '.join(sorted(unknown))}"
            )
        if waiting and task:
            raise ConfigurationError(
                "the history has tool calls waiting for approval: resume it without a new "
                "task (the decided calls are answered first)"
            )
        if not messages and self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if task:
            messages.append({"role": "user", "content": task})
        if not any(m.get("role") == "user" for m in messages):
            raise ConfigurationError("a run needs a task (or a history with a user message)")
        last = messages[-1]
        if last.get("role") == "assistant" and not last.get("tool_calls"):
            raise ConfigurationError(
                "the history ends with the model's answer: pass a new task "
                "to continue the conversation"
            )
        return messages


def _resumed(
    history: Sequence[Message] | None, resume: RunResult | None
) -> Sequence[Message] | None:
    """``resume=result`` continues a stopped run: its history, and its steps and spend."""
    if resume is None:
        return history
    if history is not None:
        raise ConfigurationError("pass resume=result or history=messages, not both")
    return resume.messages


def _check_durable(run_id: str | None, store: DurableStore | None) -> None:
    if (run_id is None) != (store is None):
        raise ConfigurationError(
            "a durable run needs both run_id= and store= (an open DurableStore); "
            "pass both, or neither for an ordinary run"
        )


class _Driver:
    """What a run's task holds: never the ``RunStream`` itself, so that a consumer who drops
    the stream lets it be collected (which closes the channel and stops the run)."""

    __slots__ = ("control", "error", "finished", "result", "send")

    def __init__(self, send: MemoryObjectSendStream[ev.Event]) -> None:
        self.send = send
        self.control = Control()
        self.finished = anyio.Event()
        self.result: RunResult | None = None
        self.error: Exception | None = None

    async def emit(self, event: ev.Event) -> None:
        # shielded: a deadline or cancel() must not interrupt the hand-over of an event
        with anyio.CancelScope(shield=True):
            try:
                await self.send.send(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.control.cancel()  # nobody is listening any more: stop the run

    async def drive(
        self,
        agent: Agent,
        messages: list[Message],
        task: str,
        durable: tuple[DurableStore, str] | None,
        approvals: Mapping[str, Decision] | None = None,
        carried: RunResult | None = None,
    ) -> None:
        try:
            if durable is not None:
                store, run_id = durable
                self.result = await store.drive(
                    agent, messages, task, run_id, self.emit, self.control, approvals, carried
                )
            else:
                run = Run(
                    agent, messages, self.emit, self.control, approvals=approvals, carried=carried
                )
                self.result = await run.drive(task)
        except BaseException as exc:
            # a durable run that cannot start: the consumer gets the error, not a hang
            if not isinstance(exc, Exception):
                raise
            self.error = exc
        finally:
            self.send.close()
            self.finished.set()


class RunStream:
    """The events of one run; iterate it, best inside ``async with``. ``cancel()`` stops the
    run, which then finishes with ``stop_reason="cancelled"``; ``result`` holds the
    ``RunResult`` once the run is over. ``aclose()`` stops the run and waits until its
    requests and task are released."""

    def __init__(
        self,
        agent: Agent,
        task: str | None,
        messages: list[Message],
        durable: tuple[DurableStore, str] | None = None,
        approvals: Mapping[str, Decision] | None = None,
        carried: RunResult | None = None,
    ) -> None:
        self._agent = agent
        self._durable = durable
        self._approvals = approvals
        self._carried = carried
        self._task_text = task or ""
        self._messages = messages
        send, self._receive = anyio.create_memory_object_stream[ev.Event](0)
        self._send: MemoryObjectSendStream[ev.Event] | None = send
        self._driver: _Driver | None = None
        self._cancelled = False
        self._recorder = agent.telemetry.run(self._task_text)
        self._group: TaskGroup | None = None
        self._result: RunResult | None = None
        # A consumer that breaks out of ``async for`` without ``aclose()`` drops the last
        # reference: closing the receiving end then makes the run stop and release everything.
        weakref.finalize(self, self._receive.close)

    @property
    def result(self) -> RunResult | None:
        """The run's result once it is over (also after a break, ``aclose`` or ``cancel``)."""
        if self._result is None and self._driver is not None:
            return self._driver.result
        return self._result

    def cancel(self) -> None:
        self._cancelled = True
        if self._driver is not None:
            self._driver.control.cancel()

    def _start(self) -> None:
        assert self._send is not None
        driver = self._driver = _Driver(self._send)
        self._send = None
        if self._cancelled:
            driver.control.cancel()
        work = driver.drive(
            self._agent,
            self._messages,
            self._task_text,
            self._durable,
            self._approvals,
            self._carried,
        )
        if self._group is not None:
            self._group.start_soon(lambda: work, name=TASK_NAME)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            work.close()
            raise ConfigurationError(
                "on this event loop, iterate a run inside `async with agent.stream(...) as run:`"
            ) from None
        task = loop.create_task(work, name=TASK_NAME)
        _DETACHED.add(task)
        task.add_done_callback(_DETACHED.discard)

    # -- consuming ---------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[ev.Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[ev.Event]:
        # A fresh generator per ``async for``: a consumer that breaks out drops it even while it
        # keeps the stream itself, and its finalisation closes the channel, stopping the run.
        try:
            while True:
                try:
                    event = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield event
        finally:
            self._receive.close()

    async def __anext__(self) -> ev.Event:
        if self._driver is None:
            self._start()
        try:
            event = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            driver = self._driver
            if driver is not None and driver.error is not None:
                error, driver.error = driver.error, None
                raise error from None
            raise StopAsyncIteration from None
        self._recorder.on_event(event)
        if isinstance(event, ev.RunFinished):
            self._result = event.result
        return event

    async def aclose(self) -> None:
        """Stop the run if it is still going and wait until it has released everything."""
        self._receive.close()
        driver = self._driver
        if driver is not None:
            driver.control.cancel()
            with anyio.CancelScope(shield=True):
                await driver.finished.wait()

    async def __aenter__(self) -> RunStream:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        assert self._group is not None
        # The run's task is over: exit the group as if the body had ended normally, so that an
        # exception of the body propagates as itself rather than inside an ExceptionGroup.
        await self._group.__aexit__(None, None, None)
        return None


__all__ = ["Agent", "RunStream"]
