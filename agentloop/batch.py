"""Batch evaluation: every task of a JSON Lines file run K times, one result line per (id, run).

``abatch(...)`` (async, for notebooks and async code) and ``batch(...)`` (sync; from inside a
running event loop it runs the batch in a worker thread) run a task file at most
``concurrency`` runs at a time and append each finished run to the results file, flushed and
fsynced, one line at a time. Running the same batch again skips the (id, run) pairs already in
the file (a line torn by a crash is dropped first), so an interrupted batch resumes where it
stopped and the file never holds a pair twice. Runs stopped by ``cancel()`` (Ctrl-C on the
command line) finish as ``cancelled`` and are not written: the next run of the batch does them.

With ``db`` (a SQLite path or a ``postgresql://`` URL) each run is also a durable run of
``agentloop.durable`` (an optional extra): it is started with the id ``run_id(task_id, run)``
and continues after its last committed step when the batch is run again.

The rendering (live view, plain lines, the summary table) is in ``batch_view.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio

from . import events as ev
from .agent import Agent
from .budget import Budget
from .errors import ConfigurationError
from .models.base import BuiltinTool, Model
from .presets import Sampling, preset_key, sampling
from .result import RunResult
from .tools import Tool

Scorer = Callable[[str, Any], bool]
Display = Literal["live", "plain", "json"]

# An error the server answered that means the configuration is wrong (key, region, model, URL):
# every other run would get it too, so the batch stops instead of recording it as a result.
_CONFIG_ERROR = re.compile(r"^(?:HTTP )?(?:401|403|404)\b")


# -- ids -----------------------------------------------------------------------------------------
def run_id(task_id: str | int, run: int) -> str:
    """The durable run id of run ``run`` (0-based) of task ``task_id``: ``"<id>#<run>"``."""
    return f"{task_id}#{run}"


# -- the task file -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Task:
    id: str | int
    task: str
    answer: Any = None  # None: no answer given (the run is not scored)
    line: int = 0

    @property
    def key(self) -> str:
        return str(self.id)

    @property
    def has_answer(self) -> bool:
        return self.answer is not None


def load_tasks(path: str | Path) -> list[Task]:
    """The tasks of a JSON Lines file, one ``{"id": ..., "task": ..., "answer": ...}`` per line
    (``answer`` optional; blank lines are skipped). A bad line is a ``ConfigurationError`` naming
    the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the task file {path}: {exc}") from None
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"{where}: not JSON ({exc.msg} at column {exc.colno})"
            ) from None
        tasks.append(_task(item, where, number, seen))
    if not tasks:
        raise ConfigurationError(f"{path}: no tasks (one JSON object per line)")
    return tasks


def _task(item: Any, where: str, number: int, seen: dict[str, int]) -> Task:
    if not isinstance(item, dict):
        raise ConfigurationError(f'{where}: expected an object {{"id": ..., "task": ...}}')
    if "id" not in item:
        raise ConfigurationError(f'{where}: missing "id"')
    task_id = item["id"]
    if isinstance(task_id, bool) or not isinstance(task_id, str | int) or task_id == "":
        raise ConfigurationError(f'{where}: "id" must be a non-empty string or an integer')
    if "task" not in item:
        raise ConfigurationError(f'{where}: missing "task"')
    if not isinstance(item["task"], str) or not item["task"].strip():
        raise ConfigurationError(f'{where}: "task" must be a non-empty string')
    key = str(task_id)
    if key in seen:
        raise ConfigurationError(f"{where}: duplicate id {task_id!r} (first on line {seen[key]})")
    seen[key] = number
    return Task(task_id, item["task"], item.get("answer"), number)


def tasks_from(items: Iterable[Task | Mapping[str, Any]]) -> list[Task]:
    """Tasks given from Python (``Task`` objects or dicts like the file's lines)."""
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    for number, item in enumerate(items, start=1):
        if isinstance(item, Task):
            item = {"id": item.id, "task": item.task, "answer": item.answer}
        tasks.append(_task(dict(item), f"task {number}", number, seen))
    if not tasks:
        raise ConfigurationError("no tasks")
    return tasks


