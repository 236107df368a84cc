from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agentloop.models import KimiModel
from agentloop.sim import SimConfig, SimServer

# The project's shared documents sit beside the checkout (../shared); override for odd layouts.
SHARED = Path(os.environ.get("AGENTLOOP_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sim_factory() -> AsyncIterator[Callable[..., Any]]:
    """Start simulators on loopback (stopped at the end of the test)."""
    servers: list[SimServer] = []

    async def start(**config: Any) -> SimServer:
        server = SimServer(SimConfig(**config))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def sim(sim_factory: Callable[..., Any]) -> SimServer:
    server: SimServer = await sim_factory()
    return server


def kimi(sim: SimServer, **kwargs: Any) -> KimiModel:
    kwargs.setdefault("rpm", None)
    return KimiModel(api_key="sk-sim", base_url=sim.base_url, **kwargs)
