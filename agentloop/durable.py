"""Durable runs on DBOS: a run that survives a crash and continues where it was.

``pip install 'agentloop[durable]'``. A durable run is a DBOS workflow; each model call and
each tool call is one of its steps, committed to the store (a SQLite file, or Postgres) before
the run goes on. Starting the same ``run_id`` again after the process died replays the
committed steps from the store (no model call is sent again, no finished tool runs again) and
continues live from the first step that had not finished::

    async with DurableStore("runs.db") as store:
        result = await agent.run(task, run_id="task-7", store=store)

Replay is deterministic because the loop decides only from step results and the run's clock,
which the journal keeps as *working time*: the time recorded up to the last committed step,
then the time since the resume (the downtime is not counted, nor the part of a step the crash
interrupted). ``deadline_s`` counts that working time.

A tool call that was running at the crash runs again when the run resumes, unless its tool says
``repeat_safe=False``: then its call is answered with a note that it was interrupted and its
outcome is unknown, so the model can check before acting again.

Only messages, tool results, usage and records go into the store: never the model client, its
headers or its key.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from . import _records
from . import events as ev
from ._journal import CallRecord, Journal
from ._loop import Control, Emit, Run
from .errors import AgentloopError, ConfigurationError
from .messages import Message, Usage
from .result import Decision, RunResult
from .tools import ToolOutcome

try:
    from dbos import DBOS, SetWorkflowID
except ImportError as exc:  # pragma: no cover - the extra is part of the test install
    raise ConfigurationError(
        "durable runs need DBOS: pip install 'agentloop[durable]'"
    ) from exc

if TYPE_CHECKING:
    from .agent import Agent
    from .tools import Tool

# What the store's records are compatible with; DBOS only resumes runs of the same version,
# so this is the record format, not a hash of the code (which would strand every run at the
# next upgrade).
APP_VERSION = f"agentloop-records-{_records.FORMAT}"
WORKFLOW = "agentloop.run"

INTERRUPTED_NOTE = (
    "Error: this call was running when the process stopped, and {tool} is not safe to run "
    "twice, so it was not run again: its outcome is unknown. Check whether it took effect "
    "before calling it again."
)


class DurableRunError(AgentloopError):
    """A durable run cannot be started or resumed as asked."""


class _Suspended(BaseException):
    """Leaves the workflow without an outcome, so DBOS keeps it resumable (a ``cancelled`` run
    is paused, not finished). A BaseException: DBOS records only ``Exception``s."""


@dataclass(slots=True)
class _Live:
    """What a run needs that is not stored: found by its workflow id."""

    agent: Agent
    messages: list[Message]
    emit: Emit
    control: Control
    result: RunResult | None = None
    journal: DbosJournal | None = field(default=None)
    owned: bool = False  # built by the runner: the workflow removes it when done
    approvals: Mapping[str, Decision] | None = None
    carried: RunResult | None = None  # a paused run resumed: its steps and spend


_LIVE: dict[str, _Live] = {}
_STARTING: set[str] = set()

# Builds the live pieces of a run this process took from a queue (a batch's worker): called
# with the run id, the task and the start messages.
Runner = Callable[[str, str, list[Message]], _Live]
_RUNNER: list[Runner] = []


# -- the journal -------------------------------------------------------------------------------
@DBOS.step(name="agentloop.model_call")
async def _model_step(body: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    return await body()


@DBOS.step(name="agentloop.tool_call")
async def _tool_step(body: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    return await body()


@DBOS.step(name="agentloop.tool_started")
async def _started_step(body: Callable[[], str]) -> str:
    return body()


class DbosJournal(Journal):
    """Each model call and tool call is a DBOS step. The body of a step runs only when the
    store has no record of it; otherwise DBOS hands back the record."""

    durable = True

    def __init__(self, now: Callable[[], float]) -> None:
        super().__init__(now)
        self._elapsed = 0.0  # working time at the last record replayed
        self._live_since: float | None = None
        self._on_live: Callable[[float], None] = lambda _: None
        self.incarnation = uuid.uuid4().hex  # this process's attempt at the run
        self.replayed = 0  # steps given back from the store

    def now(self) -> float:
        if self._live_since is None:
            return self._elapsed
        return self._elapsed + (self._now() - self._live_since)

    def bind(self, on_live: Callable[[float], None]) -> None:
        self._on_live = on_live

    def _go_live(self) -> None:
        if self._live_since is None:
            self._live_since = self._now()
            self._on_live(self._elapsed)

    def _replayed(self, at: float) -> None:
        self.replayed += 1
        if self._live_since is None:
            self._elapsed = at

    async def model_call(self, work: Callable[[], Awaitable[CallRecord]]) -> CallRecord:
        done: list[CallRecord] = []

        async def body() -> dict[str, Any]:
            self._go_live()
            record = await work()
            done.append(record)
            return {"call": _records.call_to(record), "at": self.now()}

        out = await _model_step(body)
        if done:
            return done[0]
        self._replayed(out["at"])
        return _records.call_from(out["call"])

    async def tool_call(
        self,
        call: dict[str, Any],
        tool: Tool,
        work: Callable[[], Awaitable[ToolOutcome]],
    ) -> ToolOutcome:
        # Every step's number is taken when it is called, before any await, so calls that run
        # concurrently are numbered in call order, as on replay.
        marker = None
        if not tool.repeat_safe:
            marker = _started_step(self._mark)
        done: list[ToolOutcome] = []
        began: list[str] = []

        async def body() -> dict[str, Any]:
            self._go_live()
            if began and began[0] != self.incarnation:  # it began before the crash
                note = INTERRUPTED_NOTE.format(tool=tool.name)
                outcome = ToolOutcome(note, False, "interrupted")
            else:
                outcome = await work()
            done.append(outcome)
            return {"outcome": _records.outcome_to(outcome), "at": self.now()}

        step = _tool_step(body)
        if marker is not None:
            try:
                began.append(await marker)
            except BaseException:
                step.close()
                raise
        out = await step
        if done:
            return done[0]
        self._replayed(out["at"])
        return _records.outcome_from(out["outcome"])

    def _mark(self) -> str:
        self._go_live()
        return self.incarnation


@DBOS.workflow(name=WORKFLOW)
async def _run_workflow(task: str, start: list[Message]) -> dict[str, Any]:
    run_id = DBOS.workflow_id
    assert run_id is not None
    live = _LIVE.get(run_id)
    if live is None and _RUNNER:  # taken from a queue by a worker: it builds the run here
        live = _RUNNER[0](run_id, task, list(start))
        live.owned = True
        _LIVE[run_id] = live
    if live is None:
        # resumed by a process that is not running it (it never resumes runs it was not asked
        # to): leave it pending for the process that asks
        raise _Suspended
    journal = live.journal = DbosJournal(live.agent.clock.now)
    run = Run(
        live.agent, live.messages, live.emit, live.control, journal, live.approvals, live.carried
    )
    try:
        result = await run.drive(task)
    finally:
        if live.owned:
            _LIVE.pop(run_id, None)
    live.result = result
    if result.stop_reason == "cancelled":
        raise _Suspended  # paused: starting the run again resumes it
    return _records.result_to(result)


# -- the store ---------------------------------------------------------------------------------
def _database_url(location: str | os.PathLike[str]) -> str:
    text = os.fspath(location)
    if "://" in text:
        if not text.startswith(("sqlite://", "postgresql://", "postgres://", "postgresql+")):
            raise ConfigurationError(
                f"store {_safe_url(text)!r}: give a SQLite file path (runs.db) or a "
                "postgresql:// URL"
            )
        return text
    try:
        path = Path(text).expanduser().resolve()
    except RuntimeError as exc:  # "~nosuchuser/..."
        raise ConfigurationError(f"store {text!r}: {exc}") from None
    if path.is_dir():
        raise ConfigurationError(f"store {text!r} is a directory: name a file, e.g. runs.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # WAL: one commit per step costs ~4 ms instead of ~17 ms (no rollback-journal fsyncs),
        # and several processes can share the file
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        raise ConfigurationError(f"store {text!r} cannot be opened as SQLite: {exc}") from exc
    return f"sqlite:///{path}"


class DurableStore:
    """Where durable runs are recorded: a SQLite file (default ``runs.db``) or a Postgres URL.
    Use it as an async context manager; DBOS is one per process, so is an open store."""

    _open: DurableStore | None = None

    def __init__(
        self,
        location: str | os.PathLike[str] = "runs.db",
        *,
        worker: str | None = None,
        queues: Sequence[str] = (),
    ) -> None:
        """``worker``: a name for this process in a fleet (stable across its restarts: a
        restarted worker takes back the runs it had in flight when it died); ``queues``: the
        work queues this process takes runs from (``serve``)."""
        self.url = _database_url(location)
        self.worker = worker
        if worker is not None and not worker.replace("-", "").replace("_", "").isalnum():
            raise ConfigurationError(f"worker name {worker!r}: use letters, digits, - and _")
        self.executor_id = f"agentloop-w-{worker}" if worker else f"agentloop-{uuid.uuid4().hex}"
        self._queue = f"agentloop-resume-{self.executor_id}"
        self.queues = list(queues)

    def __repr__(self) -> str:
        return f"DurableStore({_safe_url(self.url)!r})"

    async def __aenter__(self) -> DurableStore:
        if DurableStore._open is not None:
            raise ConfigurationError(
                f"{DurableStore._open!r} is already open in this process; DBOS allows one "
                "store per process: use it, or close it first"
            )
        config: Any = {
            "name": "agentloop",
            "system_database_url": self.url,
            "application_version": APP_VERSION,
            # its own executor id: DBOS then never resumes runs on its own at launch; a run is
            # resumed when (and where) it is asked for again. A named worker's id is stable:
            # at launch it puts the runs it had in flight back on their queue.
            "executor_id": self.executor_id,
            # ERROR: DBOS warns on every cancelled run (a pause here); our errors say the rest
            "console_log_level": "ERROR",
        }
        try:
            DBOS(config=config)
            DBOS.listen_queues([self._queue, *self.queues])
            # on this thread: DBOS then runs resumed runs on this event loop (where the run's
            # consumer is), not on a loop of its own
            DBOS.launch()
            await DBOS.register_queue_async(self._queue, polling_interval_sec=0.05)
        except Exception as exc:
            DBOS.destroy(destroy_registry=False)
            raise ConfigurationError(
                f"cannot open the durable store {_safe_url(self.url)}: {exc}"
            ) from exc
        DurableStore._open = self
        return self

    async def __aexit__(self, *exc: object) -> None:
        DurableStore._open = None
        await anyio.to_thread.run_sync(lambda: DBOS.destroy(destroy_registry=False))

    def serve(self, runner: Runner | None) -> None:
        """Run the workflows this process takes from its ``queues`` with ``runner``'s agent
        and channel (None: stop). Set it before the store is opened: a named worker takes back
        its runs at launch."""
        _RUNNER.clear()
        if runner is not None:
            _RUNNER.append(runner)

    async def open_queue(self, name: str, concurrency: int) -> Any:
        """A work queue in the store (shared by every process on it), ``concurrency`` runs at
        a time in this process."""
        self._check_open()
        return await DBOS.register_queue_async(
            name, worker_concurrency=concurrency, polling_interval_sec=0.1
        )

    async def finished(self, run_ids: Sequence[str]) -> dict[str, RunResult]:
        """The results of those of ``run_ids`` that have finished (wherever they ran)."""
        self._check_open()
        found: dict[str, RunResult] = {}
        ids = list(run_ids)
        for start in range(0, len(ids), 500):
            rows = await DBOS.list_workflows_async(
                workflow_ids=ids[start : start + 500],
                status=["SUCCESS", "ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"],
                load_input=False,
            )
            for row in rows:
                if row.status == "SUCCESS" and isinstance(row.output, dict):
                    found[row.workflow_id] = _records.result_from(row.output)
                elif row.status != "SUCCESS":  # the workflow itself failed: an error run
                    why = f"the run's workflow failed in the store: {row.error}"
                    found[row.workflow_id] = RunResult("", "error", [], [], Usage(), 0.0, why)
        return found

    async def enqueue(self, queue: Any, run_id: str, task: str, start: list[Message]) -> None:
        """Put the run on ``queue`` unless the store has it already (the run id is the key:
        every process of a fleet may enqueue the same runs, each is run once)."""
        self._check_open()
        if await DBOS.get_workflow_status_async(run_id) is not None:
            return
        with SetWorkflowID(run_id):
            await queue.enqueue_async(_run_workflow, task, list(start))

    def _check_open(self) -> None:
        if DurableStore._open is not self:
            raise ConfigurationError(
                "the durable store is not open: use `async with DurableStore(...) as store:`"
            )

    async def status(self, run_id: str) -> str | None:
        """``None`` (never started), ``"running"`` (started, not finished: it resumes when
        run again), ``"finished"``, or ``"failed"`` (the run's workflow itself failed)."""
        self._check_open()
        found = await DBOS.get_workflow_status_async(run_id)
        if found is None:
            return None
        if found.status == "SUCCESS":
            return "finished"
        if found.status in ("ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"):
            return "failed"
        return "running"

    async def result(self, run_id: str) -> RunResult | None:
        """The result of a finished run, from the store; None if it has not finished."""
        self._check_open()
        found = await DBOS.get_workflow_status_async(run_id)
        if found is None or found.status != "SUCCESS" or not isinstance(found.output, dict):
            return None
        return _records.result_from(found.output)

    async def drive(
        self,
        agent: Agent,
        messages: list[Message],
        task: str,
        run_id: str,
        emit: Emit,
        control: Control,
        approvals: Mapping[str, Decision] | None = None,
        carried: RunResult | None = None,
    ) -> RunResult:
        """Run (or resume, or return the recorded result of) the durable run ``run_id``."""
        self._check_open()
        if not isinstance(run_id, str) or not run_id.strip() or run_id != run_id.strip():
            raise ConfigurationError(
                f"run_id {run_id!r}: a durable run needs a non-empty string without surrounding "
                "spaces"
            )
        if run_id in _LIVE or run_id in _STARTING:
            raise ConfigurationError(f"run {run_id!r} is already running in this process")
        _STARTING.add(run_id)  # until it is in _LIVE: a second caller is refused, not raced
        try:
            found = await DBOS.get_workflow_status_async(run_id)
        finally:
            _STARTING.discard(run_id)
        if found is not None:
            if found.name != WORKFLOW:
                raise DurableRunError(f"{run_id!r} in the store is not an agentloop run")
            recorded = _recorded_input(found.input)
            if recorded is not None and recorded != (task, messages):
                raise ConfigurationError(
                    f"run {run_id!r} was started with a different task or history; resume "
                    "it with the same ones, or give this run another run_id"
                )
            if found.status == "SUCCESS":
                result = _typed(agent, _records.result_from(found.output or {}))
                await _replay_finished(result, task, agent, emit)
                return result
            if found.status in ("ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"):
                raise DurableRunError(
                    f"run {run_id!r} failed in the store ({found.status}): {found.error}; "
                    "start it again under a new run_id"
                )
        live = _LIVE[run_id] = _Live(
            agent, messages, emit, control, approvals=approvals, carried=carried
        )
        try:
            if found is None:
                with SetWorkflowID(run_id):
                    data = await _run_workflow(task, list(messages))
            else:
                handle = await DBOS.resume_workflow_async(run_id, queue_name=self._queue)
                data = await _wait(handle, control)
        except _Suspended:
            if live.result is None:
                raise DurableRunError(f"run {run_id!r} did not run in this process") from None
            return live.result
        finally:
            del _LIVE[run_id]
        result = _typed(agent, _records.result_from(data))
        # the run's list is the one the caller may hold: give it the whole history
        messages[:] = result.messages
        result.messages = messages
        return result


def _typed(agent: Agent, result: RunResult) -> RunResult:
    """A structured output read from the store is JSON data: make it the output type again."""
    if agent.output is not None and result.output is not None:
        result.output = agent.output.adapter.validate_python(result.output)
    return result


async def _wait(handle: Any, control: Control) -> dict[str, Any]:
    """Wait for a resumed run (DBOS runs it in a task of its own): a caller who is cancelled
    stops the run and still waits for it to end well-formed."""
    try:
        data: dict[str, Any] = await handle.get_result(polling_interval_sec=0.05)
        return data
    except anyio.get_cancelled_exc_class():
        control.cancel()
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(_Suspended):
                await handle.get_result(polling_interval_sec=0.05)
        raise


def _recorded_input(raw: Any) -> tuple[str, list[Message]] | None:
    args = raw.get("args") if isinstance(raw, dict) else getattr(raw, "args", None)
    try:
        task, start = args  # type: ignore[misc]
    except (ValueError, TypeError):
        return None
    return (task, list(start))


async def _replay_finished(result: RunResult, task: str, agent: Agent, emit: Emit) -> None:
    """A finished run asked for again: its events from the records — steps, tool calls with
    their results, the limit it hit — without deltas or calls."""
    await emit(ev.RunStarted(task, agent.model.name))
    answers = {
        m.get("tool_call_id"): str(m.get("content", ""))
        for m in result.messages
        if m.get("role") == "tool"
    }
    total = Usage()
    cost = 0.0
    for record in result.steps:
        await emit(ev.StepStarted(record.step, record.max_tokens))
        for call in record.tool_calls:
            await emit(ev.ToolCallStarted(record.step, call.call_id, call.name, call.arguments))
            content = answers.get(call.call_id, "")
            await emit(
                ev.ToolCallFinished(
                    record.step,
                    call.call_id,
                    call.name,
                    call.ok,
                    call.error,
                    call.duration_s,
                    content,
                )
            )
        total.add(record.usage)
        if agent.rate_card is not None:
            cost += agent.rate_card.cost(record.usage)
        await emit(ev.StepFinished(record.step, record, replace(total), cost))
    if result.stop_reason not in ("completed", "cancelled", "error"):
        await emit(ev.LimitHit(result.stop_reason, result.detail or ""))
    await emit(ev.RunFinished(result))


def _safe_url(url: str) -> str:
    """The URL without a password."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


Live = _Live
database_url = _database_url

__all__ = ["Control", "DurableRunError", "DurableStore", "Live", "database_url"]
