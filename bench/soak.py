"""Soak: 2,000 runs kept in flight for minutes at 200 ms latency, with a few faults injected.

The simulator runs in its own process (``python -m bench.soak serve``) with a small rate of
retryable faults: connection resets, streams cut mid-body, 500s, 429s with ``Retry-After: 1``
and stalled streams (half an answer, then keep-alive comments; the client's ``idle_timeout`` is
cut to a few seconds so a stall costs seconds, not 90). The client is another process
(``python -m bench.soak client``): ``agentloop``'s Agent on the simulator's tool loop (the task
of ``bench/contenders.py``, but with agentloop's default retries, which these faults need),
``--concurrency`` runs in flight for ``--seconds`` (their starts spread over the first half of
the warm-up, then each finished run is followed by another), then the runs in flight finish
(the drain) and the model is closed.

Every few seconds the client samples itself: RSS, open file descriptors, asyncio tasks, its
TCP connections to the simulator by state, gc-tracked objects, runs finished and failed, CPU.
The table compares the samples after warm-up (the first ``--warmup`` share of the time is
dropped): RSS at warm-up's end and at the end; for fds, tasks and connections the maximum of
the first third against that of the last third, for the objects (which swing with what the
runs in flight hold) the medians of the thirds; each with its least-squares slope per minute.
"flat" means RSS grew by at most 5%, objects and tasks by at most 5%, fds and connections by
at most a small slack, and nothing was left after the close; otherwise "GROWS" names what
grew. ``--trace`` adds tracemalloc (slow) and prints the allocation sites that grew most
between warm-up's end and the end.

    python -m bench soak [--seconds 180] [--concurrency 2000] [--transport httpx2 aiohttp]
                         [--latency 0.2] [--faults SPEC] [--trace] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from .harness import Sim, installed, table
from .harness import simulator as harness_simulator

TRANSPORTS = ("httpx2", "aiohttp")
REQUIRES = {"aiohttp": "aiohttp"}
STEPS = 10  # model calls per run: nine tool calls, then the answer
# a few % of requests, all retryable: reset before the response, a stream cut mid-body, 500,
# 429 with Retry-After: 1, and a stream that stalls after half its answer
FAULTS = "reset=0.01,cut=0.01,500=0.01,429=0.01,stall=0.005"
RSS_SLACK = 0.05  # "flat": RSS grew by at most this share after warm-up
COUNTS = ("fds", "tasks", "conns", "objects")
AMOUNTS = ("objects",)  # compared by the median of a third, the counts by its maximum
PAGE = os.sysconf("SC_PAGE_SIZE")
TCP_STATES = {
    "01": "established",
    "02": "syn_sent",
    "04": "fin_wait1",
    "05": "fin_wait2",
    "06": "time_wait",
    "07": "close",
    "08": "close_wait",
    "09": "last_ack",
    "0A": "listen",
    "0B": "closing",
}


# -- the simulator process ------------------------------------------------------------------------
async def _serve(options: dict[str, Any]) -> None:
    from agentloop.sim import FaultPlan, SimConfig, SimServer, ToolLoopPolicy

    plan = FaultPlan.parse(str(options.get("faults") or ""), seed=int(options.get("seed", 0)))
    plan.retry_after = int(options.get("retry_after", 1))
    plan.keepalive_seconds = float(options.get("keepalive", 0.5))
    config = SimConfig(
        policy=ToolLoopPolicy(steps=int(options.get("steps", STEPS - 1)), reasoning_chars=200),
        latency=float(options.get("latency", 0.2)),
        faults=plan,
    )
    server = SimServer(config)
    server.stats.keep_bodies = False
    await server.start()
    print(f"READY {server.port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    status = _proc_status()
    print(
        json.dumps(
            {
                "completions": server.stats.completions,
                "by_status": server.stats.by_status,
                "injected": plan.injected,
                "connections": server.stats.connections,
                "rss_mb": status.get("VmRSS", 0) / 1024,
                "peak_rss_mb": status.get("VmHWM", 0) / 1024,
            }
        ),
        flush=True,
    )
    await server.stop()


def simulator(**options: Any) -> contextlib.AbstractContextManager[Sim]:
    """The simulator with faults in its own process (``bench.simproc`` has no faults)."""
    return harness_simulator("bench.soak", **options)


# -- what the client samples of itself ------------------------------------------------------------
def _proc_status() -> dict[str, int]:
    """VmRSS, VmHWM ... of this process in kB."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[name] = int(value.split()[0])
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> Any:
    """glibc's ``mallinfo2`` (None elsewhere): what malloc holds, in use and free."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return libc.mallinfo2


_MALLINFO = _mallinfo()


def _heap_mb() -> float:
    """Bytes malloc has handed out and not had back (the large buffers: request bodies, read
    chunks; Python's small objects live in pymalloc's own arenas and are counted by
    ``objects``), without the free holes a fragmented heap keeps in RSS; 0.0 without glibc."""
    if _MALLINFO is None:
        return 0.0
    info = _MALLINFO()
    return float(info.uordblks + info.hblkhd) / 2**20


def _fd_kinds() -> tuple[int, collections.Counter[str], set[str]]:
    """Open fds, how many of each kind (socket, pipe, anon_inode:[eventpoll], a path's
    directory ...), and the socket inodes."""
    kinds: collections.Counter[str] = collections.Counter()
    sockets: set[str] = set()
    names = os.listdir("/proc/self/fd")
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own fd, closed since
        if target.startswith("socket:["):
            kinds["socket"] += 1
            sockets.add(target[8:-1])
        elif target.startswith("pipe:["):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds[target] += 1
        else:
            kinds[os.path.dirname(target) or target] += 1
    return len(names), kinds, sockets


def _tcp_to(port: int, ours: set[str]) -> collections.Counter[str]:
    """Our sockets connected to ``port`` on loopback, by TCP state (from /proc/self/net/tcp:
    the namespace's table, narrowed to the inodes of this process's fds; a TIME_WAIT socket
    belongs to no process and is counted from the table alone)."""
    states: collections.Counter[str] = collections.Counter()
    want = f":{port:04X}"
    for table_path in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table_path) as tcp:
                next(tcp)
                for line in tcp:
                    fields = line.split()
                    if not fields[2].endswith(want):
                        continue  # not a client end of a connection to the simulator
                    state = TCP_STATES.get(fields[3], fields[3])
                    if fields[9] in ours or state == "time_wait":
                        states[state] += 1
        except FileNotFoundError:
            continue
    return states


def _census(port: int) -> dict[str, Any]:
    """What the counts are made of: fd kinds, TCP states, the tasks by coroutine."""
    _, kinds, sockets = _fd_kinds()
    coros = collections.Counter(
        getattr(t.get_coro(), "__qualname__", type(t.get_coro()).__name__)
        for t in asyncio.all_tasks()
    )
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    return {
        "fd_kinds": dict(kinds.most_common()),
        "tcp": dict(_tcp_to(port, sockets)),
        "tasks": dict(coros.most_common(12)),
        "types": dict(types.most_common(300)),  # gc-tracked objects by type
    }


class _Tally:
    __slots__ = ("attempts", "calls", "errors", "failed", "finished")

    def __init__(self) -> None:
        self.finished = 0
        self.failed = 0
        self.calls = 0  # model calls (steps) of the runs that ended
        self.attempts = 0  # HTTP requests those calls took (calls + retries)
        self.errors: collections.Counter[str] = collections.Counter()


def _sample(t: float, phase: str, port: int, tally: _Tally, lag: float) -> dict[str, Any]:
    fds, _, sockets = _fd_kinds()
    tcp = _tcp_to(port, sockets)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "t": round(t, 3),
        "phase": phase,
        "rss_mb": round(_rss_mb(), 2),
        "heap_mb": round(_heap_mb(), 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 2),
        "fds": fds,
        "sockets": len(sockets),
        "tasks": len(asyncio.all_tasks()),
        "conns": tcp.get("established", 0),
        "close_wait": tcp.get("close_wait", 0),
        "objects": len(gc.get_objects()),
        "finished": tally.finished,
        "failed": tally.failed,
        "calls": tally.calls,
        "attempts": tally.attempts,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "lag_ms": round(lag * 1e3, 1),
    }


# -- the client process ---------------------------------------------------------------------------
def _agent(base_url: str, transport: str, idle_timeout: float) -> Any:
    from .contenders import TASK, agentloop_agent

    agent = agentloop_agent(
        base_url,
        retries=True,  # agentloop's default RetryPolicy: the faults are retried
        stream=True,
        transport=transport,
        idle_timeout=idle_timeout,  # a stalled stream is retried after seconds, not 90
    )
    return agent, agent.model, TASK


async def _client(base_url: str, options: dict[str, Any]) -> dict[str, Any]:
    import tracemalloc

    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    seconds = float(options["seconds"])
    concurrency = int(options["concurrency"])
    interval = float(options["interval"])
    warm_at = seconds * float(options["warmup"])
    trace = int(options.get("trace") or 0)
    transport = str(options["transport"])
    agent, model, task = _agent(base_url, transport, float(options["idle_timeout"]))
    tally = _Tally()

    def record(result: Any) -> None:
        tally.calls += len(result.steps)
        tally.attempts += len(result.steps) + sum(s.retries for s in result.steps)
        if result.ok:
            tally.finished += 1
        else:
            tally.failed += 1
            tally.errors[f"{result.stop_reason}: {(result.error or '')[:120]}"] += 1

    record(await agent.run(task))  # warm-up: imports, the first connection, caches
    warm_calls, warm_attempts = tally.calls, tally.attempts
    tally = _Tally()  # the warm-up run is not counted
    gc.collect()
    loop = asyncio.get_running_loop()
    censuses: dict[str, Any] = {"before": _census(port)}
    samples: list[dict[str, Any]] = [_sample(0.0, "before", port, tally, 0.0)]
    if trace:
        tracemalloc.start(trace)
    snapshots: dict[str, Any] = {}
    start = loop.time()
    stop_at = start + seconds

    # the starts are spread over the first half of the warm-up: runs started all at once go
    # through their steps in lock-step, and the memory they hold swings with the wave
    ramp = warm_at / 2

    async def worker(n: int) -> None:
        await asyncio.sleep(ramp * n / concurrency)
        while loop.time() < stop_at:
            try:
                record(await agent.run(task))
            except Exception as exc:  # a run that raised rather than ended with a reason
                tally.failed += 1
                tally.errors[f"raised {type(exc).__name__}: {str(exc)[:120]}"] += 1

    workers = [asyncio.create_task(worker(n)) for n in range(concurrency)]
    done = asyncio.Event()
    gathered = asyncio.gather(*workers)
    gathered.add_done_callback(lambda _: done.set())
    warm_noted = False
    while not done.is_set():
        due = loop.time() + interval
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), interval)
        lag = max(0.0, loop.time() - due) if not done.is_set() else 0.0
        t = loop.time() - start
        phase = "steady" if t <= seconds else "drain"
        sample = _sample(t, phase, port, tally, lag)
        samples.append(sample)
        if phase == "steady" and t >= warm_at and not warm_noted:
            warm_noted = True
            censuses["warm"] = _census(port)
            if trace:
                snapshots["warm"] = tracemalloc.take_snapshot()
        if phase == "steady" and t + interval > seconds and "end" not in censuses:
            censuses["end"] = _census(port)  # the last steady sample
            if trace:
                snapshots["end"] = tracemalloc.take_snapshot()
        print(
            f"soak {transport:7} {t:6.1f}s {phase:6} rss {sample['rss_mb']:6.1f} MB  "
            f"fds {sample['fds']:5}  tasks {sample['tasks']:5}  conns {sample['conns']:5}  "
            f"objects {sample['objects']:8}  runs {tally.finished:6} failed {tally.failed}",
            file=sys.stderr,
            flush=True,
        )
    await gathered
    wall = loop.time() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    top: list[str] = []
    if trace:
        later = snapshots.get("end") or tracemalloc.take_snapshot()
        if "warm" in snapshots:
            diff = later.compare_to(snapshots["warm"], "lineno")
            top = [str(d) for d in diff[:25]]
        tracemalloc.stop()
    snapshots.clear()
    gc.collect()
    samples.append(_sample(wall, "drained", port, tally, 0.0))
    censuses["drained"] = _census(port)
    await model.aclose()
    await asyncio.sleep(0.2)  # let the transports' closed sockets go
    gc.collect()
    samples.append(_sample(loop.time() - start, "closed", port, tally, 0.0))
    censuses["closed"] = _census(port)
    return {
        "transport": transport,
        "seconds": seconds,
        "concurrency": concurrency,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime - samples[0]["cpu_s"],
        "finished": tally.finished,
        "failed": tally.failed,
        "calls": tally.calls,
        "attempts": tally.attempts,
        "warmup_run": {"calls": warm_calls, "attempts": warm_attempts},
        "errors": dict(tally.errors.most_common(10)),
        "samples": samples,
        "census": censuses,
        "tracemalloc_top": top,
    }


def run_client(base_url: str, options: dict[str, Any]) -> dict[str, Any]:
    """The client in a fresh process; its progress lines pass through to our stderr."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        args = [sys.executable, "-m", "bench.soak", "client", base_url, json.dumps(options)]
        process = subprocess.Popen(
            [*args, out.name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert process.stderr is not None
        tail: collections.deque[str] = collections.deque(maxlen=5)
        for line in process.stderr:
            tail.append(line.rstrip())
            if not options.get("quiet") and line.startswith("soak "):
                print(line, end="", file=sys.stderr, flush=True)
        code = process.wait()
        if code != 0:
            return {"error": next((t for t in reversed(tail) if t), f"exit {code}")}
        with open(out.name) as report:
            result: dict[str, Any] = json.load(report)
        return result


# -- the benchmark --------------------------------------------------------------------------------
def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t seconds, value), per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else 60 * sum((t - mt) * (v - mv) for t, v in points) / den


def _slack(first: float) -> float:
    """How much a count's last-third maximum may exceed its first-third maximum: the noise of
    thousands of runs in flight in different phases, not a leak."""
    return max(8.0, 0.03 * first)


def analyse(report: dict[str, Any], warmup: float) -> dict[str, Any]:
    """One row from a client report: the samples after warm-up, in thirds, and the verdict."""
    seconds = report["seconds"]
    steady = [s for s in report["samples"] if s["phase"] == "steady" and s["t"] >= warmup * seconds]
    if len(steady) < 2:
        steady = [s for s in report["samples"] if s["phase"] == "steady"][-2:]
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    row: dict[str, Any] = {
        "transport": report["transport"],
        "concurrency": report["concurrency"],
        "seconds": seconds,
        "samples": len(steady),
        "rss_warm_mb": steady[0]["rss_mb"] if steady else 0.0,
        "rss_end_mb": steady[-1]["rss_mb"] if steady else 0.0,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in report["samples"]),
        "finished": report["finished"],
        "failed": report["failed"],
        "calls": report["calls"],
        "attempts": report["attempts"],
        "errors": report["errors"],
        "wall_s": report["wall_s"],
        "cpu_ms_per_call": report["cpu_s"] / max(1, report["calls"]) * 1e3,
        "requests_per_s": report["attempts"] / report["wall_s"],
        "calls_per_s": report["calls"] / report["wall_s"],
        "max_lag_ms": max((s["lag_ms"] for s in steady), default=0.0),
    }
    if len(steady) >= 2:
        a, b = steady[0], steady[-1]
        span = b["t"] - a["t"]
        if b["calls"] > a["calls"]:  # the steady window alone, warm-up and drain left out
            row["cpu_ms_per_call"] = (b["cpu_s"] - a["cpu_s"]) / (b["calls"] - a["calls"]) * 1e3
        if span > 0:
            row["requests_per_s"] = (b["attempts"] - a["attempts"]) / span
            row["calls_per_s"] = (b["calls"] - a["calls"]) / span
    row["rss_growth"] = (
        (row["rss_end_mb"] - row["rss_warm_mb"]) / row["rss_warm_mb"] if row["rss_warm_mb"] else 0.0
    )
    grows = []
    for name in COUNTS:
        row[f"{name}_max"] = max(s[name] for s in steady)
        row[f"{name}_per_min"] = _slope([(s["t"], s[name]) for s in steady])
        if name in AMOUNTS:
            # an amount swings by ±5% with what the runs in flight hold: the median of a third
            # is steady where its maximum is one spike
            head = statistics.median(s[name] for s in first)
            tail = statistics.median(s[name] for s in last)
        else:
            head = max(s[name] for s in first)
            tail = max(s[name] for s in last)
        row[f"{name}_first"] = head
        row[f"{name}_last"] = tail
        # tasks swing with what the runs in flight are doing (aiohttp writes each request body
        # in a task of its own): a share of slack; a left-over task shows at close
        relative = name in AMOUNTS or name == "tasks"
        limit = head * (1 + RSS_SLACK) if relative else head + _slack(head)
        if tail > limit:
            grows.append(f"{name} {head:.0f}->{tail:.0f}")
    row["heap_first_mb"] = statistics.median(s["heap_mb"] for s in first)
    row["heap_last_mb"] = statistics.median(s["heap_mb"] for s in last)
    if row["rss_growth"] > RSS_SLACK:
        heap_flat = 0 < row["heap_last_mb"] <= row["heap_first_mb"] * (1 + RSS_SLACK)
        objects_flat = row["objects_last"] <= row["objects_first"] * (1 + RSS_SLACK)
        # RSS up, what is in use flat: free holes in malloc's heap (fragmentation), no leak
        why = " (in use flat: fragmentation)" if heap_flat and objects_flat else ""
        grows.insert(0, f"RSS +{row['rss_growth']:.0%}{why}")
    row["rss_first_max_mb"] = max(s["rss_mb"] for s in first)
    row["rss_last_max_mb"] = max(s["rss_mb"] for s in last)
    row["rss_mb_per_min"] = _slope([(s["t"], s["rss_mb"]) for s in steady])
    closed = next((s for s in report["samples"] if s["phase"] == "closed"), None)
    before = report["samples"][0]
    if closed is not None:
        row["closed"] = {k: closed[k] for k in ("fds", "tasks", "conns", "close_wait", "rss_mb")}
        row["before"] = {k: before[k] for k in ("fds", "tasks", "conns", "close_wait", "rss_mb")}
        if closed["conns"] or closed["close_wait"]:
            grows.append(f"{closed['conns'] + closed['close_wait']} connections left after close")
        if closed["tasks"] > before["tasks"]:
            grows.append(f"tasks left after close {before['tasks']}->{closed['tasks']}")
        if closed["fds"] > before["fds"] + 2:
            grows.append(f"fds left after close {before['fds']}->{closed['fds']}")
    row["verdict"] = "GROWS: " + ", ".join(grows) if grows else "flat"
    census = report["census"]
    if "warm" in census and "end" in census:  # which object types grew after warm-up
        warm, end = census["warm"]["types"], census["end"]["types"]
        grown = sorted(((end[k] - warm.get(k, 0), k) for k in end), reverse=True)
        row["types_grown"] = {k: n for n, k in grown[:10] if n > 0}
    return row


