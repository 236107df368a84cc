from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agentloop.models import KimiModel
from agentloop.sim import SimConfig, SimServer

from .postgres import postgres_server, postgres_url  # noqa: F401 - the Postgres fixtures

# The project's shared documents sit beside the checkout (../shared); override for odd layouts.
SHARED = Path(os.environ.get("AGENTLOOP_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def shared_missing(path: Path) -> str | None:
    """Why the tests that read ``path`` (inside the shared folder) cannot run, or None."""
    if path.is_dir():
        return None
    where = (
        f"AGENTLOOP_SHARED={os.environ['AGENTLOOP_SHARED']}"
        if "AGENTLOOP_SHARED" in os.environ
        else "the default, ../shared beside this checkout"
    )
    return (
        f"{path} is missing: these tests read the project's shared documents (the `shared` folder "
        f"with conformance/walle; looked in {where}). Put that folder beside the checkout or set "
        "AGENTLOOP_SHARED=/path/to/shared"
    )


def require_shared(path: Path) -> None:
    """Skip a test whose shared folder is missing; fail instead when AGENTLOOP_SHARED names a
    folder explicitly (as CI does), so a wrong path never passes silently."""
    reason = shared_missing(path)
    if reason is None:
        return
    if "AGENTLOOP_SHARED" in os.environ:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say once, after the run, why tests were skipped for want of the shared folder."""
    reasons = {
        str(report.longrepr[2])
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and "AGENTLOOP_SHARED" in str(report.longrepr[2])
    }
    for reason in sorted(reasons):
        terminalreporter.write_line(f"skipped: {reason.removeprefix('Skipped: ')}", yellow=True)


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


@pytest.fixture(params=["httpx2", "aiohttp"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test of the model clients over each transport: every client built without an
    explicit ``transport=`` gets this one (modules opt in with ``usefixtures("transport")``)."""
    from agentloop.models import openai

    name: str = request.param
    made = openai.make_transport

    def make(transport: Any, *, timeout: float) -> Any:
        return made(name if transport is None else transport, timeout=timeout)

    monkeypatch.setattr(openai, "make_transport", make)
    return name
