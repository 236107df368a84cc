"""Long history: client CPU per model step at 10K, 100K and 250K tokens of history.

A run is given a history pre-filled with tool turns (one ``lookup`` call and its ~1.5 KB result
each) to about each size, no context strategies (``context=[]``) and a 1M-token window on both
sides, so nothing trims it; then it makes ``--steps`` more tool steps against the simulator's
tool loop (its own process, zero latency, thinking off, streamed). The client's CPU per step
(``time.process_time`` between consecutive tool calls, so one whole step: strategies, sizing,
request building, serialising, the call, parsing, the tool, events) is the median over the
steps of ``--repeat`` runs, each in a fresh process, for agentloop on both transports and for
the hand-written loops of bench/contenders.py started from the same history. Beside it, the
cost of one ``orjson.dumps`` of that step's request body (median of many).

The goal (issue 18): from the smallest history to the largest, what agentloop adds to a step
grows by at most twice what one ``orjson.dumps`` of the body grows by. What agentloop adds is
its per-step CPU less the floor's on the same HTTP stack: the floor pays the serialising, the
HTTP stack's handling of a 1 MB body and the kernel's loopback send, which grow with the body
for any client (3-6x one ``orjson.dumps`` here), and which no runtime above the stack removes.

    python -m bench long_history [--sizes 10000 100000 250000] [--steps 8] [--repeat 3]
                                 [--only NAME ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from .harness import simulator, table

WINDOW = 1_000_000
GOAL = 2.0


def history(model: Any, tokens: int) -> list[dict[str, Any]]:
    """A task and tool turns up to about ``tokens`` by the model's (uncalibrated) estimate."""
    from .contenders import RESULT, TASK

    messages: list[dict[str, Any]] = [{"role": "user", "content": TASK}]
    size = model.default_estimate(messages)
    n = 0
    while size < tokens:
        call_id = f"lookup:{n}"
        turn: list[dict[str, Any]] = [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": "lookup",
                            "arguments": json.dumps({"query": f"harbour archive part {n}"}),
                        },
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": call_id,
                "name": "lookup",
                "content": f"harbour archive part {n}: {RESULT}",
            },
        ]
        messages += turn
        size += model.default_estimate(turn)
        n += 1
    return messages


CONTENDERS = ("agentloop", "agentloop (aiohttp)", "httpx2 loop (floor)", "aiohttp loop (floor)")


def child(contender: str, tokens: int, base_url: str, steps: int) -> dict[str, Any]:
    """One measurement, in a process of its own."""
    import anyio

    from agentloop import Budget
    from agentloop import _json as wire_json
    from agentloop.models.base import ModelRequest

    from .contenders import agentloop_agent

    marks: list[float] = []
    budget = Budget(
        max_steps=steps + 1, per_step_tokens=4096, total_tokens=None, final_answer_on_limit=False
    )
    agent = agentloop_agent(
        base_url,
        on_call=lambda: marks.append(time.process_time()),
        budget=budget,
        context=[],
        context_window=WINDOW,
        transport="aiohttp" if "aiohttp" in contender else "httpx2",
    )
    model = agent.model
    past = history(model, tokens)
    floor = _floor(contender, base_url, marks) if "floor" in contender else None

    async def main() -> tuple[list[float], list[dict[str, Any]], int | None]:
        if floor is not None:
            await floor([{"role": "user", "content": "warm-up"}], 1)
            marks.clear()
            messages = [*past, {"role": "user", "content": "Go on."}]
            await floor(messages, steps + 1)
            return [b - a for a, b in itertools.pairwise(marks)], messages, None
        await agent.run("warm-up")  # imports, the connection, the calibration's first report
        marks.clear()
        result = await agent.run(history=[*past, {"role": "user", "content": "Go on."}])
        if len(result.steps) != steps + 1 or result.stop_reason != "max_steps":
            raise RuntimeError(f"run ended {result.stop_reason} after {len(result.steps)} steps")
        per_step = [b - a for a, b in itertools.pairwise(marks)]
        return per_step, result.messages, result.steps[-1].usage.input_tokens

    per_step, messages, reported = anyio.run(main)
    # the body of the last step, as the model client builds it; serialised the way it is sent
    specs = agent.toolbox.specs
    estimate = model.estimate_tokens(messages, specs)
    body = model.build_body(ModelRequest(messages, specs, 4096), estimate)
    payload = wire_json.dumps(body)
    dumps = []
    for _ in range(21):
        t0 = time.process_time()
        wire_json.dumps(body)
        dumps.append(time.process_time() - t0)
    return {
        "history_tokens": model.default_estimate(past),
        "history_messages": len(past),
        "reported_prompt_tokens": reported,
        "body_bytes": len(payload),
        "cpu_s_per_step": per_step,
        "dumps_s": statistics.median(dumps),
    }