def measure(
    transports: Sequence[str],
    seconds: float,
    concurrency: int,
    latency: float,
    faults: str,
    warmup: float,
    interval: float | None,
    idle_timeout: float,
    trace: int,
    quiet: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (with an ``error`` or a ``skipped`` row for a transport that could not run), and
    the raw client reports."""
    rows: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    every = interval or max(0.1, min(5.0, seconds / 36))
    for transport in transports:
        if transport in REQUIRES and not installed(REQUIRES[transport]):
            rows.append(
                {"transport": transport, "skipped": "not installed: pip install -e '.[fast]'"}
            )
            continue
        options = {
            "transport": transport,
            "seconds": seconds,
            "concurrency": concurrency,
            "interval": every,
            "warmup": warmup,
            "idle_timeout": idle_timeout,
            "trace": trace,
            "quiet": quiet,
        }
        with simulator(steps=STEPS - 1, latency=latency, faults=faults) as sim:
            before = sim.cpu()
            report = run_client(sim.base_url, options)
            sim_cpu = sim.cpu() - before
        if "error" in report:
            rows.append({"transport": transport, "error": report["error"]})
            continue
        row = analyse(report, warmup)
        final = sim.final or {}
        row["sim_cpu_share"] = sim_cpu / report["wall_s"]
        row["sim_requests"] = final.get("completions", 0)
        row["sim_by_status"] = final.get("by_status", {})
        row["faults_injected"] = final.get("injected", {})
        row["sim_peak_rss_mb"] = final.get("peak_rss_mb", 0.0)
        row["tracemalloc_top"] = report["tracemalloc_top"]
        row["census"] = report["census"]
        rows.append(row)
        reports.append(report)
    return rows, reports


def render(rows: Sequence[dict[str, Any]]) -> str:
    main_rows, growth_rows, notes = [], [], []
    for r in rows:
        if "skipped" in r or "error" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r['error']}"
            notes.append(f"{r['transport']}: {why}")
            continue
        main_rows.append(
            [
                r["transport"],
                r["concurrency"],
                f"{r['seconds']:g}",
                r["samples"],
                f"{r['rss_warm_mb']:.0f}",
                f"{r['rss_end_mb']:.0f}",
                f"{r['rss_growth']:+.1%}",
                r["fds_max"],
                r["tasks_max"],
                r["conns_max"],
                r["finished"],
                r["failed"],
                f"{r['requests_per_s']:.0f}",
                f"{r['cpu_ms_per_call']:.2f}",
                f"{r['sim_cpu_share']:.0%}",
                r["verdict"],
            ]
        )
        growth_rows.append(
            [
                r["transport"],
                f"{r['rss_first_max_mb']:.0f}->{r['rss_last_max_mb']:.0f}"
                f" ({r['rss_mb_per_min']:+.1f}/min)",
                f"{r['heap_first_mb']:.0f}->{r['heap_last_mb']:.0f}",
                *(
                    f"{r[f'{n}_first']:.0f}->{r[f'{n}_last']:.0f} ({r[f'{n}_per_min']:+.1f}/min)"
                    for n in COUNTS
                ),
                f"{r['before']['tasks']}/{r['closed']['tasks']}",
                f"{r['before']['fds']}/{r['closed']['fds']}",
                f"{r['closed']['conns'] + r['closed']['close_wait']}",
                f"{r['max_lag_ms']:.0f}",
            ]
        )
    out = []
    if main_rows:
        out.append(
            table(
                [
                    "transport",
                    "runs in flight",
                    "s",
                    "samples",
                    "RSS warm MB",
                    "RSS end MB",
                    "growth",
                    "max fds",
                    "max tasks",
                    "max conns",
                    "runs finished",
                    "failed",
                    "requests/s",
                    "CPU ms/call",
                    "sim CPU",
                    "verdict",
                ],
                main_rows,
            )
        )
        out.append(
            "after warm-up, first third -> last third (slope): the maximum of RSS, fds, tasks "
            "and connections, the median of malloc in use and objects\n"
            + table(
                [
                    "transport",
                    "RSS MB",
                    "malloc in use MB",
                    *COUNTS,
                    "tasks before/closed",
                    "fds before/closed",
                    "conns left",
                    "max loop lag ms",
                ],
                growth_rows,
            )
        )
        for r in rows:
            if "verdict" not in r:
                continue
            injected = ", ".join(f"{k} {v}" for k, v in sorted(r["faults_injected"].items()))
            line = (
                f"{r['transport']}: {r['sim_requests']} requests, faults injected: "
                f"{injected or 'none'}; {r['attempts'] - r['calls']} retries"
            )
            if r["errors"]:
                line += "; failed runs: " + "; ".join(f"{v}x {k}" for k, v in r["errors"].items())
            out.append(line)
            if r["verdict"] != "flat" and r.get("types_grown"):
                grown = ", ".join(f"{k} +{n}" for k, n in r["types_grown"].items())
                out.append(f"{r['transport']}: object types grown since warm-up's end: {grown}")
            if r["tracemalloc_top"]:
                out.append(
                    f"{r['transport']}: tracemalloc, grew most from warm-up's end to the end:\n  "
                    + "\n  ".join(r["tracemalloc_top"][:15])
                )
    out.extend(notes)
    return "\n\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=180.0, help="how long runs are started")
    parser.add_argument("--concurrency", type=int, default=2000, help="runs kept in flight")
    parser.add_argument("--transport", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    parser.add_argument(
        "--latency", type=float, default=0.2, help="simulator seconds to first byte"
    )
    parser.add_argument("--faults", default=FAULTS, help=f"a FaultPlan spec (default {FAULTS})")
    parser.add_argument("--warmup", type=float, default=0.2, help="share of the time dropped")
    parser.add_argument("--interval", type=float, help="seconds between samples (default: auto)")
    parser.add_argument("--idle-timeout", type=float, default=5.0, help="the client's, seconds")
    parser.add_argument(
        "--trace", type=int, nargs="?", const=1, default=0, help="tracemalloc with N frames"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--json", help="rows and every sample")
    args = parser.parse_args(argv)
    rows, reports = measure(
        args.transport,
        args.seconds,
        args.concurrency,
        args.latency,
        args.faults,
        args.warmup,
        args.interval,
        args.idle_timeout,
        args.trace,
        args.quiet,
    )
    print(render(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"rows": rows, "samples": {r["transport"]: r["samples"] for r in reports}},
                out,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(_serve(json.loads(sys.argv[2])))
    elif sys.argv[1:2] == ["client"]:
        report = asyncio.run(_client(sys.argv[2], json.loads(sys.argv[3])))
        with open(sys.argv[4], "w") as out:
            json.dump(report, out)
    else:
        raise SystemExit(main())
