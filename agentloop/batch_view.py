"""Showing a batch: a rich live view on a terminal, one plain line per finished run otherwise,
one JSON summary object for machines, and the summary table at the end."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .batch import BatchSummary, Display, Progress, Record, Reporter


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def meters(p: Progress) -> str:
    """The session's figures in one line."""
    return (
        f"in flight {p.in_flight}  ·  steps {p.steps:,}  ·  {p.tokens:,} tokens  ·  "
        f"${p.cost_usd:.4f}  ·  429s {p.rate_limited}  ·  elapsed {_clock(p.elapsed_s)}  ·  "
        f"ETA {_clock(p.eta_s)}"
    )


def render_progress(p: Progress, title: str = "agentloop batch") -> RenderableType:
    head = Text()
    head.append(f"runs {p.recorded:,}/{p.pairs:,}", style="bold")
    head.append(f"  ·  tasks {p.tasks_done:,}/{p.tasks:,}")
    if p.skipped:
        head.append(f"  ·  {p.skipped:,} already done", style="dim")
    parts: list[RenderableType] = [
        head,
        ProgressBar(total=max(p.pairs, 1), completed=p.recorded, width=60),
        Text(meters(p)),
    ]
    if p.stopping:
        parts.append(
            Text(
                f"stopping: cancelling {p.in_flight} run(s) in flight (not written; a rerun "
                "does them)",
                style="yellow",
            )
        )
    return Panel(Group(*parts), title=title)


def run_line(p: Progress, record: Record) -> str:
    """One finished run, for logs and pipes."""
    if "correct" in record:
        verdict = "correct" if record["correct"] else "wrong"
    else:
        verdict = "no answer to check"
    usage = record.get("usage") or {}
    line = (
        f"[{p.recorded}/{p.pairs}] {record['run_id']}: {record['stop_reason']}, "
        f"{record['steps']} steps, {int(usage.get('total') or 0):,} tokens, "
        f"${float(record.get('cost_usd') or 0.0):.5f}, {verdict}"
    )
    if record.get("error"):
        line += f" (error: {record['error']})"
    return line


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f} ({value:.1%})"


def summary_table(s: BatchSummary) -> Table:
    table = Table(title=f"batch · {s.out}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row(
        "runs",
        f"{s.recorded:,}/{s.pairs:,} recorded ({s.tasks:,} tasks × {s.runs}); "
        f"{s.ran:,} run now, {s.skipped:,} already done",
    )
    if s.scored_tasks:
        table.add_row(f"avg@{s.runs}", _share(s.avg_at_k))
        table.add_row(f"pass@{s.runs}", f"{_share(s.pass_at_k)} over {s.scored_tasks:,} tasks")
    for reason, count in s.stop_reasons.items():
        table.add_row(f"stop: {reason}", f"{count:,}")
    if s.cancelled:
        table.add_row("cancelled", f"{s.cancelled:,} (not written; a rerun does them)")
    u = s.usage
    table.add_row(
        "tokens",
        f"{u['total']:,} ({u['input']:,} in, {u['cached']:,} cached, {u['output']:,} out)"
        + (" estimated" if u.get("estimated") else ""),
    )
    table.add_row("cost", f"${s.cost_usd:.4f}")
    table.add_row("wall time", _clock(s.wall_s))
    table.add_row("429s", f"{s.rate_limited:,}")
    settings = s.settings
    table.add_row(
        "settings",
        f"{settings['model']}, preset {settings['preset'] or 'none'}, temperature "
        f"{settings['temperature']}, top_p {settings['top_p']}, thinking {settings['thinking']}",
    )
    if not s.complete:
        table.add_row("resume", "run the same command again", style="yellow")
    return table


class LiveReporter:
    """The live view (a terminal): the progress panel, each finished run printed above it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self._progress: Progress | None = None
        self._live: Live | None = None

    def _render(self) -> RenderableType:
        return render_progress(self._progress) if self._progress else Text("")

    def started(self, progress: Progress, note: str | None) -> None:
        self._progress = progress
        if note:
            self.console.print(note, style="yellow")
        self._live = Live(
            get_renderable=self._render,
            console=self.console,
            auto_refresh=False,
            transient=False,
        )
        self._live.start()

    def update(self, progress: Progress) -> None:
        if self._live is not None:
            self._live.refresh()

    def finished(self, progress: Progress, record: Record) -> None:
        if self._live is not None:
            self._live.console.print(run_line(progress, record), highlight=False)
            self._live.refresh()

    def stopped(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def ended(self, summary: BatchSummary) -> None:
        self.console.print(summary_table(summary))


class PlainReporter:
    """One line per finished run (a pipe or a log), then the summary table."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, width=100)

    def started(self, progress: Progress, note: str | None) -> None:
        if note:
            print(note, file=sys.stderr, flush=True)
        print(
            f"batch: {progress.tasks} tasks × {progress.runs} runs = {progress.pairs} runs; "
            f"{progress.skipped} already done, {progress.pairs - progress.skipped} to run",
            flush=True,
        )

    def update(self, progress: Progress) -> None:
        pass

    def finished(self, progress: Progress, record: Record) -> None:
        print(run_line(progress, record), flush=True)

    def stopped(self) -> None:
        sys.stdout.flush()

    def ended(self, summary: BatchSummary) -> None:
        self.console.print(summary_table(summary))


class JsonReporter:
    """Nothing while the batch runs; one JSON object (``BatchSummary.as_dict``) at the end."""

    def started(self, progress: Progress, note: str | None) -> None:
        if note:
            print(note, file=sys.stderr, flush=True)

    def update(self, progress: Progress) -> None:
        pass

    def finished(self, progress: Progress, record: Record) -> None:
        pass

    def stopped(self) -> None:
        pass

    def ended(self, summary: BatchSummary) -> None:
        print(json.dumps(summary.as_dict(), ensure_ascii=False), flush=True)


def reporter_for(display: Display, console: Console | None = None) -> Reporter:
    reporters: dict[str, Any] = {
        "live": LiveReporter,
        "plain": PlainReporter,
        "json": JsonReporter,
    }
    if display not in reporters:
        raise ValueError(f"display must be one of {', '.join(reporters)}; got {display!r}")
    if display == "json":
        return JsonReporter()
    made: Reporter = reporters[display](console)
    return made


__all__ = [
    "JsonReporter",
    "LiveReporter",
    "PlainReporter",
    "render_progress",
    "reporter_for",
    "run_line",
    "summary_table",
]
