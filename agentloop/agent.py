"""The agent loop: one async generator of events per run.

Each step: fit the step budget, stream one model call (deltas become events and the assistant
message is appended verbatim, reasoning included), run the tool calls concurrently and answer
each exactly once, account usage and cost, check the limits. A limit ends the run cleanly with
its ``stop_reason``; by default the model is first asked once, without tools, for its best answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from . import events as ev
from .budget import Budget
from .context import ContextStrategy, default_strategies
from .errors import AgentloopError, APIError, ConfigurationError
from .messages import Message, Usage
from .models.base import (
    Assembler,
    BuiltinTool,
    Model,
    ModelRequest,
    ReasoningDelta,
    RetryDelta,
    TextDelta,
    ToolSpec,
)
from .pricing import RateCard
from .result import RunResult, StepRecord, StopReason, ToolCallRecord
from .telemetry import Telemetry
from .tools import Tool, ToolOutcome, render_result

FINAL_ANSWER_PROMPT = (
    "You have reached the run's {limit}. Do not call any more tools. Give your best final answer "
    "now, from what you have found so far."
)


@dataclass(slots=True)
class _State:
    messages: list[Message]
    steps: list[StepRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    output: str = ""
    repeats: dict[tuple[str, str], int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    # (prompt + completion tokens the server reported for the last call, history length then):
    # the next prompt's size is that plus an estimate of what was appended since.
    measured: tuple[int, int] | None = None
    # ((history length, measured), size): cleared by a context edit, which can keep the length
    size_memo: tuple[tuple[object, ...], int] | None = None


class RunStream:
    """The events of one run; iterate it. ``cancel()`` stops the run, which then finishes with
    ``stop_reason="cancelled"``; ``result`` holds the ``RunResult`` once the run is over."""

    def __init__(self, agent: Agent, task: str | None, history: Sequence[Message] | None) -> None:
        self._agent = agent
        self._task = task
        self._history = history
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False
        self.result: RunResult | None = None
        self._gen: AsyncIterator[ev.Event] | None = None

    def cancel(self) -> None:
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    def __aiter__(self) -> RunStream:
        return self

    async def __anext__(self) -> ev.Event:
        if self._gen is None:
            self._gen = self._agent._events(self._task, self._history, self)
        event = await self._gen.__anext__()
        if isinstance(event, ev.RunFinished):
            self.result = event.result
        return event

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()  # type: ignore[attr-defined]


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
    ) -> None:
        self.model = model
        self.tools: dict[str, Tool] = {}
        builtins: list[BuiltinTool] = []
        for item in tools:
            if isinstance(item, BuiltinTool):  # run by the provider, e.g. Kimi's $web_search
                builtins.append(item)
                continue
            t = item if isinstance(item, Tool) else _as_tool(item)
            if t.name in self.tools:
                raise ConfigurationError(f"two tools are named {t.name!r}")
            self.tools[t.name] = t
        self.instructions = instructions
        self.budget = budget or Budget()
        self.max_result_chars = max_result_chars
        self.loop_limit = loop_limit
        self.rate_card = rate_card or model.rate_card
        self._specs: list[ToolSpec | BuiltinTool] = [t.spec for t in self.tools.values()]
        self._specs.extend(builtins)
        self.context: list[ContextStrategy] = (
            default_strategies() if context is None else list(context)
        )
        self.telemetry = Telemetry(model.name)

    # -- public ------------------------------------------------------------------------------
    def stream(
        self, task: str | None = None, *, history: Sequence[Message] | None = None
    ) -> RunStream:
        """Run the agent, yielding events; the last event is ``RunFinished``."""
        return RunStream(self, task, history)

    async def run(
        self, task: str | None = None, *, history: Sequence[Message] | None = None
    ) -> RunResult:
        """Run the agent to the end and return its result. Continue a conversation or resume a
        stopped run by passing its ``messages`` as ``history`` (with a new task, or none)."""
        stream = self.stream(task, history=history)
        async for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def run_sync(
        self, task: str | None = None, *, history: Sequence[Message] | None = None
    ) -> RunResult:
        """``run`` for scripts without an event loop."""
        return anyio.run(lambda: self.run(task, history=history))

    # -- the loop ----------------------------------------------------------------------------
    def _start_messages(self, task: str | None, history: Sequence[Message] | None) -> list[Message]:
        messages: list[Message] = list(history or [])
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

    def _limit(self, state: _State, started: float) -> tuple[StopReason, str] | None:
        b = self.budget
        if b.max_steps is not None and len(state.steps) >= b.max_steps:
            return "max_steps", f"{len(state.steps)} steps"
        if b.deadline_s is not None and time.monotonic() - started >= b.deadline_s:
            return "deadline", f"{b.deadline_s:g}s deadline"
        if b.max_cost_usd is not None and state.cost >= b.max_cost_usd:
            return "cost_budget", f"${state.cost:.4f} of ${b.max_cost_usd:g}"
        if b.max_billed_tokens is not None and state.usage.total_tokens >= b.max_billed_tokens:
            return "token_budget", f"{state.usage.total_tokens} billed tokens"
        return None

    def _prompt_size(self, state: _State) -> int:
        """The next prompt's size: measured by the server where possible, estimated otherwise."""
        key = (len(state.messages), state.measured)
        if state.size_memo is not None and state.size_memo[0] == key:
            return state.size_memo[1]
        if state.measured is not None and state.measured[1] <= len(state.messages):
            tokens, count = state.measured
            size = tokens + self.model.estimate_tokens(state.messages[count:])
        else:
            size = self.model.estimate_tokens(state.messages, self._specs)
        state.size_memo = (key, size)
        return size

    def _line(self) -> int:
        """The most a prompt may hold and still leave room for one full step."""
        b = self.budget
        ceiling = self.model.context_window
        if b.total_tokens is not None:
            ceiling = min(ceiling, b.total_tokens)
        return ceiling - (b.per_step_tokens or self.model.default_max_tokens)

    def _room(self, state: _State, spent_this_step: int = 0) -> int:
        """Output tokens the window and the token budgets leave for the next call."""
        b = self.budget
        estimate = self._prompt_size(state)
        room = self.model.context_window - estimate
        if b.total_tokens is not None:
            room = min(room, b.total_tokens - estimate)
        if b.max_billed_tokens is not None:
            billed = state.usage.total_tokens + spent_this_step
            room = min(room, b.max_billed_tokens - billed - estimate)
        return room

    def _step_tokens(self, state: _State) -> int | None:
        """This step's output budget, or None when the token budget leaves no room for one."""
        wanted = self.budget.per_step_tokens or self.model.default_max_tokens
        room = self._room(state)
        if room < min(self.model.min_max_tokens, wanted):
            return None
        return min(wanted, room)

    async def _events(
        self, task: str | None, history: Sequence[Message] | None, handle: RunStream
    ) -> AsyncIterator[ev.Event]:
        state = _State(self._start_messages(task, history))
        started = time.monotonic()
        stop: StopReason = "completed"
        error: str | None = None
        recorder = self.telemetry.run(task or "")
        first = ev.RunStarted(task or "", self.model.name)
        recorder.on_event(first)
        yield first
        deadline = (started + self.budget.deadline_s) if self.budget.deadline_s else None
        limit: tuple[StopReason, str] | None = None
        with anyio.CancelScope(
            deadline=anyio.current_time() + (deadline - started) if deadline else float("inf")
        ) as scope:
            handle._scope = scope
            if handle._cancelled:
                scope.cancel()
            try:
                while True:
                    limit = self._limit(state, started)
                    if limit:
                        break
                    max_tokens = self._step_tokens(state)
                    if max_tokens is None:
                        limit = ("token_budget", "no room left for another step")
                        break
                    step_no = len(state.steps) + 1
                    if self.context:
                        async for edited in self._manage(state, step_no):
                            recorder.on_event(edited)
                            yield edited
                        max_tokens = self._step_tokens(state)
                        if max_tokens is None:
                            limit = ("token_budget", "no room left for another step")
                            break
                    async for event in self._step(state, step_no, max_tokens, recorder):
                        yield event
                    record = state.steps[-1]
                    last = state.messages[-1]
                    if last.get("role") == "assistant" and not last.get("tool_calls"):
                        if record.finish_reason == "length" and not last.get("content"):
                            limit = (
                                "reasoning_exhausted",
                                "the reasoning used the whole step budget twice",
                            )
                            break
                        state.output = str(last.get("content") or "")
                        break
                    if self._looping(state):
                        limit = ("loop_detected", "the same tool call kept repeating")
                        break
            except APIError as exc:
                stop, error = "error", str(exc)
            except AgentloopError as exc:
                stop, error = "error", str(exc)
        if scope.cancelled_caught:
            if handle._cancelled:
                stop = "cancelled"
            elif deadline:
                limit = ("deadline", f"{self.budget.deadline_s:g}s deadline")
        if limit and stop == "completed":
            stop = limit[0]
            hit = ev.LimitHit(limit[0], limit[1])
            recorder.on_event(hit)
            yield hit
            if self.budget.final_answer_on_limit and stop in (
                "max_steps",
                "token_budget",
                "cost_budget",
            ):
                try:
                    async for event in self._final_answer(state, limit[0], recorder):
                        yield event
                except (APIError, AgentloopError) as exc:
                    error = str(exc)
        result = RunResult(
            state.output, stop, state.messages, state.steps, state.usage, state.cost, error
        )
        done = ev.RunFinished(result)
        recorder.on_event(done)
        yield done

    async def _manage(self, state: _State, step_no: int) -> AsyncIterator[ev.ContextEdited]:
        window = _Window(self, state)
        for strategy in self.context:
            window.call_usage = Usage()
            edit = await strategy.manage(window)
            if edit is not None:
                yield ev.ContextEdited(
                    step_no,
                    edit.strategy,
                    edit.tokens_before,
                    edit.tokens_after,
                    edit.detail,
                    window.call_usage,
                )

    def _looping(self, state: _State) -> bool:
        return any(count > self.loop_limit for count in state.repeats.values())

    async def _final_answer(
        self, state: _State, limit: str, recorder: Any
    ) -> AsyncIterator[ev.Event]:
        if state.messages[-1].get("role") == "assistant" and not state.messages[-1].get(
            "tool_calls"
        ):
            state.output = str(state.messages[-1].get("content") or "")
            return
        label = {
            "max_steps": "step limit",
            "token_budget": "token budget",
            "cost_budget": "cost budget",
        }.get(limit, limit)
        state.messages.append({"role": "user", "content": FINAL_ANSWER_PROMPT.format(limit=label)})
        wanted = self.budget.per_step_tokens or self.model.default_max_tokens
        room = self.model.context_window - self._prompt_size(state)
        if room < min(self.model.min_max_tokens, wanted):
            state.messages.pop()
            return
        async for event in self._step(
            state, len(state.steps) + 1, min(wanted, room), recorder, use_tools=False
        ):
            yield event
        last = state.messages[-1]
        if last.get("role") == "assistant":
            state.output = str(last.get("content") or "")

    async def _step(
        self, state: _State, step_no: int, max_tokens: int, recorder: Any, use_tools: bool = True
    ) -> AsyncIterator[ev.Event]:
        began = time.monotonic()
        start = ev.StepStarted(step_no, max_tokens)
        recorder.on_event(start)
        yield start
        tools = self._specs if use_tools else ()
        budget = max_tokens
        retried_length = False
        usage = Usage()
        while True:
            assembler = Assembler()
            request = ModelRequest(
                state.messages, tools, budget, input_tokens=self._prompt_size(state)
            )
            async for delta in self.model.stream(request):
                assembler.feed(delta)
                if isinstance(delta, ReasoningDelta):
                    yield ev.ReasoningDelta(step_no, delta.text)
                elif isinstance(delta, TextDelta):
                    yield ev.TextDelta(step_no, delta.text)
                elif isinstance(delta, RetryDelta):
                    retry = ev.Retry(step_no, delta.attempt, str(delta.error), delta.wait)
                    recorder.on_event(retry)
                    yield retry
            response = assembler.finish()
            usage.add(response.usage)
            last_call = response.usage
            exhausted = (
                response.finish_reason == "length" and not response.text and not response.tool_calls
            )
            if exhausted and not retried_length:
                # Reasoning ate the budget: not an answer. Once, try again with more room.
                bigger = self._bigger_budget(state, budget, usage)
                if bigger is not None:
                    retried_length = True
                    budget = bigger
                    continue
            break
        state.messages.append(response.message)
        if last_call.input_tokens:
            state.measured = (
                last_call.input_tokens + last_call.output_tokens,
                len(state.messages),
            )
        state.usage.add(usage)
        if self.rate_card is not None:
            state.cost += self.rate_card.cost(usage)
        record = StepRecord(
            step_no,
            response.request_id,
            usage,
            response.finish_reason,
            budget,
            response.limiter_wait,
            len(response.retries),
            0.0,
        )
        state.steps.append(record)
        if response.tool_calls and use_tools:
            async for event in self._run_tools(
                state, step_no, response.tool_calls, record, recorder
            ):
                yield event
        elif response.tool_calls:
            # a final-answer call came back with tool calls anyway: answer them as refused
            for call in response.tool_calls:
                state.messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": call["id"],
                        "content": "Error: no more tool calls are allowed.",
                    }
                )
        record.duration_s = time.monotonic() - began
        done = ev.StepFinished(step_no, record, replace(state.usage), state.cost)
        recorder.on_event(done)
        yield done

    def _bigger_budget(self, state: _State, budget: int, usage: Usage) -> int | None:
        bigger = min(budget * 2, self._room(state, usage.total_tokens))
        return bigger if bigger > budget else None

    async def _run_tools(
        self,
        state: _State,
        step_no: int,
        calls: list[dict[str, Any]],
        record: StepRecord,
        recorder: Any,
    ) -> AsyncIterator[ev.Event]:
        outcomes: list[tuple[ToolOutcome, float]] = [(ToolOutcome("", False), 0.0)] * len(calls)
        for call in calls:
            started = ev.ToolCallStarted(
                step_no, call["id"], call["function"]["name"], call["function"]["arguments"]
            )
            recorder.on_event(started)
            yield started

        async def run_one(index: int, call: dict[str, Any]) -> None:
            t0 = time.monotonic()
            outcome = await self._execute(state, call)
            outcomes[index] = (outcome, time.monotonic() - t0)

        if len(calls) == 1:
            await run_one(0, calls[0])  # no task group for the common single call
        else:
            async with anyio.create_task_group() as tg:
                for index, call in enumerate(calls):
                    tg.start_soon(run_one, index, call)
        for call, (outcome, duration) in zip(calls, outcomes, strict=True):
            fn = call["function"]
            key = (fn["name"], fn["arguments"])
            state.repeats[key] = state.repeats.get(key, 0) + 1
            content = outcome.content
            for strategy in self.context:
                content = strategy.shape_result(content, fn["name"], fn["arguments"])
            if state.repeats[key] == self.loop_limit:
                content += (
                    f"\n[note: this is the {self.loop_limit}th identical call to "
                    f"{fn['name']} with these arguments; change your approach — the "
                    "next repeat ends the run]"
                )
            # builtin $web_search: the arguments go back unchanged as the result
            state.messages.append(
                {"role": "tool", "tool_call_id": call["id"], "name": fn["name"], "content": content}
            )
            record.tool_calls.append(
                ToolCallRecord(
                    call["id"], fn["name"], fn["arguments"], outcome.ok, outcome.error, duration
                )
            )
            finished = ev.ToolCallFinished(
                step_no, call["id"], fn["name"], outcome.ok, outcome.error, duration, content
            )
            recorder.on_event(finished)
            yield finished

    async def _execute(self, state: _State, call: dict[str, Any]) -> ToolOutcome:
        fn = call["function"]
        name = fn["name"]
        if name.startswith("$"):
            return ToolOutcome(fn["arguments"], True)  # provider-run builtin: echo arguments
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return ToolOutcome(
                f"Error: there is no tool named {name!r}. Available tools: {known}.",
                False,
                "unknown_tool",
            )
        if state.failures.get(name, 0) >= tool.max_failures:
            return ToolOutcome(
                f"Error: {name} has failed {tool.max_failures} times in a row; do "
                "not call it again — continue without it.",
                False,
                "retry_limit",
            )
        arguments, problem = tool.parse(fn["arguments"])
        if problem is None:
            assert arguments is not None
            try:
                with anyio.fail_after(tool.timeout_s) if tool.timeout_s else nullcontext():
                    value = await tool.invoke(arguments)
                limit = tool.max_result_chars or self.max_result_chars
                problem = ToolOutcome(render_result(value, limit), True)
            except TimeoutError:
                problem = ToolOutcome(
                    f"Error: {name} timed out after {tool.timeout_s:g}s.", False, "timeout"
                )
            except Exception as exc:  # a tool's own failure goes back to the model
                problem = ToolOutcome(
                    f"Error: {name} raised {type(exc).__name__}: {exc}", False, "exception"
                )
        if problem.ok:
            state.failures[name] = 0
        else:
            state.failures[name] = state.failures.get(name, 0) + 1
        return problem


