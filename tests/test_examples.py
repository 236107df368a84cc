"""The examples run offline against the simulator, and online through the environment, exactly
as their headers say, with nothing beyond the core package and the examples extra."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py"))


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
    assert json.loads(last)["result"]["stop_reason"] == "completed"


# -- how to run them -----------------------------------------------------------------------------


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_examples_need_only_the_core_and_the_examples_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "examples" in extras, 'pyproject.toml needs an "examples" extra'
    allowed = {_requirement_name(r) for r in [*project["dependencies"], *extras["examples"]]}
    distributions = importlib.metadata.packages_distributions()
    for name in NAMES:
        tree = ast.parse((EXAMPLES / f"{name}.py").read_text())
        modules = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for a in n.names
        }
        modules |= {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and not n.level
        }
        for module in modules - set(sys.stdlib_module_names) - {"agentloop", "agentloop_tools"}:
            needs = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
            assert needs & allowed, (
                f"examples/{name}.py imports {module}, not in core or [examples]"
            )


def header(name: str) -> str:
    doc = ast.get_docstring(ast.parse((EXAMPLES / f"{name}.py").read_text()))
    assert doc, f"examples/{name}.py has no header"
    return doc


@pytest.mark.parametrize("name", NAMES)
def test_each_example_header_says_how_to_run_it_offline_and_online(name: str) -> None:
    doc = header(name)
    assert re.search(rf"Offline.*:\n\n    python examples/{name}\.py\n", doc, re.DOTALL), doc
    assert f"\n    MOONSHOT_API_KEY=sk-... python examples/{name}.py --online\n" in doc, doc
    assert "AGENTLOOP_OFFLINE" not in (EXAMPLES / f"{name}.py").read_text()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOONSHOT_", "AGENTLOOP_"))}
    return env | extra


def _run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = command.split()
    prefix = [a for a in args if "=" in a and not a.startswith("-")]
    args = [sys.executable if a == "python" else a for a in args if a not in prefix]
    return subprocess.run(
        args,
        cwd=ROOT,
        env=env | dict(a.split("=", 1) for a in prefix),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    from agentloop.sim import SimServer

    with SimServer().run_in_thread() as sim:
        yield sim.base_url


def _serve_and_post(command: str, env: dict[str, str]) -> list[str]:
    """Start the web service as the header says (on a free port), POST a task, stop it."""
    import httpx2

    port = _free_port()
    args = [sys.executable if a == "python" else a for a in command.split()]
    process = subprocess.Popen(
        [*args, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                assert process.poll() is None, process.communicate()[1]
                time.sleep(0.05)
        with (
            httpx2.Client(timeout=30) as client,
            client.stream("POST", f"{base}/run", json={"task": "count hello world"}) as r,
        ):
            assert r.status_code == 200
            return [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("name", NAMES)
def test_each_example_runs_offline_as_its_header_says(name: str) -> None:
    command = f"python examples/{name}.py"
    if name == "web_service":
        names = _serve_and_post(command, _env())
        assert names[0] == "RunStarted" and names[-1] == "RunFinished"
        return
    done = _run(command, _env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()


@pytest.mark.parametrize("name", NAMES)
def test_each_example_runs_online_from_the_environment(name: str, sim_url: str) -> None:
    """``--online`` takes the key (and base URL) from the environment: here the simulator's."""
    env = _env(MOONSHOT_BASE_URL=sim_url)
    command = f"MOONSHOT_API_KEY=sk-sim python examples/{name}.py --online"
    if name == "web_service":
        names = _serve_and_post(command.split(" ", 1)[1], env | {"MOONSHOT_API_KEY": "sk-sim"})
        assert names[-1] == "RunFinished"
        return
    if name == "batch":
        command += " --tasks 3"  # three tasks keep a real 50 RPM limiter from waiting
    done = _run(command, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed" in done.stdout or "'finished': 3" in done.stdout, done.stdout


def test_web_service_without_uvicorn_says_what_to_install() -> None:
    code = (
        "import runpy, sys; sys.modules['uvicorn'] = None; sys.argv = ['examples/web_service.py']; "
        "runpy.run_path('examples/web_service.py', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert 'pip install -e ".[examples]"' in done.stderr
    assert "Traceback" not in done.stderr
