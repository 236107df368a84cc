"""One run of an agent: the step loop, its limits and its single ending.

The run is a coroutine that reports what happens through ``emit``. ``Agent.run`` calls it
directly; ``Agent.stream`` runs it in a task that hands each event to the consumer. The
deadline and ``cancel()`` are one cancel scope around the loop's own work, and ``emit`` is
shielded from it, so a stop only ever interrupts a model call, a tool or a wait, never the
consumer, which receives every event through ``RunFinished``.

Each step: context strategies edit the history; the step's worst case is fitted to the limits
(``budget.room_for``); one model call is streamed (retried in the step when it came back empty,
cut short by the budget or with a ``tool_calls`` finish but no calls); its outcome decides the
rest. Whatever ends a run, every tool call in the history is answered once before the result is
built, so ``history=result.messages`` is always a valid next request.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import anyio

from . import events as ev
from ._deadline import run_watchdog
from ._journal import CallRecord, Journal
from .budget import CallKind, Spent, context_line, fit_call
from .errors import AgentloopError, ContextLengthError, EstimatedUsageWarning
from .messages import Message, Usage
from .models.base import (
    Assembler,
    ModelRequest,
    ModelResponse,
    ReasoningDelta,
    ResponseStarted,
    RetryDelta,
    TextDelta,
    ToolCallDelta,
)
from .output import NUDGE, TOOL_NAME
from .result import (
    Decision,
    Edited,
    PendingCall,
    Rejected,
    RunResult,
    StepRecord,
    StopReason,
    ToolCallRecord,
)
from .tools import MAX_ARGUMENT_CHARS, ToolOutcome, prepare_calls

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("agentloop")

Emit = Callable[[ev.Event], Awaitable[None]]

FINAL_ANSWER_PROMPT = (
    "You have reached the run's {limit}. Do not call any more tools. Give your best final answer "
    "now, from what you have found so far."
)
FINAL_OUTPUT_PROMPT = (
    "You have reached the run's {limit}. Do not call any other tool. Call " + TOOL_NAME
    + " now with your best answer, from what you have found so far."
)
LIMIT_LABELS = {
    "max_steps": "step limit",
    "token_budget": "token budget",
    "cost_budget": "cost budget",
    "loop_detected": "repeat limit (the same tool call kept repeating)",
}

Kind = Literal["answer", "tools", "reasoning_exhausted", "empty", "refused", "glitch", "paused"]


@dataclass(slots=True)
class StepOutcome:
    """What one step's model call came to."""

    kind: Kind
    response: ModelResponse


@dataclass(slots=True)
class Ending:
    stop: StopReason
    detail: str = ""
    error: str | None = None
    final_answer: bool = False  # ask the model once more, without tools, for its best answer


# what ``_fit`` returns beside a max_tokens: the call fits, so no ending (never used)
_FITS = Ending("completed")


class Control:
    """The stop switch a ``RunStream`` shares with its run."""

    __slots__ = ("cancellable", "cancelled", "scope")

    def __init__(self, *, cancellable: bool = True) -> None:
        # False: nobody holds this switch (``Agent.run``), so only a deadline needs a scope
        self.cancellable = cancellable
        self.cancelled = False
        self.scope: anyio.CancelScope | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class _BudgetStop(Exception):
    """A retry inside a step no longer fits the limits: stop before sending it."""

    def __init__(self, ending: Ending) -> None:
        self.ending = ending