class _Window:
    """The agent's side of ``context.ContextWindow``."""

    def __init__(self, agent: Agent, state: _State) -> None:
        self._agent = agent
        self._state = state
        self.messages = state.messages
        self._tokens = agent._prompt_size(state)
        self.call_usage = Usage()

    @property
    def tokens(self) -> int:
        return self._tokens

    @property
    def limit(self) -> int:
        return self._agent._line()

    @property
    def window(self) -> int:
        ceiling = self._agent.model.context_window
        total = self._agent.budget.total_tokens
        return min(ceiling, total) if total is not None else ceiling

    def estimate(self, messages: Sequence[Message]) -> int:
        return self._agent.model.estimate_tokens(messages)

    def replace(self, messages: list[Message]) -> None:
        # in place: RunStream users and the result share this list
        self._state.messages[:] = messages
        self._state.measured = None
        self._state.size_memo = None
        self._tokens = self._agent._prompt_size(self._state)

    async def summarise(self, messages: list[Message], max_tokens: int) -> str:
        agent = self._agent
        room = self.window - agent.model.estimate_tokens(messages, agent._specs)
        request = ModelRequest(messages, agent._specs, max(1, min(max_tokens, room)))
        assembler = Assembler()
        async for delta in agent.model.stream(request):
            assembler.feed(delta)
        response = assembler.finish()
        self._state.usage.add(response.usage)
        self.call_usage.add(response.usage)
        if agent.rate_card is not None:
            self._state.cost += agent.rate_card.cost(response.usage)
        if response.finish_reason == "length":
            return ""  # a cut-off summary would silently lose the end of the findings
        return response.text


def _as_tool(fn: Callable[..., Any]) -> Tool:
    from .tools import tool

    return tool(fn)


__all__ = ["Agent", "RunStream"]
