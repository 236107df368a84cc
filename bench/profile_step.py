"""Where a model step's client CPU goes: ``python -m bench.profile_step [--stream] NAME ...``.

Runs each named contender of bench/contenders.py (default: the aiohttp floor and agentloop on
aiohttp) for ``--runs`` 20-step runs against the simulator in another process under cProfile on
the thread-time clock, and prints the Python function calls per step and the profiled time per
step by part: the HTTP stack, the model client, the loop, tools, the event loop. cProfile
charges every Python call, so the parts of code made of many small calls look heavier than
they run; the call counts and the shares between contenders are what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import pstats
import time
from collections.abc import Sequence

from .contenders import CONTENDERS
from .harness import simulator

_MODEL = (
    "models/openai.py",
    "models/kimi.py",
    "models/stream.py",
    "models/base.py",
    "models/transport",
    "models/_calibration",
    "_json.py",
    "limits.py",
    "_secret.py",
)
_LOOP = (
    "_loop.py",
    "_journal.py",
    "agent.py",
    "budget.py",
    "context.py",
    "events.py",
    "telemetry.py",
    "result.py",
    "messages.py",
    "pricing.py",
    "clock.py",
)


def part(filename: str) -> str:
    if any(x in filename for x in ("aiohttp/", "multidict", "yarl/", "propcache")):
        return "HTTP stack (aiohttp)"
    if any(x in filename for x in ("httpx2", "httpcore", "h11")):
        return "HTTP stack (httpx2)"
    if filename == "~":
        return "C functions (called from any part)"
    if "asyncio/" in filename or "selectors.py" in filename:
        return "event loop"
    if "anyio/" in filename or "_deadline.py" in filename or "contextlib.py" in filename:
        return "anyio, deadlines, contextlib"
    if any(x in filename for x in ("jsonschema", "referencing", "_fastcheck", "pydantic")):
        return "tools: validation"
    if "agentloop/tools.py" in filename:
        return "tools: parse, invoke, render"
    if "agentloop/" in filename and any(x in filename for x in _MODEL):
        return "model client: body, response, deltas, retries, accounting"
    if "agentloop/" in filename and any(x in filename for x in _LOOP):
        return "loop: steps, budgets, context, events"
    if "bench/" in filename:
        return "bench harness"
    return "other"


async def _profile(name: str, base_url: str, stream: bool, runs: int) -> str:
    run = CONTENDERS[name](base_url, stream)
    await run()  # warm-up
    profiler = cProfile.Profile(time.thread_time)
    calls = 0
    profiler.enable()
    for _ in range(runs):
        calls += await run()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    parts: collections.Counter[str] = collections.Counter()
    functions = 0
    for (filename, _, _), (_, count, own, _, _) in stats.items():
        parts[part(filename)] += own
        functions += count
    total = sum(parts.values())
    lines = [
        f"{name} ({'streamed' if stream else 'non-streamed'}): {functions / calls:,.0f} Python "
        f"function calls and {total / calls * 1e6:,.0f} µs profiled per step"
    ]
    for key, own in parts.most_common():
        lines.append(f"  {own / total:6.1%}  {own / calls * 1e6:7.1f} µs  {key}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__)
    parser.add_argument("names", nargs="*", default=["aiohttp loop (floor)", "agentloop (aiohttp)"])
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args(argv)
    with simulator(steps=19) as sim:
        for name in args.names:
            print(asyncio.run(_profile(name, sim.base_url, args.stream, args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
