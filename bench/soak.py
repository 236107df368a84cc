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

Every few seconds the client samples itself: RSS, malloc's bytes in use (glibc's ``mallinfo2``:
``uordblks + hblkhd``), gc-tracked objects, then glibc's ``malloc_trim(0)`` and RSS again
("trimmed": what the process holds once malloc has handed its free pages back; the trim costs
about a millisecond, 0.02% of the client's CPU), open file descriptors, asyncio tasks, its TCP
connections to the simulator by state, runs finished and failed, CPU. A full ``gc.collect()``
costs ~0.3 s at 400K objects, too much for every sample: it runs at the censuses only (before
the runs, at warm-up's end, at the end, after the drain, after the close), which give what is
live there. As every sample trims, raw RSS is what the process regrew to in the seconds since
the last trim; ``--no-trim`` gives an untrimmed process's RSS instead (and no trimmed figure).

The samples after warm-up (the first ``--warmup`` share of the time is dropped) are cut in
thirds. The amounts (raw RSS, trimmed RSS, malloc in use, objects: they swing by ±5% with what
the runs in flight hold) are compared by the medians of the thirds; fds and connections (bounded
by the pool) by the maxima; tasks by the minima, the floor (they swing by a quarter: aiohttp
writes each request body in a task of its own; a task that never ends raises the floor). Each
also gets its least-squares slope per minute. The verdict (``verdict()``):

* an amount **grew** when the last third's median exceeds the first third's by more than 5%
  (``SLACK``) and the middle third's by more than a quarter of that: a leak at a steady rate
  passes both, a warm-up that levelled off by the middle third does not;
* **GROWS** when malloc's bytes in use, the objects or the trimmed RSS grew (memory that is
  held: a leak), when fds, connections or tasks grew by more than max(8, 3%), or when a
  connection, a task or an fd is left after the close; raw RSS that grew is named with them;
* **flat** otherwise. Raw RSS that grew while trimmed RSS, malloc in use and the objects stayed
  flat is free memory malloc keeps (its high-water mark, fragmentation), not a leak: the verdict
  is ``flat (fragmentation: RSS +N% raw, in use flat)``. Where one of the three is not measured
  (no glibc, ``--no-trim``) it cannot vouch, and raw RSS that grew is GROWS.

``--trace`` adds tracemalloc (slow) and prints the allocation sites that grew most between
warm-up's end and the end.

    python -m bench soak [--seconds 180] [--concurrency 2000] [--transport httpx2 aiohttp]
                         [--latency 0.2] [--faults SPEC] [--no-trim] [--trace] [--json FILE]
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
import time
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
SLACK = 0.05  # "flat": an amount's last-third median within 5% of its first-third median
# amounts, compared by the median of a third: raw RSS, RSS after malloc_trim(0), malloc's bytes
# in use and the gc-tracked objects
AMOUNTS = ("rss_mb", "rss_trim_mb", "heap_mb", "objects")
IN_USE = ("rss_trim_mb", "heap_mb", "objects")  # flat, they make raw RSS growth fragmentation
COUNTS = ("fds", "tasks", "conns")  # compared by the maxima of thirds, tasks by the minima
LABELS = {
    "rss_mb": "RSS raw MB",
    "rss_trim_mb": "RSS trimmed MB",
    "heap_mb": "malloc in use MB",
    "objects": "objects",
}
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


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None elsewhere): hands malloc's free pages back to the kernel."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()


class _Cost:
    """The CPU seconds the sampler's ``malloc_trim(0)`` calls have cost so far."""

    cpu_s = 0.0


def _trimmed_rss_mb() -> tuple[float | None, float]:
    """``malloc_trim(0)`` (glibc hands every whole free page of its heaps back to the kernel),
    then RSS: what the process holds without malloc's free pages. None without glibc's
    ``malloc_trim``; and the trim's ms."""
    if _MALLOC_TRIM is None:
        return None, 0.0
    cpu = time.process_time()
    began = time.perf_counter()
    _MALLOC_TRIM(0)
    rss = _rss_mb()
    took = time.perf_counter() - began
    _Cost.cpu_s += time.process_time() - cpu
    return rss, took * 1e3


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


