"""The simulator in its own process, for benchmarks: ``python -m bench.simproc '<json config>'``.

Prints ``READY <port>`` once listening and serves until stdin closes. Config keys: ``steps``
(tool-calling steps before the answer), ``latency`` (seconds to first byte), ``rpm``, ``tpm``,
``concurrency``, ``clock_factor`` (a ScaledClock shared with the client by factor), ``models``
(model name -> context window, overriding the profile's).
"""

from __future__ import annotations

import asyncio
import json
import sys

from agentloop.clock import MonotonicClock, ScaledClock
from agentloop.sim import SimConfig, SimServer, ToolLoopPolicy


async def serve(options: dict[str, object]) -> None:
    factor = options.get("clock_factor")
    config = SimConfig(
        policy=ToolLoopPolicy(steps=int(options.get("steps", 19)), reasoning_chars=200),  # type: ignore[call-overload]
        latency=float(options.get("latency", 0.0)),  # type: ignore[arg-type]
        rpm=options.get("rpm"),  # type: ignore[arg-type]
        tpm=options.get("tpm"),  # type: ignore[arg-type]
        max_concurrency=options.get("concurrency"),  # type: ignore[arg-type]
        clock=ScaledClock(float(factor)) if factor else MonotonicClock(),  # type: ignore[arg-type]
        chunk_chars=int(options.get("chunk_chars", 24)),  # type: ignore[call-overload]
        models=options.get("models"),  # type: ignore[arg-type]
    )
    server = SimServer(config)
    server.stats.keep_bodies = False
    await server.start()
    print(f"READY {server.port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    print(
        json.dumps(
            {
                "rate_limited": server.stats.rate_limited,
                "completions": server.stats.completions,
                "by_status": server.stats.by_status,
            }
        ),
        flush=True,
    )
    await server.stop()


if __name__ == "__main__":
    asyncio.run(serve(json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}")))