# -- scoring -------------------------------------------------------------------------------------
# stripped from both ends: quotes, sentence punctuation, brackets and markdown emphasis, but
# never a sign, a currency or a percent sign ("-5" and "5" stay different answers)
_EDGES = " \t\r\n\"'`“”‘’«»「」.,;:!?()[]{}*_"
_SPACE = re.compile(r"\s+")


def normalise(text: Any) -> str:
    """Casefolded, stripped, inner whitespace collapsed, surrounding quotes and punctuation
    removed."""
    return _SPACE.sub(" ", str(text).casefold()).strip(_EDGES)


def exact_match(output: str, answer: Any) -> bool:
    """The default scorer: ``output`` equals ``answer`` once both are ``normalise``d; a list
    answer accepts any of its items."""
    answers = answer if isinstance(answer, list) else [answer]
    got = normalise(output)
    return any(got == normalise(a) for a in answers)


# -- the results file ----------------------------------------------------------------------------
Record = dict[str, Any]


class ResultsFile:
    """``RESULTS.jsonl``: one JSON line per finished (id, run), appended, flushed and fsynced one
    at a time. ``load`` reads what is there, dropping a torn last line (truncating the file to its
    last complete line)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[tuple[str, int], Record] = {}
        self.dropped_bytes = 0  # the torn tail removed by ``load``
        self.duplicates = 0
        self._lock = threading.Lock()

    def load(self) -> dict[tuple[str, int], Record]:
        if not self.path.exists():
            return self.records
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        lines = data[:keep].split(b"\n")[:-1]
        parsed: list[tuple[int, Record]] = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                key = (str(record["id"]), int(record["run"]))
            except (ValueError, KeyError, TypeError) as exc:
                if number == len(lines):  # a last line that never finished (zeros after a crash)
                    keep -= len(raw) + 1
                    break
                raise ConfigurationError(
                    f"{self.path} line {number}: not a result line ({exc}); the file is "
                    "damaged: fix or remove that line, or write to a new --out"
                ) from None
            parsed.append((number, record))
            if key in self.records:
                self.duplicates += 1
            else:
                self.records[key] = record
        if keep < len(data):
            self.dropped_bytes = len(data) - keep
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
        return self.records

    def append_once(self, record: Record) -> bool:
        """Append ``record`` unless the file has its pair, under an exclusive lock on the file:
        workers of a fleet on one machine may share it. False if the pair was there."""
        key = (str(record["id"]), int(record["run"]))
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+", encoding="utf-8") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    handle.seek(0)
                    for raw in handle:  # what other processes appended since we loaded it
                        if raw.endswith("\n"):
                            with contextlib.suppress(ValueError, KeyError, TypeError):
                                other = json.loads(raw)
                                pair = (str(other["id"]), int(other["run"]))
                                self.records.setdefault(pair, other)
                    if key in self.records:
                        return False
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())
                    self.records[key] = record
                    return True
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        """Nothing stays open between appends (each takes the file's lock)."""


# -- settings ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Settings:
    """What a result line records about how it was run (enough to run it again)."""

    model: str
    preset: str | None
    temperature: float | None
    top_p: float | None
    thinking: bool | None
    budget: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def mismatch(self, record: Record) -> str | None:
        for name, value in self.as_dict().items():
            if name in record and record[name] != value:
                return f"{name} {record[name]!r} (this batch: {value!r})"
        return None


def model_settings(model: Model) -> tuple[float | None, float | None, bool | None]:
    """(temperature, top_p, thinking) as ``model`` sends them: a thinking Kimi model has the fixed
    sampler (1.0, 0.95); otherwise what it sets (None: the server's default)."""
    from .models.kimi import NON_THINKING_TEMPERATURE, THINKING_SAMPLER, KimiModel

    if isinstance(model, KimiModel):
        if model.thinking:
            return THINKING_SAMPLER["temperature"], THINKING_SAMPLER["top_p"], True
        temperature = model.temperature
        return (
            (temperature if temperature is not None else NON_THINKING_TEMPERATURE),
            (model.top_p),
            False,
        )
    extra = getattr(model, "extra_body", None) or {}
    thinking = extra.get("thinking")
    return (
        extra.get("temperature"),
        extra.get("top_p"),
        None if thinking is None else bool(thinking),
    )


# -- progress and summary ------------------------------------------------------------------------
@dataclass
class Progress:
    """The batch as it goes, for a display: counts over the whole results file (``recorded``,
    ``tasks_done``) and this session's work (``ran``, steps, tokens, dollars, 429s)."""

    tasks: int
    runs: int
    pairs: int
    skipped: int = 0  # pairs already in the results file when the batch started
    recorded: int = 0  # pairs in the results file now
    tasks_done: int = 0  # tasks with all their runs recorded
    ran: int = 0  # runs finished and written this session
    in_flight: int = 0
    cancelled: int = 0
    steps: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    rate_limited: int = 0  # 429s seen (retried) this session
    stop_reasons: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def eta_s(self) -> float | None:
        """Seconds until every pair is recorded, at this session's pace (None: no pace yet)."""
        left = self.pairs - self.recorded
        if left <= 0:
            return 0.0
        if self.ran == 0:
            return None
        return self.elapsed_s / self.ran * left


@dataclass
class BatchSummary:
    out: str
    tasks: int
    runs: int  # K, per task
    pairs: int
    recorded: int  # pairs with a result line
    ran: int  # of which run this session
    skipped: int  # of which already there at the start
    cancelled: int  # runs stopped this session and not written (the next batch does them)
    interrupted: bool
    scored_tasks: int  # tasks with an answer and at least one recorded run
    avg_at_k: float | None  # mean correctness over runs, averaged over tasks
    pass_at_k: float | None  # share of tasks with a correct run
    stop_reasons: dict[str, int]
    usage: dict[str, Any]
    cost_usd: float
    wall_s: float
    rate_limited: int
    errors: int
    settings: dict[str, Any]
    repaired_bytes: int = 0  # a torn last line dropped from the results file

    @property
    def complete(self) -> bool:
        return self.recorded == self.pairs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(records: Iterable[Record], tasks: Sequence[Task], runs: int) -> dict[str, Any]:
    """avg@k, pass@k, stop reasons, usage and cost over the records of ``tasks`` × ``runs``."""
    wanted = {t.key: t for t in tasks}
    by_task: dict[str, list[Record]] = {}
    for record in records:
        key = str(record.get("id"))
        if key in wanted and 0 <= int(record.get("run", -1)) < runs:
            by_task.setdefault(key, []).append(record)
    usage = {"input": 0, "output": 0, "cached": 0, "total": 0, "estimated": False}
    cost = 0.0
    reasons: Counter[str] = Counter()
    avgs: list[float] = []
    passes: list[bool] = []
    for key, found in by_task.items():
        for record in found:
            reasons[str(record.get("stop_reason"))] += 1
            u = record.get("usage") or {}
            for name in ("input", "output", "cached", "total"):
                usage[name] += int(u.get(name) or 0)
            usage["estimated"] = bool(usage["estimated"] or u.get("estimated"))
            cost += float(record.get("cost_usd") or 0.0)
        scored = [bool(r["correct"]) for r in found if "correct" in r]
        if wanted[key].has_answer and scored:
            avgs.append(sum(scored) / len(scored))
            passes.append(any(scored))
    return {
        "recorded": sum(len(v) for v in by_task.values()),
        "tasks_done": sum(1 for v in by_task.values() if len(v) >= runs),
        "scored_tasks": len(avgs),
        "avg_at_k": sum(avgs) / len(avgs) if avgs else None,
        "pass_at_k": sum(passes) / len(passes) if passes else None,
        "stop_reasons": dict(sorted(reasons.items())),
        "usage": usage,
        "cost_usd": cost,
        "errors": reasons.get("error", 0),
    }


class Reporter(Protocol):
    """What a display is told (``batch_view`` has the live view, plain lines and JSON)."""

    def started(self, progress: Progress, note: str | None) -> None: ...

    def update(self, progress: Progress) -> None: ...

    def finished(self, progress: Progress, record: Record) -> None: ...

    def stopped(self) -> None:
        """The batch is over (however it ended): release the display."""

    def ended(self, summary: BatchSummary) -> None: ...


class _Quiet:
    def started(self, progress: Progress, note: str | None) -> None:
        pass

    def update(self, progress: Progress) -> None:
        pass

    def finished(self, progress: Progress, record: Record) -> None:
        pass

    def stopped(self) -> None:
        pass

    def ended(self, summary: BatchSummary) -> None:
        pass


# -- the durable store (agentloop.durable, an optional extra) ------------------------------------
def _durable_module(db: str | None) -> Any:
    try:
        return importlib.import_module("agentloop.durable")
    except ImportError as exc:
        raise ConfigurationError(
            f"--db {db} needs durable runs, which this install lacks ({exc}); "
            "pip install 'agentloop[durable]', or leave out --db"
        ) from None


_CLAIMED: list[Any] = []  # the lock files that hold this process's worker names


def claim_worker_name(database: str) -> str:
    """``<host>-<n>``: the first slot on this machine no live process holds for this database
    (a lock file the OS releases when the process dies, so a worker killed and started again
    gets its old name back, and with it the runs it had in flight)."""
    folder = Path(tempfile.gettempdir()) / "agentloop-workers"
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(database.encode()).hexdigest()[:12]
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    for slot in range(1, 1000):
        handle = (folder / f"{key}-{slot}.lock").open("a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _CLAIMED.append(handle)
        return f"{host}-{slot}"
    raise ConfigurationError("more than 999 workers of one database on this machine")


# -- the batch -----------------------------------------------------------------------------------
@dataclass
class _Seen:
    """What the display has counted of one run so far."""

    steps: int = 0
    tokens: int = 0
    cost: float = 0.0


class Batch:
    """One batch: ``await batch.run()`` runs what the results file lacks; ``cancel()`` stops it
    (runs in flight finish as ``cancelled`` and are not written)."""

    def __init__(
        self,
        tasks: Sequence[Task],
        out: str | Path,
        agent: Agent,
        settings: Settings,
        *,
        runs: int,
        concurrency: int = 4,
        scorer: Scorer | None = None,
        db: str | None = None,
        reporter: Reporter | None = None,
        worker: str | None = None,
    ) -> None:
        if runs < 1:
            raise ConfigurationError(f"runs must be at least 1; got {runs}")
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1; got {concurrency}")
        self.tasks = list(tasks)
        self.results = ResultsFile(out)
        self.agent = agent
        self.settings = settings
        self.runs = runs
        self.concurrency = concurrency
        self.scorer: Scorer = scorer or exact_match
        self.db = db
        self.worker = worker
        self.reporter: Reporter = reporter or _Quiet()
        self.progress = Progress(tasks=len(self.tasks), runs=runs, pairs=len(self.tasks) * runs)
        self._streams: set[Any] = set()
        self._cancelled = False
        self._fatal: BaseException | None = None
        self._left: Counter[str] = Counter()

    def cancel(self) -> None:
        """Stop the batch: start no more runs and cancel those in flight."""
        self._cancelled = True
        self.progress.stopping = True
        for stream in list(self._streams):
            stream.cancel()

    def pending(self) -> list[tuple[Task, int]]:
        """The (task, run) pairs the results file lacks, task by task (the runs of one task
        run together, so they share its cached prompt prefix)."""
        done = self.results.records
        return [
            (task, run)
            for task in self.tasks
            for run in range(self.runs)
            if (task.key, run) not in done
        ]

    def _check_settings(self) -> None:
        keys = {t.key for t in self.tasks}
        for (key, _), record in self.results.records.items():
            if key in keys:
                why = self.settings.mismatch(record)
                if why:
                    raise ConfigurationError(
                        f"{self.results.path} holds runs made with {why}: rerun with the same "
                        "settings to resume it, or write to a new --out"
                    )

    async def run(self) -> BatchSummary:
        self.results.load()
        self._check_settings()
        todo = self.pending()
        progress = self.progress
        progress.skipped = progress.pairs - len(todo)
        self._count_recorded()
        for task, _ in todo:
            self._left[task.key] += 1
        note = None
        if self.results.dropped_bytes:
            note = (
                f"{self.results.path}: dropped a torn last line "
                f"({self.results.dropped_bytes} bytes); that run is done again"
            )
        self.reporter.started(progress, note)
        try:
            if self.db is not None:
                await self._run_fleet(todo)
            else:
                async with anyio.create_task_group() as outer:
                    outer.start_soon(self._tick)
                    queue = iter(todo)
                    async with anyio.create_task_group() as workers:
                        for _ in range(min(self.concurrency, len(todo))):
                            workers.start_soon(self._worker, queue)
                    outer.cancel_scope.cancel()
        finally:
            self.results.close()
            self.reporter.stopped()
            limiter: Any = getattr(self.agent.model, "limiter", None)
            if type(limiter).__name__ == "DatabaseLimiter":
                limiter.close()  # its connection and lease thread (made by ``prepare``)
        if self._fatal is not None:
            raise self._fatal
        summary = self.summary()
        self.reporter.ended(summary)
        return summary

    # -- with a store: a fleet of one or more workers ---------------------------------------------
    def _settings_digest(self) -> str:
        return hashlib.sha256(
            json.dumps(self.settings.as_dict(), sort_keys=True).encode()
        ).hexdigest()

    def queue_name(self) -> str:
        """The store's work queue for batches with these settings: every worker running the
        same command takes from it, and so does a rerun whose task file gained tasks."""
        return "agentloop-batch-" + self._settings_digest()[:16]

    def durable_id(self, task: Task, run: int) -> str:
        """The pair's run id in the store: ``<id>#<run>@<digest>``, the digest naming the task's
        text and the settings, so a store reused with other tasks or settings under the same
        ids never hands back another batch's runs."""
        digest = hashlib.sha256((self._settings_digest() + task.task).encode()).hexdigest()
        return f"{run_id(task.id, run)}@{digest[:16]}"

    async def _run_fleet(self, todo: list[tuple[Task, int]]) -> None:
        """Every pair not in the results file goes on the store's queue (once, whoever puts
        it there: the run id is the key); this process runs what it takes from the queue,
        ``concurrency`` at a time, and writes a line for every pair that finishes, wherever it
        ran. A worker killed and started again (same name) takes back the runs it had."""
        durable = _durable_module(self.db)
        pairs = {self.durable_id(task, run): (task, run) for task, run in todo}
        controls: dict[str, Any] = {}
        started: dict[str, float] = {}
        idle = anyio.Event()  # no run of this worker in flight (after a stop)

        def runner(rid: str, text: str, start: list[Any]) -> Any:
            control = durable.Control()
            controls[rid] = control
            if self._cancelled:
                control.cancel()
            started[rid] = time.monotonic()
            seen = _Seen()
            self.progress.in_flight += 1

            async def emit(event: ev.Event) -> None:
                self._observe(event, seen)
                if isinstance(event, ev.RunFinished):
                    self.progress.in_flight -= 1
                    controls.pop(rid, None)
                    if not controls:
                        idle.set()

            return durable.Live(self.agent, start, emit, control)

        name = self.worker or claim_worker_name(durable.database_url(self.db))
        store = durable.DurableStore(self.db, worker=name, queues=[self.queue_name()])
        store.serve(runner)
        try:
            async with store, anyio.create_task_group() as outer:
                outer.start_soon(self._tick)
                queue = await store.open_queue(self.queue_name(), self.concurrency)
                for rid, (task, _) in pairs.items():
                    start = self.agent._start_messages(task.task, None)
                    await store.enqueue(queue, rid, task.task, start)
                while pairs and not self._cancelled:
                    for rid, result in (await store.finished(list(pairs))).items():
                        task, run = pairs.pop(rid)
                        if rid in started:
                            took = time.monotonic() - started[rid]
                        else:  # it ran in another worker
                            took = sum(s.duration_s for s in result.steps)
                        self._write(task, run, result, took)
                    if pairs:
                        await anyio.sleep(0.2)
                for control in list(controls.values()):
                    control.cancel()
                if controls:
                    with anyio.move_on_after(30):  # the runs stopped here end, resumable
                        await idle.wait()
                outer.cancel_scope.cancel()
        finally:
            store.serve(None)

    def _write(self, task: Task, run: int, result: RunResult, duration_s: float) -> None:
        """The pair's line, and the counts; nothing if a worker sharing the file wrote it."""
        progress = self.progress
        if result.error and _CONFIG_ERROR.match(result.error):
            raise ConfigurationError(result.error)
        record = self.record(task, run, result, duration_s)
        if not self.results.append_once(record):
            return
        progress.ran += 1
        progress.recorded += 1
        progress.stop_reasons[result.stop_reason] += 1
        self._left[task.key] -= 1
        if self._left[task.key] == 0:
            progress.tasks_done += 1
        self.reporter.finished(progress, record)

    def summary(self) -> BatchSummary:
        p = self.progress
        figures = summarise(self.results.records.values(), self.tasks, self.runs)
        return BatchSummary(
            out=str(self.results.path),
            tasks=p.tasks,
            runs=self.runs,
            pairs=p.pairs,
            recorded=figures["recorded"],
            ran=p.ran,
            skipped=p.skipped,
            cancelled=p.cancelled,
            interrupted=self._cancelled,
            scored_tasks=figures["scored_tasks"],
            avg_at_k=figures["avg_at_k"],
            pass_at_k=figures["pass_at_k"],
            stop_reasons=figures["stop_reasons"],
            usage=figures["usage"],
            cost_usd=figures["cost_usd"],
            wall_s=p.elapsed_s,
            rate_limited=p.rate_limited,
            errors=figures["errors"],
            settings={k: v for k, v in self.settings.as_dict().items() if k != "budget"},
            repaired_bytes=self.results.dropped_bytes,
        )

    def _count_recorded(self) -> None:
        figures = summarise(self.results.records.values(), self.tasks, self.runs)
        self.progress.recorded = figures["recorded"]
        self.progress.tasks_done = figures["tasks_done"]

    async def _tick(self) -> None:
        while True:
            self.reporter.update(self.progress)
            await anyio.sleep(0.25)

    async def _worker(self, queue: Iterator[tuple[Task, int]]) -> None:
        for task, run in queue:
            if self._cancelled:
                return
            try:
                await self._one(task, run)
            except Exception as exc:  # a failure of the runtime, not of a run: stop the batch
                if self._fatal is None:
                    self._fatal = exc
                self.cancel()
                return

    async def _one(self, task: Task, run: int) -> None:
        progress = self.progress
        seen = _Seen()
        started = time.monotonic()
        stream = self.agent.stream(task.task)
        self._streams.add(stream)
        if self._cancelled:
            stream.cancel()
        progress.in_flight += 1
        try:
            async with stream:
                async for event in stream:
                    self._observe(event, seen)
        finally:
            progress.in_flight -= 1
            self._streams.discard(stream)
        result = stream.result
        assert result is not None
        # what the display had not counted yet (a final answer, a compaction summary)
        progress.steps += max(0, len(result.steps) - seen.steps)
        progress.tokens += max(0, result.usage.total_tokens - seen.tokens)
        progress.cost_usd += max(0.0, result.cost_usd - seen.cost)
        if result.stop_reason == "cancelled":
            progress.cancelled += 1
            self.reporter.update(progress)
            return
        self._write(task, run, result, time.monotonic() - started)

    def _observe(self, event: ev.Event, seen: _Seen) -> None:
        progress = self.progress
        if isinstance(event, ev.StepFinished):
            progress.steps += 1
            seen.steps += 1
            tokens = event.usage_so_far.total_tokens
            progress.tokens += max(0, tokens - seen.tokens)
            progress.cost_usd += max(0.0, event.cost_so_far - seen.cost)
            seen.tokens, seen.cost = max(seen.tokens, tokens), max(seen.cost, event.cost_so_far)
        elif isinstance(event, ev.Retry) and "429" in event.error:
            progress.rate_limited += 1

    def record(self, task: Task, run: int, result: RunResult, duration_s: float) -> Record:
        u = result.usage
        record: Record = {
            "id": task.id,
            "run": run,
            "run_id": run_id(task.id, run),
            "output": result.output,
            "stop_reason": result.stop_reason,
            "steps": len(result.steps),
            "usage": {
                "input": u.input_tokens,
                "output": u.output_tokens,
                "cached": u.cached_input_tokens,
                "total": u.total_tokens,
                "estimated": u.estimated,
            },
            "cost_usd": result.cost_usd,
            "error": result.error,
        }
        if task.has_answer:
            record["answer"] = task.answer
            record["correct"] = bool(self.scorer(result.output, task.answer))
        record["duration_s"] = round(duration_s, 3)
        record.update(self.settings.as_dict())
        return record


# -- the public entry ----------------------------------------------------------------------------
def prepare(
    tasks: str | Path | Iterable[Task | Mapping[str, Any]],
    out: str | Path,
    *,
    agent: Agent | None = None,
    model: Model | None = None,
    model_name: str = "kimi-k2.6",
    base_url: str | None = None,
    api_key: str | None = None,
    tools: Sequence[Tool | BuiltinTool | Callable[..., Any]] = (),
    instructions: str | None = None,
    preset: str | None = None,
    budget: Budget | None = None,
    runs: int | None = None,
    concurrency: int = 4,
    db: str | None = None,
    worker: str | None = None,
    scorer: Scorer | None = None,
    rpm: int | None = 50,
    reporter: Reporter | None = None,
    display: Display | None = None,
) -> Batch:
    """A ``Batch`` ready to run (what ``abatch`` runs; the command line installs its Ctrl-C
    handling around ``Batch.run``). See ``abatch`` for the arguments."""
    loaded = load_tasks(tasks) if isinstance(tasks, str | Path) else tasks_from(tasks)
    chosen: Sampling = sampling(preset)
    name = preset_key(preset) if preset else None
    if agent is None:
        if model is None:
            from .models.kimi import KimiModel

            model = KimiModel(
                model=model_name,
                api_key=api_key,
                base_url=base_url,
                thinking=chosen.thinking,
                temperature=chosen.temperature,
                top_p=chosen.top_p,
                rpm=rpm,
            )
            if db is not None and rpm:
                # a fleet shares one account: its request log lives in the store's database,
                # so the workers together keep the limit
                from .limits_db import DatabaseLimiter

                secret = getattr(model, "_api_key", None)
                model.limiter = DatabaseLimiter(
                    db, secret.reveal() if secret else "", base_url=model.base_url, rpm=rpm
                )
        agent = Agent(
            model,
            tools=tools,
            instructions=instructions,
            budget=budget or (Budget.preset(preset) if preset else Budget()),
        )
    temperature, top_p, thinking = model_settings(agent.model)
    settings = Settings(
        model=agent.model.name,
        preset=name,
        temperature=temperature,
        top_p=top_p,
        thinking=thinking,
        budget=asdict(agent.budget),
    )
    if reporter is None and display is not None:
        from .batch_view import reporter_for

        reporter = reporter_for(display)
    return Batch(
        loaded,
        out,
        agent,
        settings,
        runs=runs if runs is not None else chosen.runs,
        concurrency=concurrency,
        scorer=scorer,
        db=db,
        reporter=reporter,
        worker=worker,
    )


async def abatch(
    tasks: str | Path | Iterable[Task | Mapping[str, Any]],
    out: str | Path,
    **options: Any,
) -> BatchSummary:
    """Run every task of ``tasks`` (a JSON Lines file, or ``Task``s / dicts) ``runs`` times,
    appending one line per (id, run) to ``out``; pairs already in ``out`` are skipped.

    Options: ``runs`` (default: the preset's recommended runs, else 1); ``concurrency`` (runs
    at once, 4); ``preset`` (budget and sampling of a seed-000 row); ``model_name``,
    ``base_url``, ``api_key``, ``rpm``, ``tools``, ``instructions``, ``budget`` for the Kimi
    model and agent built here, or your own ``model`` (its sampler is recorded as it is) or
    ``agent``; ``scorer(output, answer) -> bool`` (default ``exact_match``); ``db`` for
    durable runs; ``display`` ("live", "plain", "json") or a ``reporter``."""
    job = prepare(tasks, out, **options)
    try:
        return await job.run()
    finally:
        if "agent" not in options and "model" not in options:
            await _aclose(job.agent.model)


async def _aclose(model: Model) -> None:
    close = getattr(model, "aclose", None)
    if close is not None:
        await close()


def batch(
    tasks: str | Path | Iterable[Task | Mapping[str, Any]],
    out: str | Path,
    **options: Any,
) -> BatchSummary:
    """``abatch`` for scripts; inside a running event loop (a notebook cell) it runs the batch in
    a worker thread of its own and waits for it (or ``await abatch(...)`` there)."""
    try:
        import asyncio

        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(lambda: abatch(tasks, out, **options))
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["summary"] = anyio.run(lambda: abatch(tasks, out, **options))
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name="agentloop batch")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    summary: BatchSummary = box["summary"]
    return summary


__all__ = [
    "Batch",
    "BatchSummary",
    "Progress",
    "Record",
    "Reporter",
    "ResultsFile",
    "Settings",
    "Task",
    "abatch",
    "batch",
    "exact_match",
    "load_tasks",
    "normalise",
    "prepare",
    "run_id",
    "summarise",
]