def _census(port: int, trim: bool = True) -> dict[str, Any]:
    """What the counts are made of: fd kinds, TCP states, the tasks by coroutine, the objects by
    type; first a full ``gc.collect()`` (too slow for every sample: ~0.3 s at 400K objects), so
    that the objects, malloc in use and trimmed RSS here are what is live, not garbage."""
    began = time.perf_counter()
    gc.collect()
    collect_ms = (time.perf_counter() - began) * 1e3
    rss_trimmed, _ = _trimmed_rss_mb() if trim else (None, 0.0)
    live = {
        "collect_ms": round(collect_ms, 1),
        "objects": len(gc.get_objects()),
        "heap_mb": round(_heap_mb(), 2),
        "rss_trim_mb": None if rss_trimmed is None else round(rss_trimmed, 2),
    }
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
        "live": live,
    }


class _Tally:
    __slots__ = ("attempts", "calls", "errors", "failed", "finished")

    def __init__(self) -> None:
        self.finished = 0
        self.failed = 0
        self.calls = 0  # model calls (steps) of the runs that ended
        self.attempts = 0  # HTTP requests those calls took (calls + retries)
        self.errors: collections.Counter[str] = collections.Counter()


def _sample(
    t: float, phase: str, port: int, tally: _Tally, lag: float, trim: bool = True
) -> dict[str, Any]:
    rss = _rss_mb()  # raw: before the trim
    heap = _heap_mb()
    objects = len(gc.get_objects())
    rss_trimmed, trim_ms = _trimmed_rss_mb() if trim else (None, 0.0)
    fds, _, sockets = _fd_kinds()
    tcp = _tcp_to(port, sockets)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "t": round(t, 3),
        "phase": phase,
        "rss_mb": round(rss, 2),
        "rss_trim_mb": None if rss_trimmed is None else round(rss_trimmed, 2),
        "heap_mb": round(heap, 2),
        "trim_ms": round(trim_ms, 2),
        "sampler_cpu_s": round(_Cost.cpu_s, 4),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 2),
        "fds": fds,
        "sockets": len(sockets),
        "tasks": len(asyncio.all_tasks()),
        "conns": tcp.get("established", 0),
        "close_wait": tcp.get("close_wait", 0),
        "objects": objects,
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
    trim = bool(options.get("trim", True))
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
    censuses: dict[str, Any] = {"before": _census(port, trim)}
    samples: list[dict[str, Any]] = [_sample(0.0, "before", port, tally, 0.0, trim)]
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
    last_t = 0.0
    while not done.is_set():
        due = loop.time() + interval
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), interval)
        lag = max(0.0, loop.time() - due) if not done.is_set() else 0.0
        t = loop.time() - start
        phase = "steady" if t <= seconds else "drain"
        sample = _sample(t, phase, port, tally, lag, trim)
        samples.append(sample)
        if phase == "steady" and t >= warm_at and not warm_noted:
            warm_noted = True
            censuses["warm"] = _census(port, trim)
            if trace:
                snapshots["warm"] = tracemalloc.take_snapshot()
        # the last steady sample (the loop's lag can stretch the gap between samples past the
        # interval), else the first of the drain
        gap, last_t = max(interval, t - last_t), t
        if "end" not in censuses and (phase == "drain" or t + gap > seconds):
            censuses["end"] = _census(port, trim)
            if trace:
                snapshots["end"] = tracemalloc.take_snapshot()
        print(
            f"soak {transport:7} {t:6.1f}s {phase:6} rss {sample['rss_mb']:6.1f} MB  "
            f"trimmed {sample['rss_trim_mb'] or 0:6.1f}  in use {sample['heap_mb']:5.1f}  "
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
    samples.append(_sample(wall, "drained", port, tally, 0.0, trim))
    censuses["drained"] = _census(port, trim)
    await model.aclose()
    await asyncio.sleep(0.2)  # let the transports' closed sockets go
    gc.collect()
    samples.append(_sample(loop.time() - start, "closed", port, tally, 0.0, trim))
    censuses["closed"] = _census(port, trim)
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


def _growth(first: float, last: float) -> float:
    return (last - first) / first if first else 0.0


def _grew(head: float, middle: float, tail: float) -> bool:
    """Growth that is a leak: the last third's median over the first's by more than the slack,
    and still over the middle third's by a quarter of it. A leak at a steady rate grows by as
    much from the middle to the last third as from the first to the middle, so it passes both
    (with a margin of 2× for noise); a warm-up that levelled off by the middle third does not."""
    return tail > head * (1 + SLACK) and tail > middle + head * SLACK / 4


def verdict(
    steady: Sequence[dict[str, Any]],
    before: dict[str, Any] | None = None,
    closed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The figures and the verdict of the steady samples after warm-up (and of the samples
    before the runs and after the close): see the module's docstring for the rule."""
    third = max(1, len(steady) // 3)
    first, middle, last = steady[:third], steady[third:-third] or steady[:third], steady[-third:]
    out: dict[str, Any] = {}
    grows: list[str] = []
    in_use_flat = True  # trimmed RSS, malloc in use and objects all measured and flat
    unmeasured: list[str] = []
    for name in AMOUNTS:
        values = [s.get(name) for s in steady]
        if not steady or any(v is None for v in values) or not all(values):
            out[f"{name}_first"] = out[f"{name}_last"] = out[f"{name}_growth"] = None
            if name in IN_USE:  # not measured: cannot vouch for raw RSS
                in_use_flat = False
                unmeasured.append(LABELS[name])
            continue
        # an amount swings by ±5% with what the runs in flight hold: the median of a third is
        # steady where one sample is a crest or a trough
        head, mid, tail = (
            statistics.median(s[name] for s in part) for part in (first, middle, last)
        )
        out[f"{name}_first"], out[f"{name}_middle"], out[f"{name}_last"] = head, mid, tail
        out[f"{name}_growth"] = _growth(head, tail)
        out[f"{name}_per_min"] = _slope([(s["t"], s[name]) for s in steady])
        if name != "rss_mb" and _grew(head, mid, tail):
            in_use_flat = in_use_flat and name not in IN_USE
            grows.append(f"{LABELS[name]} {head:.0f}->{tail:.0f} ({out[f'{name}_growth']:+.0%})")
    note = ""
    if out["rss_mb_growth"] is not None and _grew(
        out["rss_mb_first"], out["rss_mb_middle"], out["rss_mb_last"]
    ):
        if in_use_flat:  # RSS up, what is in use flat: free holes in malloc's heap
            note = f"fragmentation: RSS {out['rss_mb_growth']:+.0%} raw, in use flat"
        else:
            why = f" ({', '.join(unmeasured)} not measured)" if unmeasured else ""
            grows.insert(0, f"RSS {out['rss_mb_growth']:+.0%} raw{why}")
    for name in COUNTS:
        # fds and connections are bounded by the pool and hardly swing: the maxima of thirds.
        # Tasks swing by a quarter (aiohttp writes each request body in a task of its own, and
        # they come and go): the minima of thirds, the floor, the runs' own tasks and whatever
        # never ends
        pick = min if name == "tasks" else max
        out[f"{name}_max"] = max((s[name] for s in steady), default=0)
        out[f"{name}_per_min"] = _slope([(s["t"], s[name]) for s in steady])
        head = pick((s[name] for s in first), default=0)
        tail = pick((s[name] for s in last), default=0)
        out[f"{name}_first"], out[f"{name}_last"] = head, tail
        if tail > head + _slack(head):
            grows.append(f"{name} {head:.0f}->{tail:.0f}")
    if closed is not None and before is not None:
        if closed["conns"] or closed["close_wait"]:
            grows.append(f"{closed['conns'] + closed['close_wait']} connections left after close")
        if closed["tasks"] > before["tasks"]:
            grows.append(f"tasks left after close {before['tasks']}->{closed['tasks']}")
        if closed["fds"] > before["fds"] + 2:
            grows.append(f"fds left after close {before['fds']}->{closed['fds']}")
    if grows:
        out["verdict"] = "GROWS: " + ", ".join(grows)
    else:
        out["verdict"] = f"flat ({note})" if note else "flat"
    return out


def analyse(report: dict[str, Any], warmup: float) -> dict[str, Any]:
    """One row from a client report: the samples after warm-up, in thirds, and the verdict."""
    seconds = report["seconds"]
    steady = [s for s in report["samples"] if s["phase"] == "steady" and s["t"] >= warmup * seconds]
    if len(steady) < 2:
        steady = [s for s in report["samples"] if s["phase"] == "steady"][-2:]
    row: dict[str, Any] = {
        "transport": report["transport"],
        "concurrency": report["concurrency"],
        "seconds": seconds,
        "samples": len(steady),
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
        "trim_ms": statistics.median(s.get("trim_ms", 0.0) for s in steady) if steady else 0.0,
        "trim_cpu_share": 0.0,
    }
    if len(steady) >= 2:
        a, b = steady[0], steady[-1]
        span = b["t"] - a["t"]
        if b["calls"] > a["calls"]:  # the steady window alone, warm-up and drain left out
            row["cpu_ms_per_call"] = (b["cpu_s"] - a["cpu_s"]) / (b["calls"] - a["calls"]) * 1e3
        if span > 0:
            row["requests_per_s"] = (b["attempts"] - a["attempts"]) / span
            row["calls_per_s"] = (b["calls"] - a["calls"]) / span
        if b["cpu_s"] > a["cpu_s"]:
            trim_cpu = b.get("sampler_cpu_s", 0.0) - a.get("sampler_cpu_s", 0.0)
            row["trim_cpu_share"] = trim_cpu / (b["cpu_s"] - a["cpu_s"])
    closed = next((s for s in report["samples"] if s["phase"] == "closed"), None)
    before = report["samples"][0]
    row.update(verdict(steady, before, closed))
    keys = ("fds", "tasks", "conns", "close_wait", "rss_mb")
    if closed is not None:
        row["closed"] = {k: closed[k] for k in keys}
        row["before"] = {k: before[k] for k in keys}
    census = report["census"]
    if "warm" in census and "end" in census:  # which object types grew after warm-up
        warm, end = census["warm"]["types"], census["end"]["types"]
        grown = sorted(((end[k] - warm.get(k, 0), k) for k in end), reverse=True)
        row["types_grown"] = {k: n for n, k in grown[:10] if n > 0}
        # after a full gc.collect(): what is live at warm-up's end and at the end
        row["live"] = {"warm": census["warm"].get("live"), "end": census["end"].get("live")}
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
    trim: bool = True,
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
            "trim": trim,
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


def _amount(r: dict[str, Any], name: str) -> str:
    """An amount's first-third -> last-third medians, its growth and slope per minute."""
    if r.get(f"{name}_growth") is None:
        return "-"
    return (
        f"{r[f'{name}_first']:.0f}->{r[f'{name}_last']:.0f} ({r[f'{name}_growth']:+.1%}, "
        f"{r[f'{name}_per_min']:+.1f}/min)"
    )


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
                r["finished"],
                r["failed"],
                f"{r['requests_per_s']:.0f}",
                f"{r['cpu_ms_per_call']:.2f}",
                f"{r['sim_cpu_share']:.0%}",
                f"{r['peak_rss_mb']:.0f}",
                r["verdict"],
            ]
        )
        growth_rows.append(
            [
                r["transport"],
                *(_amount(r, n) for n in AMOUNTS),
                *(f"{r[f'{n}_first']:.0f}->{r[f'{n}_last']:.0f}" for n in COUNTS),
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
                    "runs finished",
                    "failed",
                    "requests/s",
                    "CPU ms/call",
                    "sim CPU",
                    "peak RSS MB",
                    "verdict",
                ],
                main_rows,
            )
        )
        out.append(
            "after warm-up, first third -> last third: the medians of the amounts (growth, "
            "slope per minute), the maxima of fds and conns, the minima of tasks; RSS raw is "
            "before malloc_trim(0), trimmed after\n"
            + table(
                [
                    "transport",
                    *(LABELS[n] for n in AMOUNTS),
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
            live = r.get("live") or {}
            if live.get("warm") and live.get("end"):
                warm, end = live["warm"], live["end"]
                trimmed = (
                    f", RSS trimmed {warm['rss_trim_mb']:.0f} -> {end['rss_trim_mb']:.0f} MB"
                    if warm["rss_trim_mb"] and end["rss_trim_mb"]
                    else ""
                )
                cost = (
                    f"; malloc_trim(0) per sample {r['trim_ms']:.1f} ms (median), "
                    f"{r['trim_cpu_share']:.2%} of the client's CPU"
                    if trimmed
                    else ""
                )
                out.append(
                    f"{r['transport']}: after a full gc.collect() ({end['collect_ms']:.0f} ms), "
                    f"warm-up's end -> end: objects {warm['objects']} -> {end['objects']}, "
                    f"malloc in use {warm['heap_mb']:.0f} -> {end['heap_mb']:.0f} MB{trimmed}{cost}"
                )
            if not r["verdict"].startswith("flat") and r.get("types_grown"):
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
    parser.add_argument(
        "--no-trim",
        dest="trim",
        action="store_false",
        help="no malloc_trim(0) at the samples: raw RSS as an untrimmed process keeps it (no "
        "trimmed RSS, so raw RSS growth cannot be told from a leak)",
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
        args.trim,
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
