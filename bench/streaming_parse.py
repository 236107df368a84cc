"""Streaming parse: MB/s through the SSE decoder, chunk parsing and delta assembly.

The stream is a long reasoning trace (chunks of 24 characters, as Kimi sends) with tool-call
fragments interleaved, cut into 16 KB network reads. Compared in the same run with the floor of
any parser: splitting the same bytes into lines and ``json.loads``-ing each data line.

    python -m bench streaming_parse [--mb 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from agentloop.models.base import Assembler
from agentloop.models.stream import DONE, SSEDecoder, chunk_deltas, parse_chunk

READ = 16 * 1024


def make_stream(megabytes: float) -> bytes:
    events: list[bytes] = []
    size = 0
    n = 0
    text = "Considering which source lists the harbour ledger and its dates. "
    while size < megabytes * 1e6:
        n += 1
        piece = text[(n * 7) % 40 :][:24]
        delta: dict[str, Any] = {"reasoning_content": piece}
        if n % 50 == 0:  # a tool-call fragment every 50 chunks
            call = n // 50
            delta = {"tool_calls": [{"index": call % 3, "function": {"arguments": '{"q": "x'}}]}
            if call % 10 == 0:
                delta["tool_calls"][0].update(id=f"functions.lookup:{call}", type="function")
                delta["tool_calls"][0]["function"]["name"] = "lookup"
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta}],
        }
        event = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        events.append(event)
        size += len(event)
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def ours(stream: bytes) -> int:
    decoder = SSEDecoder()
    assembler = Assembler()
    out: list[Any] = []
    for start in range(0, len(stream), READ):
        for event in decoder.feed(stream[start : start + READ]):
            if event == DONE:
                break
            chunk_deltas(parse_chunk(event), out)
        for delta in out:
            assembler.feed(delta)
        out.clear()
    return len(assembler.finish().message.get("reasoning_content") or "")


def floor(stream: bytes) -> int:
    buffer = b""
    count = 0
    for start in range(0, len(stream), READ):
        buffer += stream[start : start + READ]
        lines = buffer.split(b"\n")
        buffer = lines.pop()
        for line in lines:
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                json.loads(line[6:])
                count += 1
    return count


def best_of(fn: Any, stream: bytes, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(stream)
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(megabytes: float) -> dict[str, Any]:
    stream = make_stream(megabytes)
    mb = len(stream) / 1e6
    t_ours = best_of(ours, stream)
    t_floor = best_of(floor, stream)
    return {
        "megabytes": mb,
        "agentloop_mb_s": mb / t_ours,
        "floor_mb_s": mb / t_floor,
        "ratio": t_floor / t_ours,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench streaming_parse", description=__doc__)
    parser.add_argument("--mb", type=float, default=8.0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    row = measure(args.mb)
    print(f"stream of {row['megabytes']:.1f} MB (24-char reasoning chunks, tool-call fragments)")
    print(f"  agentloop (SSE decode + parse + deltas + assembly): {row['agentloop_mb_s']:.1f} MB/s")
    print(f"  floor (split lines + json.loads only):               {row['floor_mb_s']:.1f} MB/s")
    print(f"  agentloop speed / floor speed: {row['ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(row, out, indent=1)
    return 0