def _floor(contender: str, base_url: str, marks: list[float]) -> Any:
    """The hand-written loop of bench/contenders.py (orjson, one pass over the SSE bytes),
    started from a given history: what any client pays per step for that history."""
    import orjson

    from .contenders import FLOOR_HEADERS, _Assembler, _floor_body, lookup_impl

    url = f"{base_url}/chat/completions"
    state: dict[str, Any] = {}

    async def call(messages: list[dict[str, Any]]) -> dict[str, Any]:
        body = _floor_body(messages, True)
        assembler = _Assembler()
        if contender.startswith("aiohttp"):
            import aiohttp

            if "session" not in state:
                state["session"] = aiohttp.ClientSession(
                    headers=FLOOR_HEADERS, connector=aiohttp.TCPConnector(limit=0)
                )
            async with state["session"].post(url, data=body) as response:
                response.raise_for_status()
                async for data in response.content.iter_any():
                    assembler.feed(data)
        else:
            import httpx2

            if "client" not in state:
                state["client"] = httpx2.AsyncClient(headers=FLOOR_HEADERS, timeout=60)
            async with state["client"].stream("POST", url, content=body) as response:
                response.raise_for_status()
                async for data in response.aiter_bytes():
                    assembler.feed(data)
        return assembler.message()

    async def run(messages: list[dict[str, Any]], steps: int) -> None:
        for _ in range(steps):
            message = await call(messages)
            messages.append(message)
            for tc in message.get("tool_calls") or ():
                marks.append(time.process_time())
                args = orjson.loads(tc["function"]["arguments"])
                content = await lookup_impl(args["query"])
                messages.append({"role": "tool", "tool_call_id": tc["id"], "content": content})
            if not message.get("tool_calls"):
                messages.append({"role": "user", "content": "Go on."})

    return run


def measure(
    sizes: Sequence[int], steps: int, repeat: int, contenders: Sequence[str]
) -> list[dict[str, Any]]:
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with simulator(steps=10**9, models={"kimi-k2.6": WINDOW}) as sim:
        for _ in range(repeat):  # interleaved: a slow spell of the machine hits every size
            for contender in contenders:
                for size in sizes:
                    got = _child(contender, size, sim.base_url, steps)
                    samples.setdefault((contender, size), []).append(got)
    rows = []
    for contender in contenders:
        for size in sizes:
            got = samples[(contender, size)]
            per_step = [t for s in got for t in s["cpu_s_per_step"]]
            cpu = statistics.median(per_step) * 1e3
            rows.append(
                {
                    "contender": contender,
                    "target_tokens": size,
                    "history_tokens": got[0]["history_tokens"],
                    "history_messages": got[0]["history_messages"],
                    "reported_prompt_tokens": got[0]["reported_prompt_tokens"],
                    "body_kb": got[0]["body_bytes"] / 1024,
                    "steps_timed": len(per_step),
                    "cpu_ms_per_step": cpu,
                    "dumps_ms": statistics.median(s["dumps_s"] for s in got) * 1e3,
                }
            )
    for r in rows:
        first = next(f for f in rows if f["contender"] == r["contender"])
        r["cpu_growth_ms"] = r["cpu_ms_per_step"] - first["cpu_ms_per_step"]
        r["dumps_growth_ms"] = r["dumps_ms"] - first["dumps_ms"]
        grows = r["dumps_growth_ms"] > 0
        r["growth_ratio"] = r["cpu_growth_ms"] / r["dumps_growth_ms"] if grows else None
    for r in rows:  # once every row's growth is known
        grows = r["dumps_growth_ms"] > 0
        floor = _floor_row(rows, r)
        r["beyond_floor_growth_ms"] = (
            None if floor is None else r["cpu_growth_ms"] - floor["cpu_growth_ms"]
        )
        r["beyond_floor_vs_dumps"] = (
            r["beyond_floor_growth_ms"] / r["dumps_growth_ms"]
            if grows and r["beyond_floor_growth_ms"] is not None
            else None
        )
    return rows


