"""The examples run offline against the simulator."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.anyio
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_browse_agent_answers_from_the_stdlib_docs() -> None:
    browse = load("browse_agent")
    result = await browse.answer("How do I compute the median of a list of numbers?", True, False)
    assert result.stop_reason == "completed"
    assert "statistics.median" in result.output
    names = [c.name for s in result.steps for c in s.tool_calls]
    assert names[0] == "search" and "open" in names


async def test_custom_tool_example_shows_validation_errors_then_succeeds() -> None:
    example = load("custom_tool")
    result = await example.run(False, False)
    assert result.output == "120 EUR is 19440.00 JPY."
    first = result.steps[0].tool_calls[0]
    assert not first.ok and first.error == "invalid_arguments"
    rejected = next(m["content"] for m in result.messages if m["role"] == "tool")
    assert "/amount: -5 is less than the minimum of 0" in rejected
    assert "/source: 'GBP' is not one of" in rejected


async def test_batch_example_stays_under_the_rate_limit(tmp_path: Path) -> None:
    example = load("batch")
    out = tmp_path / "done.jsonl"
    summary = await example.run_batch([f"What is {n} squared?" for n in range(60)], False, out)
    assert summary["finished"] == 60 and summary["requests"] == 120
    assert summary["rate_limited_by_server"] == 0
    assert len(out.read_text().splitlines()) == 60


def test_web_service_example_streams_events_over_http() -> None:
    import socket
    import threading
    import time

    import httpx2
    import uvicorn

    from agentloop import KimiModel
    from agentloop.sim import SimServer

    example = load("web_service")
    with SimServer().run_in_thread() as sim:
        app = example.make_app(KimiModel(api_key="sk-sim", base_url=sim.base_url))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            for _ in range(200):
                if server.started:
                    break
                time.sleep(0.02)
            base = f"http://127.0.0.1:{port}"
            names: list[str] = []
            last = ""
            with httpx2.Client(timeout=30) as client:
                with client.stream("POST", f"{base}/run", json={"task": "count hello world"}) as r:
                    assert r.status_code == 200
                    assert r.headers["content-type"] == "text/event-stream"
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            names.append(line[7:])
                        elif line.startswith("data: "):
                            last = line[6:]
                assert client.post(f"{base}/run", content=b"nope").status_code == 400
                assert client.get(f"{base}/").status_code == 404
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    assert names[0] == "RunStarted" and names[-1] == "RunFinished"
    assert "ToolCallStarted" in names and "ReasoningDelta" in names
    import json

    assert json.loads(last)["result"]["stop_reason"] == "completed"
