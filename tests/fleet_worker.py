"""One worker of a fleet, in a process of its own, for tests/test_fleet_limit.py.

    python tests/fleet_worker.py BASE_URL LIMIT --rpm N --factor F --requests N

LIMIT is ``local`` (a RateLimiter of this process alone, at the full rpm) or the URL of the
database every worker shares (a DatabaseLimiter). The worker prints READY, waits for a line on
stdin (so the workers start together), sends all its requests at once and prints, as JSON,
the answers, the errors and the time of each admission on the limiter's time scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio

from agentloop.clock import ScaledClock
from agentloop.limits import AdmissionPermit, Limiter, Permit, RateLimiter
from agentloop.limits_db import DatabaseLimiter, DatabasePermit
from agentloop.models import KimiModel, ModelRequest, assemble

KEY = "sk-sim"


class Recording:
    """The limiter, noting when each request was admitted."""

    def __init__(self, inner: Limiter) -> None:
        self.inner = inner
        self.admitted: list[float] = []

    async def acquire(self, tokens: int = 0) -> AdmissionPermit:
        permit = await self.inner.acquire(tokens)
        if isinstance(permit, DatabasePermit):
            self.admitted.append(permit.at)
        elif isinstance(permit, Permit):
            self.admitted.append(permit.charge.at)
        return permit


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("base_url")
    p.add_argument("limit")
    p.add_argument("--rpm", type=int, required=True)
    p.add_argument("--factor", type=float, required=True)
    p.add_argument("--requests", type=int, required=True)
    args = p.parse_args()
    clock = ScaledClock(args.factor)
    inner: Limiter
    if args.limit == "local":
        inner = RateLimiter(args.rpm, clock=clock)
    else:
        inner = DatabaseLimiter(args.limit, KEY, base_url=args.base_url, rpm=args.rpm, clock=clock)
    limiter = Recording(inner)
    model = KimiModel(
        api_key=KEY, base_url=args.base_url, thinking=False, clock=clock, limiter=limiter
    )
    answers: list[str] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        request = ModelRequest([{"role": "user", "content": f"q{i}"}])
        try:
            answers.append((await assemble(model.stream(request))).text)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    async def run() -> None:
        print("READY", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        async with anyio.create_task_group() as group:
            for i in range(args.requests):
                group.start_soon(one, i)
        await model.aclose()

    anyio.run(run)
    report: dict[str, Any] = {"answers": answers, "errors": errors, "admitted": limiter.admitted}
    if isinstance(inner, DatabaseLimiter):
        report["transactions"] = inner.transactions
        inner.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