def _child(contender: str, size: int, base_url: str, steps: int) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "bench.long_history",
        "--child",
        contender,
        str(size),
        base_url,
        str(steps),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["the child failed"])[-1])
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _floor_row(rows: Sequence[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any] | None:
    """The hand-written loop on the same HTTP stack at the same size (None for a floor)."""
    if "floor" in row["contender"]:
        return None
    aiohttp = "aiohttp" in row["contender"]
    return next(
        (
            r
            for r in rows
            if "floor" in r["contender"]
            and ("aiohttp" in r["contender"]) == aiohttp
            and r["target_tokens"] == row["target_tokens"]
        ),
        None,
    )


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def render(rows: Sequence[dict[str, Any]]) -> str:
    body = [
        [
            r["contender"],
            f"{r['history_tokens']:,}",
            f"{r['body_kb']:.0f}",
            f"{r['cpu_ms_per_step']:.2f}",
            f"{r['dumps_ms']:.3f}",
            f"{r['cpu_growth_ms']:+.2f}",
            f"{r['dumps_growth_ms']:+.3f}",
            _ratio(r["growth_ratio"]),
            "" if r["beyond_floor_growth_ms"] is None else f"{r['beyond_floor_growth_ms']:+.2f}",
            _ratio(r["beyond_floor_vs_dumps"]),
        ]
        for r in rows
    ]
    lines = []
    for name in dict.fromkeys(r["contender"] for r in rows):
        last = [r for r in rows if r["contender"] == name][-1]
        if "floor" in name or last["beyond_floor_vs_dumps"] is None:
            continue
        ratio = last["beyond_floor_vs_dumps"]
        lines.append(
            f"{name}: from {rows[0]['history_tokens']:,} to {last['history_tokens']:,} tokens "
            f"per-step CPU grows {last['cpu_growth_ms']:+.2f} ms, the floor's "
            f"{last['cpu_growth_ms'] - last['beyond_floor_growth_ms']:+.2f} ms: what agentloop "
            f"adds grows by {ratio:.2f}x one orjson.dumps of the body's growth "
            f"({'meets' if ratio <= GOAL else 'misses'} the goal of <= {GOAL:g}x)"
        )
    steps = rows[0]["steps_timed"]
    return (
        f"client CPU per step with a pre-filled history, {steps} steps timed per size, zero "
        "latency, no context strategies:\n"
        + table(
            [
                "contender",
                "history tokens",
                "body KB",
                "CPU ms/step",
                "orjson.dumps ms",
                "CPU growth",
                "dumps growth",
                "CPU growth vs dumps",
                "growth beyond floor",
                "beyond floor vs dumps",
            ],
            body,
        )
        + "\n\n"
        + "\n".join(lines)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench long_history", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 250_000])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (>= 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size, fresh processes")
    parser.add_argument("--only", nargs="+", choices=CONTENDERS)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    from .harness import installed

    contenders = [
        c for c in (args.only or CONTENDERS) if "aiohttp" not in c or installed("aiohttp")
    ]
    rows = measure(sorted(args.sizes), args.steps, args.repeat, contenders)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        contender, size, base_url, steps = sys.argv[2:]
        print(json.dumps(child(contender, int(size), base_url, int(steps))))
    else:
        raise SystemExit(main())