@dataclass(slots=True)
class _State:
    messages: list[Message]
    steps: list[StepRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    # tokens assumed billed for attempts that broke mid-stream without reporting usage
    assumed_tokens: int = 0
    assumed_cost: float = 0.0
    output: str = ""
    value: Any = None  # the structured output, once a valid one came (``output_type``)
    has_value: bool = False
    output_tries: int = 0  # answers that did not validate
    repeats: dict[tuple[str, str], int] = field(default_factory=dict)
    most_repeats: int = 0  # the highest count in ``repeats`` (checked after every step)
    failures: dict[str, int] = field(default_factory=dict)
    # (prompt + completion tokens the server reported for the last call, history length then):
    # the next prompt's size is that plus an estimate of what was appended since.
    measured: tuple[int, int] | None = None
    cached_prefix: int = 0  # what the last call reported cached, while the history is unedited
    size_memo: tuple[tuple[object, ...], int] | None = None
    # the step whose tool calls are running, the calls not answered yet and their outcomes so
    # far (None: still running); answered with a note if the run stops
    open_calls: tuple[StepRecord, list[dict[str, Any]], list[ToolOutcome | None]] | None = None


class Run:
    def __init__(
        self,
        agent: Agent,
        messages: list[Message],
        emit: Emit,
        control: Control,
        journal: Journal | None = None,
        approvals: Mapping[str, Decision] | None = None,
        carried: RunResult | None = None,
        listening: bool = True,
    ):
        self.agent = agent
        # False: nobody reads the events (``Agent.run`` without tracing): the per-step and
        # per-delta ones are not made at all; the run's first and last still are
        self.listening = listening
        self.approvals = dict(approvals or {})
        self.pending: list[dict[str, Any]] = []  # calls left for a person to decide
        self.model = agent.model
        self.budget = agent.budget
        self.clock = agent.clock
        self.state = _State(messages)
        if carried is not None:  # a paused run resumed: its steps and spend count on
            self.state.steps = list(carried.steps)
            self.state.usage = replace(carried.usage)
            self.state.cost = carried.cost_usd
        self.emit = emit
        self.control = control
        self._finals_allowed = agent.budget.final_answer_on_limit
        self._warned_estimate = False  # EstimatedUsageWarning: once per run
        self.journal = journal or Journal(self.clock.now)
        # what the request for a final answer adds to a prompt (the longest label)
        self.final_prompt_tokens = self.estimate(
            [
                {
                    "role": "user",
                    "content": FINAL_ANSWER_PROMPT.format(limit=LIMIT_LABELS["loop_detected"]),
                }
            ]
        )
        self.deadline = math.inf  # set once the run does new work (``_live``)
        self.journal.bind(self._live)

    def estimate(self, messages: Sequence[Message], tools: Sequence[Any] = ()) -> int:
        """The model's token estimate. A durable run takes the uncalibrated one: a model
        client calibrates from every response it sees in its process, which a resumed run's
        new process has not seen, and the decisions made on the estimate must be the same."""
        if self.journal.durable:
            plain = getattr(self.model, "default_estimate", None)
            if plain is not None:
                return int(plain(messages, tools))
        return self.model.estimate_tokens(messages, tools)

    def _live(self, elapsed: float) -> None:
        """The run starts new work, ``elapsed`` seconds of working time already spent (a
        resumed durable run's time before the crash): the deadline counts from there."""
        if self.budget.deadline_s is None:
            return
        self.deadline = anyio.current_time() + self.budget.deadline_s - elapsed
        if self.control.scope is not None:
            self.control.scope.deadline = self.deadline

    # -- the run -----------------------------------------------------------------------------
    async def drive(self, task: str) -> RunResult:
        with run_watchdog():  # the run's waits share one loop timer
            return await self._drive(task)

    async def _drive(self, task: str) -> RunResult:
        await self.emit(ev.RunStarted(task, self.model.name))
        ending = await self._guarded(self._loop)
        if ending.stop not in ("completed", "cancelled", "error"):
            await self.emit(ev.LimitHit(ending.stop, ending.detail))
        if ending.final_answer and self._finals_allowed:
            after = await self._guarded(lambda: self._final_answer(ending))
            if after.stop == "error":
                ending = replace(ending, error=after.error)
            elif after.stop in ("cancelled", "deadline"):
                ending = replace(after, detail=f"{ending.detail}; then {after.detail}")
            elif after.detail:
                ending.detail = f"{ending.detail}; {after.detail}"
        await self._answer_calls(ending)
        s = self.state
        result = RunResult(
            s.value if self.agent.output is not None else s.output,
            ending.stop,
            s.messages,
            s.steps,
            s.usage,
            s.cost,
            ending.error,
            ending.detail or None,
            [
                PendingCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                for c in self.pending
            ],
        )
        await self.emit(ev.RunFinished(result))
        return result

    async def _guarded(self, work: Callable[[], Awaitable[Ending]]) -> Ending:
        """Run ``work`` under the deadline and ``cancel()``; any failure becomes an ending."""
        if self.deadline == math.inf and not self.control.cancellable:
            return await self._caught(work)  # nothing can stop it but its caller: no scope
        with anyio.CancelScope(deadline=self.deadline) as scope:
            self.control.scope = scope
            if self.control.cancelled:
                scope.cancel()
            try:
                return await self._caught(work)
            finally:
                self.control.scope = None
        if self.control.cancelled:
            return Ending("cancelled", "cancelled by the caller")
        return Ending("deadline", f"{self.budget.deadline_s:g}s deadline")

    async def _caught(self, work: Callable[[], Awaitable[Ending]]) -> Ending:
        try:
            return await work()
        except _BudgetStop as stop:
            return stop.ending
        except AgentloopError as exc:
            return Ending("error", error=str(exc))
        except Exception as exc:  # a bug in a strategy or a model client: keep the work
            log.exception("agentloop: the run failed unexpectedly")
            return Ending("error", error=f"unexpected {type(exc).__name__}: {exc}")

    async def _loop(self) -> Ending:
        max_steps = self.budget.max_steps
        overflowed = False  # a context-length error was met on this step already
        if not getattr(self.model, "window_known", True):
            # ask the server for its window before the first step is sized against a default
            await self.model.discover_context_window()  # type: ignore[attr-defined]
        await self._settle_decisions()
        while True:
            number = len(self.state.steps) + 1
            if max_steps is not None and number > max_steps:
                return Ending("max_steps", f"{max_steps} steps")
            if self.agent.context:
                await self._manage(number)
            if number == max_steps and self.agent.toolbox.specs and self._finals_allowed:
                # the last call allowed: make it the final answer rather than more tool calls
                return Ending("max_steps", f"{max_steps} steps", final_answer=True)
            max_tokens, ending = self._fit("step", self._prompt_size())
            if max_tokens is None:
                return ending
            try:
                outcome = await self._step(number, max_tokens)
            except ContextLengthError:
                if overflowed:
                    raise
                # The server counts the prompt larger than we did (or has a smaller window,
                # which the model client has learnt from the error): measure afresh, let the
                # strategies act on the new numbers, and try the step once more.
                overflowed = True
                self.state.measured = None
                self.state.size_memo = None
                continue
            overflowed = False
            if outcome.kind == "paused":
                waiting = ", ".join(c["function"]["name"] for c in self.pending)
                return Ending("approval_required", f"waiting for approval: {waiting}")
            if self.agent.output is not None and outcome.kind in ("answer", "tools"):
                verdict = self._output_progress(outcome)
                if verdict is not None:
                    return verdict
                if not self.state.has_value:
                    continue
                return Ending("completed")
            if outcome.kind != "tools":
                return self._end_of(outcome)
            if self._looping():
                return Ending("loop_detected", "the same tool call kept repeating", None, True)

    def _end_of(self, outcome: StepOutcome) -> Ending:
        if outcome.kind == "answer":
            self.state.output = outcome.response.text
            return Ending("completed")
        if outcome.kind == "reasoning_exhausted":
            return Ending("reasoning_exhausted", "the reasoning used the whole step budget twice")
        if outcome.kind == "refused":
            return Ending("refused", "the model's output was stopped by the content filter")
        return Ending("empty_answer", "the model answered with nothing, twice")

    def _output_progress(self, outcome: StepOutcome) -> Ending | None:
        """An ``output_type`` run after a step: the answer taken (from the final_answer call,
        or a plain-text answer that validates), or one more try asked for, or the tries used
        up. None: go on."""
        out = self.agent.output
        s = self.state
        assert out is not None
        if s.has_value:
            return None
        if outcome.kind == "answer":
            value, why = out.from_text(outcome.response.text)
            if why is None:
                s.value, s.has_value = value, True
                return None
            s.output_tries += 1
            if s.output_tries <= out.retries:
                nudge = NUDGE.format(tool=TOOL_NAME, why=why)
                s.messages.append({"role": "user", "content": nudge})
                return None
        if s.output_tries > out.retries:
            return Ending(
                "invalid_output",
                f"no valid {TOOL_NAME} after {s.output_tries} tries",
            )
        if outcome.kind == "tools" and self._looping():
            return Ending("loop_detected", "the same tool call kept repeating", None, True)
        return None

    # -- limits ------------------------------------------------------------------------------
    def _fit(
        self,
        kind: CallKind,
        prompt: int,
        wanted: int | None = None,
        pending: CallRecord | None = None,
    ) -> tuple[int | None, Ending]:
        """This call's max_tokens (``budget.fit_call``), or None and the ending it causes.
        ``pending``: a call in progress whose failed attempts count too."""
        s = self.state
        floor = self.model.min_max_tokens
        tokens = s.usage.total_tokens + s.assumed_tokens
        cost = s.cost + s.assumed_cost
        if pending is not None:
            tokens += pending.assumed_tokens + sum(u.total_tokens for u in pending.billed)
            cost += pending.assumed_cost
            if self.agent.rate_card is not None:
                cost += sum(self.agent.rate_card.cost(u) for u in pending.billed)
        fit = fit_call(
            self.budget,
            kind,
            prompt=prompt,
            wanted=wanted or self.agent.step_tokens,
            floor=floor,
            context_window=self.model.context_window,
            spent=Spent(tokens, cost),
            rate_card=self.agent.rate_card,
            cached_prefix=s.cached_prefix,
            final_prompt=self.final_prompt_tokens,
        )
        if fit.max_tokens is not None and pending is None:
            return fit.max_tokens, _FITS  # a retry's caller reads the detail of a shrunk fit
        room = fit.room
        leaves = f"{room.binding} leaves {max(room.tokens, 0):,} output tokens"
        if kind == "step":
            detail = f"{leaves} after a {prompt:,}-token prompt, too few for another step"
        else:
            detail = f"{leaves} after a {prompt:,}-token prompt (a call needs {floor:,})"
        return fit.max_tokens, Ending(fit.stop, detail, None, True)

    def _prompt_size(self) -> int:
        """The next prompt's size: measured by the server where possible, estimated otherwise."""
        s = self.state
        # the offered tools are part of an estimated prompt (an MCP server's list can change)
        key = (len(s.messages), s.measured, id(self.agent.toolbox.specs))
        if s.size_memo is not None and s.size_memo[0] == key:
            return s.size_memo[1]
        if s.measured is not None and s.measured[1] <= len(s.messages):
            tokens, count = s.measured
            size = tokens + self.estimate(s.messages[count:])
        else:
            size = self.estimate(s.messages, self.agent.toolbox.specs)
        s.size_memo = (key, size)
        return size

    def _book(self, usage: Usage) -> None:
        """Count a call's usage against the run (an estimate exactly like a report: every
        limit holds on it)."""
        self.state.usage.add(usage)
        if self.agent.rate_card is not None:
            self.state.cost += self.agent.rate_card.cost(usage)
        if usage.estimated and not self._warned_estimate:
            self._warned_estimate = True
            warnings.warn(
                f"{self.model.name} at {getattr(self.model, 'base_url', '?')} reported no "
                "token usage: this run's tokens and cost are agentloop's estimate (marked "
                "Usage.estimated), and its budgets are enforced on that estimate",
                EstimatedUsageWarning,
                stacklevel=2,
            )

    def _looping(self) -> bool:
        return self.state.most_repeats > self.agent.loop_limit

    # -- one step ----------------------------------------------------------------------------
    async def _step(self, number: int, max_tokens: int, *, final: bool = False) -> StepOutcome:
        began = self.journal.now()
        if self.listening:
            await self.emit(ev.StepStarted(number, max_tokens))
        usage = Usage()
        budget = max_tokens
        retried: set[str] = set()
        while True:
            response = await self._call(number, budget, final)
            usage.add(response.usage)
            kind = _classify(response)
            again = self._retry_budget(kind, budget, retried)
            if again is None:
                break
            budget = again
        calls: list[dict[str, Any]] = []
        if kind in ("glitch", "empty"):
            kind = "empty"
        else:
            # the history keeps only what the API accepts and what can be answered: valid
            # JSON arguments within the caps, unique non-empty ids (see tools.prepare_calls)
            calls = prepare_calls(response.message, number)
            self._commit(response)
        record = StepRecord(
            number,
            response.request_id,
            usage,
            response.finish_reason,
            budget,
            response.limiter_wait,
            len(response.retries),
            0.0,
        )
        self.state.steps.append(record)
        if kind == "tools":
            await self._run_tools(number, calls, record, final)
            if final:
                kind = "answer"
            elif self.pending:
                kind = "paused"
        record.duration_s = self.journal.now() - began
        s = self.state
        if self.listening:
            await self.emit(ev.StepFinished(number, record, s.usage.copy(), s.cost))
        return StepOutcome(kind, response)

    def _retry_budget(self, kind: Kind, budget: int, retried: set[str]) -> int | None:
        """The budget to call again with inside this step, or None to keep the response."""
        if kind == "reasoning_exhausted" and "length" not in retried:
            retried.add("length")
            # Reasoning ate the budget: not an answer. Once, try again with more room.
            bigger, _ = self._fit("extra", self._prompt_size(), budget * 2)
            return bigger if bigger is not None and bigger > budget else None
        if kind in ("empty", "glitch") and "glitch" not in retried:
            retried.add("glitch")  # an empty answer or a tool_calls finish with no calls
            same, _ = self._fit("extra", self._prompt_size(), budget)
            return same
        return None

    def _commit(self, response: ModelResponse) -> None:
        s = self.state
        s.messages.append(response.message)
        last = response.usage
        if last.input_tokens:
            # the message as sent back may weigh more than the output reported for it
            sent_back = self.estimate([response.message])
            s.measured = (last.input_tokens + max(last.output_tokens, sent_back), len(s.messages))
            s.cached_prefix = last.cached_input_tokens

    async def _call(self, number: int, max_tokens: int, final: bool) -> ModelResponse:
        """One step's model call, its deltas emitted as they arrive."""
        specs = self.agent.toolbox.specs
        if final and not getattr(self.model, "final_answer_keeps_tools", True):
            specs = []  # a server that ignores tool_choice "none": ask without tools
        request = ModelRequest(
            self.state.messages,
            specs,
            max_tokens,
            # with an output_type the last call must still be able to call final_answer
            tool_choice="none" if final and specs and self.agent.output is None else None,
            input_tokens=self._prompt_size(),
        )
        return await self.call_model(request, number, live=self.listening)

    async def call_model(self, request: ModelRequest, number: int, live: bool) -> ModelResponse:
        """One model call, HTTP retries included: every attempt is booked against the limits
        and a retry that no longer fits is not sent. ``live``: emit the deltas. The journal
        runs the call, or gives back its record when a durable run is resumed."""
        record = await self.journal.model_call(lambda: self._attempts(request, number, live))
        self._apply(record)
        if record.error is not None:
            raise record.error
        if record.stop is not None:
            stop, detail = record.stop
            raise _BudgetStop(Ending(stop, detail, None, True))  # type: ignore[arg-type]
        assert record.response is not None
        return record.response

    def _apply(self, record: CallRecord) -> None:
        s = self.state
        for usage in record.billed:
            self._book(usage)
        s.assumed_tokens += record.assumed_tokens
        s.assumed_cost += record.assumed_cost
        if record.window is not None and record.window < self.model.context_window:
            self.model.context_window = record.window  # what the call taught the model client

    async def _attempts(self, request: ModelRequest, number: int, live: bool) -> CallRecord:
        """The call itself: what it does to the run is returned, not applied, so that a
        recorded call and a live one change the run the same way."""
        record = CallRecord()
        prompt = request.input_tokens or 0
        max_tokens = request.max_tokens or 0
        assembler = Assembler()
        answered = False  # this attempt got a response: the server may have billed it
        # the indices of final_answer calls, whose arguments are the output as it comes
        output_calls: set[int] | None = set() if live and self.agent.output else None
        try:
            async with aclosing(self.model.stream(request)) as deltas:
                async for delta in deltas:
                    if type(delta) is ToolCallDelta and output_calls is None:
                        assembler.feed(delta)  # the most common delta: nothing else to do
                        continue
                    if output_calls is not None and isinstance(delta, ToolCallDelta):
                        if delta.name == TOOL_NAME:
                            output_calls.add(delta.index)
                        if delta.index in output_calls and delta.arguments:
                            await self.emit(ev.OutputDelta(number, delta.arguments))
                    if live and isinstance(delta, ReasoningDelta):
                        await self.emit(ev.ReasoningDelta(number, delta.text))
                    elif live and isinstance(delta, TextDelta):
                        await self.emit(ev.TextDelta(number, delta.text))
                    elif isinstance(delta, ResponseStarted):
                        answered = True
                    elif isinstance(delta, RetryDelta):
                        self._failed_attempt(record, assembler.response.usage, answered, request)
                        answered = False
                        await self.emit(
                            ev.Retry(number, delta.attempt, str(delta.error), delta.wait)
                        )
                        fits, ending = self._fit("extra", prompt, max_tokens, record)
                        if fits is None or fits < max_tokens:
                            record.stop = (ending.stop, ending.detail)  # could bill past a limit
                            return record
                    assembler.feed(delta)
        except anyio.get_cancelled_exc_class():
            self._apply(record)  # stopped mid-call: what was billed so far still counts
            raise
        except AgentloopError as exc:
            record.error = exc
            return record
        response = assembler.finish()
        finish = getattr(self.model, "finish_response", None)
        if finish is not None:
            response = finish(response)
        record.billed.append(response.usage)
        record.response = response
        record.window = self.model.context_window
        return record

    def _failed_attempt(
        self, record: CallRecord, reported: Usage, answered: bool, request: ModelRequest
    ) -> None:
        """A failed attempt may still have been billed: count the usage it reported, or else,
        if the server had answered (the stream broke), its worst case, which is all we know."""
        if reported.total_tokens:
            record.billed.append(replace(reported))
        elif answered:
            guess = Usage(
                input_tokens=request.input_tokens or 0, output_tokens=request.max_tokens or 0
            )
            record.assumed_tokens += guess.total_tokens
            if self.agent.rate_card is not None:
                record.assumed_cost += self.agent.rate_card.cost(guess)

    # -- tools -------------------------------------------------------------------------------
    async def _run_tools(
        self, number: int, calls: list[dict[str, Any]], record: StepRecord, final: bool
    ) -> None:
        s = self.state
        out = self.agent.output
        if out is not None and any(c["function"]["name"] == TOOL_NAME for c in calls):
            await self._take_output(number, calls, record)
            return
        if final:  # a final-answer call came back with tool calls anyway: refuse them
            for call in calls:
                s.messages.append(_tool_message(call, "Error: no more tool calls are allowed."))
            return
        self.pending = [c for c in calls if self._asks_approval(c)]
        calls = [c for c in calls if c not in self.pending]  # the others run now
        if self.listening:
            for call in calls:
                fn = call["function"]
                shown = fn["arguments"][:MAX_ARGUMENT_CHARS]  # never 10 MB into every transcript
                source = self._source(fn["name"])
                await self.emit(ev.ToolCallStarted(number, call["id"], fn["name"], shown, source))
        if not calls:
            return
        outcomes: list[ToolOutcome | None] = [None] * len(calls)
        s.open_calls = (record, list(calls), outcomes)
        await self.agent.toolbox.run(calls, s.failures, outcomes, self.journal)
        await self._answer_calls()

    def _source(self, name: str) -> str | None:
        tool = self.agent.toolbox.tools.get(name)
        return tool.source if tool is not None else None

    def _asks_approval(self, call: dict[str, Any]) -> bool:
        target = self.agent.toolbox.tools.get(call["function"]["name"])
        return target is not None and target.asks_approval(call["function"]["arguments"])

    async def _settle_decisions(self) -> None:
        """A run resumed after ``approval_required``: run the approved calls (edited ones with
        their new arguments), answer the rejected ones, before the first step."""
        waiting = waiting_calls(self.state.messages)
        if not waiting:
            return
        record = StepRecord(len(self.state.steps), None, Usage(), None, 0, 0.0, 0, 0.0)
        run: list[dict[str, Any]] = []
        for call in waiting:
            decision = self.approvals[call["id"]]  # Agent checked every call has one
            if isinstance(decision, Edited):
                fn = {**call["function"], "arguments": json.dumps(decision.arguments)}
                run.append({**call, "function": fn})
            elif decision is True:
                run.append(call)
        outcomes: list[ToolOutcome | None] = [None] * len(run)
        self.state.open_calls = (record, list(run), outcomes)
        await self.agent.toolbox.run(run, self.state.failures, outcomes, self.journal)
        await self._answer_calls()
        for call in waiting:
            decision = self.approvals[call["id"]]
            if decision is True or isinstance(decision, Edited):
                continue
            reason = decision.reason if isinstance(decision, Rejected) else ""
            note = "The user rejected this call; it was not run." + (
                f" Reason: {reason}" if reason else ""
            )
            await self._answer(record, call, ToolOutcome(note, False, "rejected"), note)
        # the answers go in call order (the API takes them in any order after the call)

    async def _take_output(
        self, number: int, calls: list[dict[str, Any]], record: StepRecord
    ) -> None:
        """A step that calls final_answer: its first such call is validated (the answer, or the
        errors sent back for another try); every other call of the step is answered unrun."""
        out = self.agent.output
        assert out is not None
        s = self.state
        first = next(c for c in calls if c["function"]["name"] == TOOL_NAME)
        value, why = out.from_arguments(first["function"]["arguments"])
        if why is None:
            s.value, s.has_value = value, True
        else:
            s.output_tries += 1
        for call in calls:
            fn = call["function"]
            shown = fn["arguments"][:MAX_ARGUMENT_CHARS]
            source = self._source(fn["name"])
            await self.emit(ev.ToolCallStarted(number, call["id"], fn["name"], shown, source))
            if call is first:
                content = why or "Final answer recorded."
                problem = None if why is None else "invalid_output"
                outcome = ToolOutcome(content, why is None, problem)
            else:
                content = (
                    "Error: not run — the final answer ends the run."
                    if why is None
                    else f"Error: not run — fix the {TOOL_NAME} call first."
                )
                outcome = ToolOutcome(content, False, "not_run")
            await self._answer(record, call, outcome, content)

    async def _answer(
        self, record: StepRecord, call: dict[str, Any], outcome: ToolOutcome, content: str
    ) -> None:
        """The one tool message of ``call``, its record and its event."""
        self.state.messages.append(_tool_message(call, content))
        fn = call["function"]
        raw = fn["arguments"]
        record.tool_calls.append(
            ToolCallRecord(
                call["id"],
                fn["name"],
                raw[:MAX_ARGUMENT_CHARS],
                outcome.ok,
                outcome.error,
                outcome.duration_s,
                call.get("model_id"),
                len(raw) if len(raw) > MAX_ARGUMENT_CHARS else None,
            )
        )
        if not self.listening:
            return
        await self.emit(
            ev.ToolCallFinished(
                record.step,
                call["id"],
                fn["name"],
                outcome.ok,
                outcome.error,
                outcome.duration_s,
                content,
                self._source(fn["name"]),
            )
        )

    def _shape(self, call: dict[str, Any], content: str) -> str:
        fn = call["function"]
        arguments = fn["arguments"][:MAX_ARGUMENT_CHARS]  # over the cap the call was refused
        key = (fn["name"], arguments)
        s = self.state
        repeats = s.repeats[key] = s.repeats.get(key, 0) + 1
        if repeats > s.most_repeats:
            s.most_repeats = repeats
        for strategy in self.agent.context:
            content = strategy.shape_result(content, fn["name"], arguments)
        limit = self.agent.loop_limit
        if repeats == limit:
            content += (
                f"\n[note: this is the {limit}th identical call to {fn['name']} with these "
                "arguments; change your approach — the next repeat ends the run]"
            )
        return content

    async def _answer_calls(self, stopped: Ending | None = None) -> None:
        """Answer the running step's calls, each once, in call order: with its outcome, or
        (after a stop) a note saying it has none. A call leaves the open list only when it
        has its tool message, so nothing that fails on the way leaves one unanswered."""
        if self.state.open_calls is None:
            return
        record, calls, outcomes = self.state.open_calls
        why = (stopped.detail or stopped.stop) if stopped is not None else ""
        note = f"Error: no result — the run stopped ({why}) before this call finished."
        while calls:
            call, outcome = calls[0], outcomes[0]
            if outcome is None:
                outcome, content = ToolOutcome(note, False, "interrupted"), note
            elif stopped is None:
                content = self._shape(call, outcome.content)
            else:  # the run is over: never let a failing strategy leave the call unanswered
                try:
                    content = self._shape(call, outcome.content)
                except Exception:
                    content = outcome.content
            del calls[0], outcomes[0]
            await self._answer(record, call, outcome, content)
        self.state.open_calls = None

    # -- the final answer --------------------------------------------------------------------
    async def _final_answer(self, ending: Ending) -> Ending:
        s = self.state
        last = s.messages[-1]
        if self.agent.output is not None:
            if s.has_value:
                return Ending(ending.stop)
        elif last.get("role") == "assistant" and not last.get("tool_calls"):
            s.output = str(last.get("content") or "")
            return Ending(ending.stop)
        label = LIMIT_LABELS.get(ending.stop, ending.stop)
        prompt = FINAL_OUTPUT_PROMPT if self.agent.output is not None else FINAL_ANSWER_PROMPT
        s.messages.append({"role": "user", "content": prompt.format(limit=label)})
        max_tokens, blocked = self._fit("final", self._prompt_size())
        if max_tokens is None:
            s.messages.pop()
            return Ending(ending.stop, f"no final answer: {blocked.detail}")
        try:
            outcome = await self._step(len(s.steps) + 1, max_tokens, final=True)
        finally:
            if s.messages[-1].get("role") == "user":
                s.messages.pop()  # never leave the request for a final answer unanswered
        if self.agent.output is not None:
            if not s.has_value and outcome.kind == "answer":
                value, _ = self.agent.output.from_text(outcome.response.text)
                if _ is None:
                    s.value, s.has_value = value, True
            if s.has_value:
                return Ending(ending.stop)
            return Ending(ending.stop, f"no final answer: no valid {TOOL_NAME} call")
        if outcome.kind == "answer" and outcome.response.text.strip():
            s.output = outcome.response.text
            return Ending(ending.stop)
        why = (
            "the model called tools instead"
            if outcome.response.tool_calls
            else self._end_of(outcome).detail
        )
        return Ending(ending.stop, f"no final answer: {why}")

    # -- context management ------------------------------------------------------------------
    async def _manage(self, number: int) -> None:
        window = Window(self, number)
        for strategy in self.agent.context:
            window.call_usage = Usage()
            edit = await strategy.manage(window)
            if edit is not None:
                await self.emit(
                    ev.ContextEdited(
                        number,
                        edit.strategy,
                        edit.tokens_before,
                        edit.tokens_after,
                        edit.detail,
                        window.call_usage,
                    )
                )


def _classify(response: ModelResponse) -> Kind:
    if response.tool_calls:
        return "tools"
    if response.finish_reason == "length" and not response.text:
        return "reasoning_exhausted"
    if response.finish_reason == "content_filter":
        return "refused"
    if response.finish_reason == "tool_calls":
        return "glitch"  # seen from Kimi endpoints under load
    return "answer" if response.text.strip() else "empty"


def waiting_calls(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The calls of the history's last assistant message that have no tool message yet: what a
    run paused for approval left."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "assistant":
            calls = message.get("tool_calls") or []
            answered = {m.get("tool_call_id") for m in messages[index + 1 :]}
            return [c for c in calls if c.get("id") not in answered]
        if message.get("role") not in ("tool",):
            return []
    return []


def _tool_message(call: dict[str, Any], content: str) -> Message:
    return {
        "role": "tool",
        "tool_call_id": call["id"],
        "name": call["function"]["name"],
        "content": content,
    }


class Window:
    """The run's side of ``context.ContextWindow``."""

    def __init__(self, run: Run, step: int) -> None:
        self._run = run
        self.step = step  # the step the edit comes before
        self.messages = run.state.messages
        self.call_usage = Usage()
        self._limit: tuple[int, int] | None = None  # (the window it was for, the line)

    @property
    def tokens(self) -> int:
        return self._run._prompt_size()

    @property
    def limit(self) -> int:
        run = self._run
        window = run.model.context_window  # a strategy's call may teach the model a smaller one
        if self._limit is None or self._limit[0] != window:
            line = context_line(
                run.budget,
                context_window=window,
                step_tokens=run.agent.step_tokens,
                floor=run.model.min_max_tokens,
                final_prompt=run.final_prompt_tokens,
            )
            self._limit = (window, line)
        return self._limit[1]

    @property
    def window(self) -> int:
        ceiling = self._run.model.context_window
        total = self._run.budget.total_tokens
        return min(ceiling, total) if total is not None else ceiling

    def estimate(self, messages: Sequence[Message]) -> int:
        return self._run.estimate(messages)

    def replace(self, messages: list[Message]) -> None:
        s = self._run.state
        s.messages[:] = messages  # in place: the result shares this list
        s.measured = None
        s.cached_prefix = 0  # the edit changed the prefix the cache held
        s.size_memo = None

    async def summarise(self, messages: list[Message], max_tokens: int) -> str:
        run = self._run
        specs = run.agent.toolbox.specs
        prompt = run.estimate(messages, specs)
        fitted, _ = run._fit("extra", prompt, max_tokens)
        if fitted is None:
            return ""  # no room for a summary within the limits
        request = ModelRequest(messages, specs, fitted, input_tokens=prompt)
        response = await run.call_model(request, self.step, live=False)
        self.call_usage.add(response.usage)
        if response.finish_reason == "length":
            return ""  # a cut-off summary would silently lose the end of the findings
        return response.text
