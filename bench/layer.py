"""What agentloop's own layer costs per model call, with the HTTP stack taken away.

step_overhead measures agentloop against hand-written loops over a real HTTP stack; the ratio
mixes what the stack costs (the same for both) with what each loop adds. Here both loops talk
to a transport that answers at once from memory with the simulator's bodies for the same
20-step tool loop (19 ``lookup`` calls, ~1.5 KB results, then an answer), so the CPU per call
is only the loop's own: for the hand-written loop, serialising the body, parsing the answer and
running the tool; for agentloop, everything its step does. One process, no sockets, so the
figures are steady to a few percent.

Then the parts of agentloop's step are switched off one at a time (monkeypatched in this
process, each measured afresh), to show what each costs:

- ``deadlines``: the watchdog guarding every wait for the server and every tool call;
- ``estimates``: sizing each new message (the calibrated token estimate);
- ``budget fit``: fitting the call's max_tokens under every limit (``budget.fit_call``);
- ``context``: the context strategies' check before each step;
- ``tool pipeline``: argument parsing and validation, the timeout, rendering the result;
- ``tool records``: the history fix-up of the calls (``prepare_calls``), loop detection and
  result shaping, the call records;
- ``all of these``: together.

Adding the figure of step_overhead's floor for an HTTP stack to both columns gives what each
loop would cost per call on it: the share agentloop's layer has of a call is what a ratio to
the floor can be at best for this step.

    python -m bench layer [--runs 100] [--repeat 5] [--stream | --both] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any
from unittest import mock

import orjson

from . import contenders
from .harness import table

STEPS = 19  # tool steps before the answer, as the simulator's tool loop in step_overhead


def _body(step: int) -> dict[str, Any]:
    if step < STEPS:
        arguments = orjson.dumps({"query": f"harbour archive part {step}"}).decode()
        call = {
            "id": f"call_{step}",
            "type": "function",
            "function": {"name": "lookup", "arguments": arguments},
        }
        message: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [call]}
        finish = "tool_calls"
    else:
        message, finish = {"role": "assistant", "content": "The archive is summarised."}, "stop"
    return {
        "id": f"chatcmpl-{step}",
        "object": "chat.completion",
        "model": contenders.MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 200 + 420 * step,
            "completion_tokens": 24,
            "total_tokens": 224 + 420 * step,
        },
    }


def _events(step: int) -> bytes:
    """The same answer as a stream of chunks: role, the call's id and name, its arguments,
    the finish, the usage, [DONE] (one read, as the simulator's arrive on loopback)."""
    body = _body(step)
    message, finish = body["choices"][0]["message"], body["choices"][0]["finish_reason"]

    def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    for call in message.get("tool_calls") or []:
        fn = call["function"]
        head = {"index": 0, "id": call["id"], "type": "function", "function": {"name": fn["name"]}}
        chunks.append(chunk({"tool_calls": [head]}))
        chunks.append(chunk({"tool_calls": [{"index": 0, "function": fn}]}))
    if message["content"]:
        chunks.append(chunk({"content": message["content"]}))
    chunks.append(chunk({}, finish))
    chunks.append({"choices": [], "usage": body["usage"]})
    events = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    return events + b"data: [DONE]\n\n"


class _Response:
    __slots__ = ("_raw", "headers")
    status = 200

    def __init__(self, raw: bytes, stream: bool) -> None:
        self._raw = raw
        self.headers = {"content-type": "text/event-stream" if stream else "application/json"}

    async def read(self) -> bytes:
        return self._raw

    async def iter_bytes(self) -> Any:
        yield self._raw


class _Answer:
    """One POST answered at once: the body for the step the request is at."""

    __slots__ = ("_body", "_transport")

    def __init__(self, transport: MemoryTransport, body: bytes) -> None:
        self._transport = transport
        self._body = body

    async def __aenter__(self) -> _Response:
        return self._transport.answer(self._body)

    async def __aexit__(self, *exc_info: object) -> None:
        pass


class MemoryTransport:
    """A ``Transport`` that answers from memory: the step is the number of tool results in the
    request (one C count over the body; the hand-written loop pays the same)."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.answers = [_events(n) if stream else orjson.dumps(_body(n)) for n in range(STEPS + 1)]

    def answer(self, body: bytes) -> _Response:
        return _Response(self.answers[_step_of(body)], self.stream)

    def post(self, url: str, headers: Any, body: bytes, *, timed: bool = False) -> _Answer:
        return _Answer(self, body)

    async def aclose(self) -> None:
        pass


def _step_of(body: bytes) -> int:
    return min(body.count(b'"role":"tool"'), STEPS)


def floor(stream: bool) -> Callable[[], Awaitable[int]]:
    """The hand-written loop of bench/contenders.py over the same answers."""
    transport = MemoryTransport(stream)

    async def call(messages: list[dict[str, Any]]) -> dict[str, Any]:
        raw = transport.answers[_step_of(contenders._floor_body(messages, stream))]
        if stream:
            assembler = contenders._Assembler()
            assembler.feed(raw)
            return assembler.message()
        return orjson.loads(raw)["choices"][0]["message"]  # type: ignore[no-any-return]

    return contenders._floor_loop(call)


def agentloop(stream: bool) -> Callable[[], Awaitable[int]]:
    agent = contenders.agentloop_agent(
        "http://127.0.0.1:9/v1", stream=stream, transport=MemoryTransport(stream)
    )
    agent.model.context_window = 262_144  # as the simulator's /models says

    async def run() -> int:
        result = await agent.run(contenders.TASK)
        if not result.ok or len(result.steps) != STEPS + 1:
            raise RuntimeError(f"agentloop run ended {result.stop_reason}: {result.error}")
        return len(result.steps)

    return run


# -- the parts, switched off ---------------------------------------------------------------------
class _NoWait:
    cancelled_caught = False

    def __enter__(self) -> _NoWait:
        return self

    def __exit__(self, *exc_info: object) -> bool:
        return False

    def until(self, deadline: float) -> _NoWait:
        return self

    def close(self) -> None:
        pass


def _without(part: str) -> list[Any]:
    """The patches that switch ``part`` off (each keeps the run's outcome the same here)."""
    from agentloop import _loop, tools
    from agentloop.models import openai

    async def invoke(self: Any, target: Any, raw: str) -> Any:
        return tools.ToolOutcome(await target.fn(**json.loads(raw)), True)

    async def manage(self: Any, number: int) -> None:
        pass

    async def answer(self: Any, record: Any, call: Any, outcome: Any, content: str) -> None:
        self.state.messages.append(_loop._tool_message(call, content))

    def fit(self: Any, kind: Any, prompt: int, wanted: Any = None, pending: Any = None) -> Any:
        return 4096, _loop._FITS

    nothing = _NoWait()
    parts: dict[str, list[Any]] = {
        "deadlines": [
            mock.patch.object(openai, "watchdog", lambda: nothing),
            mock.patch.object(tools, "watchdog", lambda: nothing),
        ],
        "estimates": [
            mock.patch.object(openai.OpenAIModel, "estimate_tokens", lambda s, m, t=(): 100)
        ],
        "budget fit": [mock.patch.object(_loop.Run, "_fit", fit)],
        "context": [mock.patch.object(_loop.Run, "_manage", manage)],
        "tool pipeline": [mock.patch.object(tools.Toolbox, "_invoke", invoke)],
        "tool records": [
            mock.patch.object(
                _loop, "prepare_calls", lambda message, step: list(message.get("tool_calls") or ())
            ),
            mock.patch.object(_loop.Run, "_shape", lambda self, call, content: content),
            mock.patch.object(_loop.Run, "_answer", answer),
        ],
    }
    if part == "all of these":
        return [p for patches in parts.values() for p in patches]
    return parts[part]


PARTS = (
    "deadlines",
    "estimates",
    "budget fit",
    "context",
    "tool pipeline",
    "tool records",
    "all of these",
)


@contextlib.contextmanager
def _switched_off(part: str | None) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for patch in _without(part) if part else []:
            stack.enter_context(patch)
        yield


async def _per_call(run: Callable[[], Awaitable[int]], runs: int) -> float:
    """CPU µs per model call over ``runs`` runs."""
    calls = 0
    start = time.process_time()
    for _ in range(runs):
        calls += await run()
    return (time.process_time() - start) / calls * 1e6


async def measure(stream: bool, runs: int, repeat: int = 5) -> dict[str, Any]:
    """The floor, agentloop, and agentloop with each part off: ``repeat`` rounds, each config
    once per round (so a busy moment of the machine hits them alike), the best of each kept."""
    configs: list[tuple[str, Callable[[], Awaitable[int]]]] = [
        ("floor", floor(stream)),
        ("agentloop", agentloop(stream)),
    ]
    configs += [(part, agentloop(stream)) for part in PARTS]
    best = {name: float("inf") for name, _ in configs}
    for round_ in range(repeat + 1):
        for name, run in configs:
            part = name if name in PARTS else None
            with _switched_off(part):
                if round_ == 0:
                    await run()  # warm-up: imports, first-call caches, calibration
                    continue
                best[name] = min(best[name], await _per_call(run, runs))
    whole = best["agentloop"]
    return {
        "stream": stream,
        "floor_us": best["floor"],
        "agentloop_us": whole,
        "parts_us": {part: whole - best[part] for part in PARTS},
    }


def render(row: dict[str, Any]) -> str:
    head = "streamed" if row["stream"] else "non-streamed"
    extra = row["agentloop_us"] - row["floor_us"]
    rows = [
        ["hand-written loop (floor)", f"{row['floor_us']:.1f}", ""],
        ["agentloop", f"{row['agentloop_us']:.1f}", f"+{extra:.1f} over the floor"],
    ]
    rows += [
        [f"  of which {part}", f"{cost:.1f}", f"{cost / extra:.0%} of what agentloop adds"]
        for part, cost in row["parts_us"].items()
    ]
    return f"{head}, CPU µs per model call without HTTP:\n" + table(["", "µs/call", ""], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench layer", description=__doc__)
    parser.add_argument("--runs", type=int, default=100, help="runs per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (the best is kept)")
    parser.add_argument("--stream", action="store_true", help="streamed answers only")
    parser.add_argument("--both", action="store_true", help="non-streamed and streamed")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    modes = [False, True] if args.both else [args.stream]
    rows = []
    for stream in modes:
        row = asyncio.run(measure(stream, args.runs, args.repeat))
        print(render(row), flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
