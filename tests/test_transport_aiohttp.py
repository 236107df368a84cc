"""The aiohttp transport's own behaviour (the fast extra): chosen by name or instance, a session
per event loop closed on its own loop, and a clear error without aiohttp. The model clients' HTTP
tests run over it too (the ``transport`` fixture in conftest)."""

from __future__ import annotations

import sys

import anyio
import pytest

from agentloop import Agent, KimiModel
from agentloop.errors import ConfigurationError, NothingListeningError
from agentloop.models.transport import Httpx2Transport, make_transport
from agentloop.models.transport_aiohttp import AiohttpTransport
from agentloop.sim import SimServer

from .test_event_loops import BODY, HEADERS, in_threads, no_resource_warnings


@pytest.fixture
def sim() -> object:
    with SimServer().run_in_thread() as server:
        yield server


async def post_once(transport: AiohttpTransport, url: str) -> int:
    async with transport.post(url, HEADERS, BODY) as response:
        await response.read()
        return response.status


def test_chosen_by_name_or_instance() -> None:
    assert isinstance(KimiModel(api_key="k", transport="aiohttp")._transport, AiohttpTransport)
    assert isinstance(KimiModel(api_key="k", transport="httpx2")._transport, Httpx2Transport)
    assert isinstance(KimiModel(api_key="k")._transport, Httpx2Transport)  # the default
    mine = AiohttpTransport()
    model = KimiModel(api_key="k", transport=mine)
    assert model._transport is mine and not model._owns_transport
    assert KimiModel(api_key="k", transport="aiohttp")._owns_transport
    with pytest.raises(ConfigurationError, match="unknown transport 'curl'"):
        make_transport("curl", timeout=1.0)


def test_without_aiohttp_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp now fails
    monkeypatch.delitem(sys.modules, "agentloop.models.transport_aiohttp")
    with pytest.raises(ConfigurationError, match=r"pip install 'agentloop\[fast\]'"):
        KimiModel(api_key="k", transport="aiohttp")


def test_a_session_per_loop_closed_on_its_own_loop(sim: SimServer) -> None:
    transport = AiohttpTransport()
    url = f"{sim.base_url}/chat/completions"
    seen = []

    async def main() -> None:
        for _ in range(2):  # the second request reuses the first's pooled connection
            assert await post_once(transport, url) == 200
        seen.append(transport._held)

    with no_resource_warnings():
        for _ in range(3):
            anyio.run(main)
    assert len({id(h.session) for h in seen}) == 3
    assert all(h.session.closed and h.loop is None for h in seen)
    assert sim.stats.connections == 3


def test_aclose_closes_this_loops_session_and_a_later_request_rebuilds(sim: SimServer) -> None:
    transport = AiohttpTransport()
    url = f"{sim.base_url}/chat/completions"

    async def main() -> None:
        assert await post_once(transport, url) == 200
        first = transport._held.session
        await transport.aclose()
        assert first.closed
        assert await post_once(transport, url) == 200
        assert transport._held.session is not first
        await transport.aclose()
        await transport.aclose()  # idempotent

    with no_resource_warnings():
        anyio.run(main)


def test_in_two_threads(sim: SimServer) -> None:
    transport = AiohttpTransport()
    url = f"{sim.base_url}/chat/completions"
    statuses: list[int] = []

    async def one() -> None:
        statuses.append(await post_once(transport, url))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(one)

    def work(_: int) -> None:
        for _ in range(3):
            anyio.run(main)

    with no_resource_warnings():
        in_threads(2, work)
    assert statuses == [200] * 24


def test_run_sync_by_name(sim: SimServer) -> None:
    agent = Agent(KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=None, transport="aiohttp"))
    with no_resource_warnings():
        results = [agent.run_sync("hi") for _ in range(3)]
    assert [r.stop_reason for r in results] == ["completed"] * 3


def test_refused_and_headers_never_in_the_message() -> None:
    transport = AiohttpTransport()

    async def main() -> None:
        with pytest.raises(NothingListeningError, match=r"127\.0\.0\.1:9") as info:
            await post_once(transport, "http://127.0.0.1:9/v1/chat/completions")
        assert "sk-sim" not in str(info.value)
        await transport.aclose()

    anyio.run(main)


def test_asyncio_only() -> None:
    pytest.importorskip("trio")
    transport = AiohttpTransport()

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="asyncio only"):
            await post_once(transport, "http://127.0.0.1:9/v1/chat/completions")

    anyio.run(main, backend="trio")
