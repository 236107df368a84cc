"""Long history: client CPU per model step at 10K, 100K and 250K tokens of history.

A run is given a history pre-filled with tool turns (one ``lookup`` call and its ~1.5 KB result
each) to about each size, no context strategies (``context=[]``) and a 1M-token window on both
sides, so nothing trims it; then it makes ``--steps`` more tool steps against the simulator's
tool loop (its own process, zero latency, thinking off). The client's CPU per step
(``time.process_time`` between consecutive tool calls, so one whole step: strategies, sizing,
request building, serialising, the call, parsing, the tool, events) is the median over the
steps of ``--repeat`` runs, each in a fresh process. Beside it, the cost of one ``orjson.dumps``
of that step's request body (built by the model client, median of many), which any client must
pay once per step.

The goal (issue 18): from the smallest history to the largest, per-step client CPU grows by at
most twice what one ``orjson.dumps`` of the body grows by: the rest of a step is flat.

    python -m bench long_history [--sizes 10000 100000 250000] [--steps 8] [--repeat 3]
                                 [--json FILE]
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


def child(tokens: int, base_url: str, steps: int) -> dict[str, Any]:
    """One measurement, in a process of its own."""
    import anyio

    from agentloop import Agent, Budget, KimiModel, tool
    from agentloop import _json as wire_json
    from agentloop.models.base import ModelRequest

    from .contenders import KEY, lookup_impl

    marks: list[float] = []

    @tool
    async def lookup(query: str) -> str:
        """Look up.

        Args:
            query: what to look up.
        """
        marks.append(time.process_time())
        return await lookup_impl(query)

    model = KimiModel(
        api_key=KEY,
        base_url=base_url,
        thinking=False,
        rpm=None,
        max_tokens=4096,
        context_window=WINDOW,
    )
    model.retry.max_attempts = 1
    budget = Budget(
        max_steps=steps + 1, per_step_tokens=4096, total_tokens=None, final_answer_on_limit=False
    )
    agent = Agent(model, tools=[lookup], budget=budget, context=[])
    past = history(model, tokens)

    async def main() -> tuple[list[float], Any]:
        await agent.run("warm-up")  # imports, the connection, the calibration's first report
        marks.clear()
        result = await agent.run(history=[*past, {"role": "user", "content": "Go on."}])
        if len(result.steps) != steps + 1 or result.stop_reason != "max_steps":
            raise RuntimeError(f"run ended {result.stop_reason} after {len(result.steps)} steps")
        return [b - a for a, b in itertools.pairwise(marks)], result

    per_step, result = anyio.run(main)
    # the body of the last step, as the model client builds it; serialised the way it is sent
    specs = agent.toolbox.specs
    estimate = model.estimate_tokens(result.messages, specs)
    body = model.build_body(ModelRequest(result.messages, specs, 4096), estimate)
    payload = wire_json.dumps(body)
    dumps = []
    for _ in range(21):
        t0 = time.process_time()
        wire_json.dumps(body)
        dumps.append(time.process_time() - t0)
    return {
        "history_tokens": model.default_estimate(past),
        "history_messages": len(past),
        "reported_prompt_tokens": result.steps[-1].usage.input_tokens,
        "body_bytes": len(payload),
        "cpu_s_per_step": per_step,
        "dumps_s": statistics.median(dumps),
    }


def measure(sizes: Sequence[int], steps: int, repeat: int) -> list[dict[str, Any]]:
    samples: dict[int, list[dict[str, Any]]] = {s: [] for s in sizes}
    with simulator(steps=10**9, models={"kimi-k2.6": WINDOW}) as sim:
        sim_cpu: dict[int, float] = dict.fromkeys(sizes, 0.0)
        for _ in range(repeat):  # interleaved: a slow spell of the machine hits every size
            for size in sizes:
                before = sim.cpu()
                samples[size].append(_child(size, sim.base_url, steps))
                sim_cpu[size] += sim.cpu() - before
    rows = []
    for size in sizes:
        got = samples[size]
        per_step = [t for s in got for t in s["cpu_s_per_step"]]
        rows.append(
            {
                "target_tokens": size,
                "history_tokens": got[0]["history_tokens"],
                "history_messages": got[0]["history_messages"],
                "reported_prompt_tokens": got[0]["reported_prompt_tokens"],
                "body_kb": got[0]["body_bytes"] / 1024,
                "steps_timed": len(per_step),
                "cpu_ms_per_step": statistics.median(per_step) * 1e3,
                "dumps_ms": statistics.median(s["dumps_s"] for s in got) * 1e3,
                # every request the simulator served for this size (warm-ups included)
                "sim_cpu_ms_per_step": sim_cpu[size] / (repeat * (steps + 2)) * 1e3,
            }
        )
    first = rows[0]
    for r in rows:
        r["cpu_growth_ms"] = r["cpu_ms_per_step"] - first["cpu_ms_per_step"]
        r["dumps_growth_ms"] = r["dumps_ms"] - first["dumps_ms"]
        r["other_ms_per_step"] = r["cpu_ms_per_step"] - r["dumps_ms"]
        r["growth_ratio"] = (
            r["cpu_growth_ms"] / r["dumps_growth_ms"] if r["dumps_growth_ms"] > 0 else None
        )
    return rows


def _child(size: int, base_url: str, steps: int) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.long_history", "--child", str(size), base_url, str(steps)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["the child failed"])[-1])
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def render(rows: Sequence[dict[str, Any]]) -> str:
    body = [
        [
            f"{r['history_tokens']:,}",
            str(r["history_messages"]),
            f"{r['body_kb']:.0f}",
            f"{r['cpu_ms_per_step']:.2f}",
            f"{r['dumps_ms']:.3f}",
            f"{r['other_ms_per_step']:.2f}",
            f"{r['cpu_growth_ms']:+.2f}",
            f"{r['dumps_growth_ms']:+.3f}",
            "" if r["growth_ratio"] is None else f"{r['growth_ratio']:.2f}x",
            f"{r['sim_cpu_ms_per_step']:.1f}",
        ]
        for r in rows
    ]
    last = rows[-1]
    ratio = last["growth_ratio"]
    verdict = (
        "n/a"
        if ratio is None
        else f"{ratio:.2f}x ({'meets' if ratio <= GOAL else 'misses'} the goal of <= {GOAL:g}x)"
    )
    steps = rows[0]["steps_timed"]
    return (
        f"client CPU per step with a pre-filled history, {steps} steps timed per size, zero "
        "latency, no context strategies:\n"
        + table(
            [
                "history tokens",
                "messages",
                "body KB",
                "client CPU ms/step",
                "orjson.dumps ms",
                "CPU - dumps ms",
                "CPU growth ms",
                "dumps growth ms",
                "growth vs dumps",
                "sim CPU ms/step",
            ],
            body,
        )
        + f"\n\ngrowth of per-step client CPU from {rows[0]['history_tokens']:,} to "
        f"{last['history_tokens']:,} tokens vs one orjson.dumps of the body: {verdict}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench long_history", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 250_000])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (>= 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size, fresh processes")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    rows = measure(sorted(args.sizes), args.steps, args.repeat)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        size, base_url, steps = sys.argv[2:]
        print(json.dumps(child(int(size), base_url, int(steps))))
    else:
        raise SystemExit(main())
