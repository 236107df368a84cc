"""MCP servers as tool sources (agentloop.mcp), against real servers: mcp-server-time and
mcp-server-git from PyPI over stdio, and a server written here with the SDK, run as a process
over stdio and over streamable HTTP on 127.0.0.1. The runs are driven by the simulator over HTTP
(scripted turns, or ToolLoopPolicy calling whatever it is offered)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentloop import Agent
from agentloop import events as ev
from agentloop.errors import ConfigurationError
from agentloop.mcp import MCPConnectionError, MCPServer, tool_name
from agentloop.models import mfjs
from agentloop.models.kimi import TOOL_NAME
from agentloop.sim import ScriptedPolicy, SimConfig, SimServer, ToolCall, ToolLoopPolicy, Turn
from agentloop.tools import Tool, Toolbox
from agentloop.transcript import TranscriptWriter
from tests.conftest import kimi

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
HEADER_SECRET = "hdr-secret-4f9a1c7e"
ENV_SECRET = "env-secret-7d2e0b3a"

# The server the tests write with the SDK. It counts its calls, so a test can prove a call never
# reached it; with --http PORT it serves streamable HTTP and wants the Authorization header.
SERVER = '''
import base64, os, sys
import anyio
from pydantic import BaseModel, Field
from mcp_types import EmbeddedResource, ImageContent, ResourceLink, TextResourceContents
from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("fixture")
CALLS = {}

def counted(fn):
    def wrapper(*args, **kwargs):
        CALLS[fn.__name__] = CALLS.get(fn.__name__, 0) + 1
        return fn(*args, **kwargs)
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    wrapper.__signature__ = __import__("inspect").signature(fn)
    return wrapper

class Task(BaseModel):
    """A piece of work."""
    title: str
    hours: int = Field(gt=0)

@app.tool()
@counted
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b

@app.tool()
@counted
def fail(reason: str) -> str:
    """Always fails."""
    from mcp.server.mcpserver.exceptions import ToolError
    raise ToolError(reason)

@app.tool()
@counted
def plan(task: Task = Field(description="the task to plan")) -> str:
    """Plan a task."""
    return f"planned {task.title} in {task.hours}h"

@app.tool()
def media() -> list:
    """Returns an image, a resource and a link."""
    return [
        ImageContent(data=base64.b64encode(b"x" * 300).decode(), mime_type="image/png"),
        EmbeddedResource(resource=TextResourceContents(
            uri="file:///notes.txt", mime_type="text/plain", text="the notes")),
        ResourceLink(uri="file:///big.csv", name="big.csv", mime_type="text/csv"),
    ]

@app.tool()
async def slow(seconds: float) -> str:
    """Sleep."""
    await anyio.sleep(seconds)
    return "slept"

@app.tool()
def pid() -> int:
    """This process's id."""
    return os.getpid()

@app.tool()
def secrets(ctx: Context) -> str:
    """Echo what the server was given: an env var and the Authorization header."""
    headers = ctx.headers or {}
    return f"env={os.environ.get('FIXTURE_TOKEN')} auth={headers.get('authorization')}"

@app.tool()
async def grow(ctx: Context) -> str:
    """Add a tool and say so."""
    app.add_tool(lambda: "fresh result", name="fresh", description="A new tool.")
    await ctx.notify_tools_changed()
    return "grown"

@app.tool()
def calls() -> dict:
    """How often each counted tool ran."""
    return dict(CALLS)

app.add_tool(lambda: "odd", name="odd.name", description="A name Kimi refuses.")
if os.environ.get("FIXTURE_COLLIDE"):
    app.add_tool(lambda: "odd", name="odd name", description="The same name, once fixed.")

if len(sys.argv) > 2 and sys.argv[1] == "--http":
    import uvicorn
    inner = app.streamable_http_app()

    async def guarded(scope, receive, send):
        if scope["type"] == "http":
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            if auth != "Bearer " + os.environ["FIXTURE_AUTH"]:
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorised"})
                return
        await inner(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=int(sys.argv[2]), log_level="error")
else:
    app.run()
'''


@pytest.fixture(scope="module")
def fixture_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "fixture_server.py"
    path.write_text(SERVER)
    return path


@pytest.fixture(scope="module")
def http_url(fixture_server: Path) -> Iterator[str]:
    """The fixture server over streamable HTTP on loopback, for the whole module."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "FIXTURE_AUTH": HEADER_SECRET}
    process = subprocess.Popen(
        [sys.executable, str(fixture_server), "--http", str(port)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(400):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                assert process.poll() is None, "the fixture server exited"
                time.sleep(0.025)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=10)


def http_server(url: str, **options: Any) -> MCPServer:
    return MCPServer.http(url, headers={"Authorization": f"Bearer {HEADER_SECRET}"}, **options)


def stdio_fixture(path: Path, **options: Any) -> MCPServer:
    env = {"FIXTURE_TOKEN": ENV_SECRET, **options.pop("env", {})}
    return MCPServer.stdio(sys.executable, [str(path)], env=env, **options)


def time_server(**options: Any) -> MCPServer:
    return MCPServer.stdio(sys.executable, ["-m", "mcp_server_time"], **options)


def scripted(*steps: list[ToolCall] | str) -> ScriptedPolicy:
    return ScriptedPolicy(
        [Turn(content=s) if isinstance(s, str) else Turn(tool_calls=s) for s in steps]
    )


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(name, json.dumps(arguments))


def tool_messages(result: Any) -> list[str]:
    return [m["content"] for m in result.messages if m["role"] == "tool"]


def children(command_part: str) -> list[int]:
    """This process's child processes whose command line holds ``command_part``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and command_part in cmdline:
            found.append(int(entry.name))
    return found


# -- names -----------------------------------------------------------------------------------


def test_names_are_made_valid_for_kimi_and_kept_apart() -> None:
    assert tool_name("get_current_time") == "get_current_time"
    assert tool_name("status", "git") == "git_status"
    assert tool_name("odd.name") == "odd_name"
    assert tool_name("1st") == "_1st"
    assert tool_name("ls") == "ls_"
    assert tool_name("héllo wörld") == "h_llo_w_rld"
    long_a, long_b = tool_name("x" * 70 + "a"), tool_name("x" * 70 + "b")
    assert len(long_a) == 64 and long_a != long_b
    for name in ("odd.name", "1st", "ls", "x" * 90, "-", "", "a/b:c"):
        assert TOOL_NAME.match(tool_name(name)), name
    with pytest.raises(ConfigurationError, match="prefix"):
        MCPServer.stdio("x", prefix="bad prefix")
    with pytest.raises(ConfigurationError, match="http"):
        MCPServer.http("ftp://example.org")


async def test_a_name_two_tools_would_share_is_a_configuration_error(fixture_server: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"'odd\.name' and 'odd name'.*'odd_name'"):
        async with stdio_fixture(fixture_server, env={"FIXTURE_COLLIDE": "1"}):
            pass
    async with stdio_fixture(
        fixture_server, env={"FIXTURE_COLLIDE": "1"}, exclude=["odd name"]
    ) as server:
        assert "odd_name" in [t.name for t in server.tools()]


async def test_two_servers_with_the_same_tools_need_a_prefix() -> None:
    async with time_server() as one, time_server(prefix="tz") as two:
        with pytest.raises(ConfigurationError, match="prefix="):
            Agent(kimi(SimServer()), [*one.tools(), *one.tools()])
        assert [t.name for t in two.tools()] == ["tz_get_current_time", "tz_convert_time"]
        agent = Agent(kimi(SimServer()), [*one.tools(), *two.tools()])
        assert len(agent.tools) == 4


# -- real servers from PyPI, over stdio --------------------------------------------------------


async def test_time_server_lists_answers_and_reports_is_error(sim_factory: Any) -> None:
    policy = scripted(
        [call("get_current_time", timezone="Asia/Tokyo")],
        [call("get_current_time", timezone="Mars/Olympus")],
        "done",
    )
    sim = await sim_factory(policy=policy)
    async with time_server() as server:
        tools = server.tools()
        assert [t.name for t in tools] == ["get_current_time", "convert_time"]
        assert {t.source for t in tools} == {"mcp:mcp-time"}
        assert tools[0].toolset is server and tools[0].repeat_safe  # readOnlyHint
        result = await Agent(kimi(sim), tools).run("what time is it in Tokyo?")
    assert result.stop_reason == "completed"
    first, second = (s.tool_calls[0] for s in result.steps[:2])
    assert first.ok and first.error is None
    answer, refusal = tool_messages(result)
    assert json.loads(answer)["timezone"] == "Asia/Tokyo"
    assert not second.ok and second.error == "tool_error"
    assert "Mars/Olympus" in refusal
    # the wire had the normalised schema: no title keywords
    offered = sim.stats.bodies[0]["tools"][0]["function"]
    assert offered["name"] == "get_current_time" and "title" not in json.dumps(offered)
    assert "title" in json.dumps(tools[0].parameters)  # the server's own, for validation


async def test_git_server_on_a_temporary_repository(sim_factory: Any, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    await anyio.run_process(["git", "init", "-q", str(repo)])
    (repo / "notes.txt").write_text("hello\n")
    policy = scripted(
        [call("repo_git_status", repo_path=str(repo))],
        [call("repo_git_status")],  # repo_path is required: refused before the call
        "done",
    )
    sim = await sim_factory(policy=policy)
    server = MCPServer.stdio(
        sys.executable, ["-m", "mcp_server_git", "--repository", str(repo)], prefix="repo"
    )
    async with server:
        names = [t.name for t in server.tools()]
        assert "repo_git_status" in names and "repo_git_commit" in names
        commit = next(t for t in server.tools() if t.name == "repo_git_commit")
        assert not commit.repeat_safe  # it acts: not run again when a durable run resumes
        result = await Agent(kimi(sim), server.tools()).run("what is uncommitted?")
    status, refused = tool_messages(result)
    assert "notes.txt" in status and "Untracked" in status
    assert result.steps[1].tool_calls[0].error == "invalid_arguments"
    assert "'repo_path' is a required property" in refused


async def test_tool_loop_policy_drives_every_offered_tool(sim_factory: Any) -> None:
    """The simulator calls whatever it is offered, with arguments built from the wire schema."""
    sim = await sim_factory(policy=ToolLoopPolicy(steps=2))
    async with time_server() as server:
        result = await Agent(kimi(sim), server.tools()).run("Etc/UTC")
    called = [c.name for s in result.steps for c in s.tool_calls]
    assert called == ["get_current_time", "convert_time"]
    assert result.stop_reason == "completed"


async def test_a_killed_server_gives_a_tool_error_then_reconnects(sim_factory: Any) -> None:
    tokyo = call("get_current_time", timezone="Asia/Tokyo")
    sim = await sim_factory(policy=scripted([tokyo], [tokyo], [tokyo], "done"))
    async with time_server() as server:
        agent = Agent(kimi(sim), server.tools())
        killed: list[int] = []
        async with agent.stream("what time is it?") as run:
            async for event in run:
                if isinstance(event, ev.ToolCallFinished) and event.step == 1:
                    killed = children("mcp_server_time")
                    for pid in killed:
                        os.kill(pid, signal.SIGKILL)
                    await anyio.sleep(0.2)  # the pipe closes
        result = run.result
        assert result is not None
        assert len(killed) == 1 and server.connections == 2
        assert children("mcp_server_time") not in ([], killed)  # a new process
    oks = [s.tool_calls[0].ok for s in result.steps[:3]]
    assert oks == [True, False, True]
    assert result.steps[1].tool_calls[0].error == "disconnected"
    assert "disconnected" in tool_messages(result)[1]
    assert "reconnected on the next call" in tool_messages(result)[1]
    assert result.stop_reason == "completed"


# -- the server written here, over stdio -------------------------------------------------------


async def test_a_server_killed_during_a_call_answers_at_once(
    sim_factory: Any, fixture_server: Path
) -> None:
    sim = await sim_factory(policy=scripted([call("slow", seconds=30)], [call("pid")], "done"))
    async with stdio_fixture(fixture_server) as server:
        first_pid = int((await invoke(server, "pid")).content)
        agent = Agent(kimi(sim), server.tools())
        started = time.monotonic()
        async with agent.stream("sleep") as run, anyio.create_task_group() as group:
            async for event in run:
                if isinstance(event, ev.ToolCallStarted) and event.name == "slow":

                    async def kill() -> None:
                        await anyio.sleep(0.3)
                        os.kill(first_pid, signal.SIGKILL)

                    group.start_soon(kill)
        result = run.result
        assert result is not None
    slow_call, pid_call = result.steps[0].tool_calls[0], result.steps[1].tool_calls[0]
    assert not slow_call.ok and slow_call.error == "disconnected"
    assert slow_call.duration_s < 5 and time.monotonic() - started < 15
    assert pid_call.ok and int(tool_messages(result)[1]) != first_pid


async def test_each_call_has_a_timeout(sim_factory: Any, fixture_server: Path) -> None:
    sim = await sim_factory(policy=scripted([call("slow", seconds=10)], [call("pid")], "done"))
    async with stdio_fixture(fixture_server, timeout_s=0.5) as server:
        result = await Agent(kimi(sim), server.tools()).run("sleep")
    timed_out = result.steps[0].tool_calls[0]
    assert not timed_out.ok and timed_out.error == "timeout"
    assert "timed out after 0.5s" in tool_messages(result)[0]
    assert result.steps[1].tool_calls[0].ok  # the connection stays usable


async def test_list_changed_refreshes_the_tools_between_steps(
    sim_factory: Any, fixture_server: Path
) -> None:
    policy = scripted([call("grow")], [call("add", a=1, b=1)], [call("fresh")], "done")
    sim = await sim_factory(policy=policy)
    async with stdio_fixture(fixture_server) as server:
        before = server.generation
        result = await Agent(kimi(sim), server.tools()).run("grow")
        assert server.generation == before + 1
    offered = [[t["function"]["name"] for t in body["tools"]] for body in sim.stats.bodies]
    assert "fresh" not in offered[0]
    assert "fresh" in offered[2]  # the step after the one the notification came in
    assert [s.tool_calls[0].ok for s in result.steps[:3]] == [True, True, True]
    assert tool_messages(result)[2] == "fresh result"


def test_a_toolbox_follows_a_toolset_or_the_subset_it_was_given() -> None:
    class Source:
        def __init__(self) -> None:
            self.generation = 1
            self.listed = [self.make("a"), self.make("b")]

        def make(self, name: str) -> Tool:
            return Tool.from_schema(lambda: name, {"type": "object"}, name=name, toolset=self)

        def tools(self) -> list[Tool]:
            return list(self.listed)

    source = Source()
    whole, subset = Toolbox(source.tools()), Toolbox(source.tools()[:1])
    source.listed = [source.make("a"), source.make("c")]
    assert [s.name for s in whole.specs] == ["a", "b"]  # no change announced yet
    source.generation = 2
    assert [s.name for s in whole.specs] == ["a", "c"] and list(whole.tools) == ["a", "c"]
    assert [s.name for s in subset.specs] == ["a"]


# -- the server written here, over streamable HTTP ---------------------------------------------


async def test_http_server_validates_before_calling(sim_factory: Any, http_url: str) -> None:
    policy = scripted([call("add", a="one", b=2)], [call("add", a=2, b=3)], [call("calls")], "ok")
    sim = await sim_factory(policy=policy)
    async with http_server(http_url) as server:
        assert server.name == "fixture" and server.tools()[0].source == "mcp:fixture"
        counts_before = json.loads((await invoke(server, "calls")).content)
        result = await Agent(kimi(sim), server.tools()).run("add")
    refused, added, counts = tool_messages(result)
    assert result.steps[0].tool_calls[0].error == "invalid_arguments"
    assert "/a: 'one' is not of type 'integer'" in refused
    assert added == "5"  # structured {"result": 5} is not repeated beside the text
    assert json.loads(counts).get("add", 0) == counts_before.get("add", 0) + 1  # once, not twice


async def test_http_server_is_error_and_content_kinds(sim_factory: Any, http_url: str) -> None:
    sim = await sim_factory(policy=scripted([call("fail", reason="no disk")], [call("media")], "."))
    async with http_server(http_url) as server:
        result = await Agent(kimi(sim), server.tools()).run("go")
    failed, media = tool_messages(result)
    record = result.steps[0].tool_calls[0]
    assert not record.ok and record.error == "tool_error" and "no disk" in failed
    assert "[image returned: image/png, about 300 bytes" in media
    assert "[resource file:///notes.txt, text/plain]\nthe notes" in media
    assert "[resource link: file:///big.csv (big.csv, text/csv)]" in media
    assert result.steps[1].tool_calls[0].ok


async def test_http_ref_schema_is_normalised_for_the_wire_and_validated_as_sent(
    sim_factory: Any, http_url: str
) -> None:
    policy = scripted(
        [call("plan", task={"title": "paint", "hours": 0})],  # hours > 0: only the original says
        [call("plan", task={"title": "paint", "hours": 2})],
        "done",
    )
    sim = await sim_factory(policy=policy)
    async with http_server(http_url) as server:
        original = next(t for t in server.tools() if t.name == "plan").parameters
        result = await Agent(kimi(sim), server.tools()).run("plan")
    assert "$defs" in original
    assert original["properties"]["task"].keys() >= {"$ref", "description"}  # kimi-cli #2061
    wire = next(
        t["function"]["parameters"]
        for t in sim.stats.bodies[0]["tools"]
        if t["function"]["name"] == "plan"
    )
    assert "$ref" not in json.dumps(wire) and "exclusiveMinimum" not in json.dumps(wire)
    assert mfjs.check(wire, level="ultra") == []
    assert wire["properties"]["task"]["description"].startswith("the task to plan")
    refused, planned = tool_messages(result)
    assert result.steps[0].tool_calls[0].error == "invalid_arguments"
    assert "/task/hours: 0 is less than or equal to the minimum of 0" in refused
    assert planned == "planned paint in 2h"
    names = [s["function"]["name"] for s in sim.stats.bodies[0]["tools"]]
    assert "odd_name" in names  # 'odd.name' on the server


async def test_secrets_stay_out_of_messages_transcripts_errors_and_logs(
    sim_factory: Any,
    http_url: str,
    fixture_server: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = await sim_factory(policy=scripted([call("secrets")], "done"))
    transcript = tmp_path / "run.jsonl"
    texts: list[str] = []
    async with (
        http_server(http_url) as remote,
        stdio_fixture(fixture_server, prefix="local") as local,
    ):
        texts += [repr(remote), repr(local)]
        echoed = (await invoke(local, "local_secrets")).content
        agent = Agent(kimi(sim), remote.tools())
        writer = TranscriptWriter(str(transcript))
        async with agent.stream("tell me") as run:
            async for event in run:
                writer.write(event)
        writer.close()
        assert run.result is not None
    message = tool_messages(run.result)[0]
    # the header reached the server (redacted whole, or its token: the order is a set's)
    assert re.fullmatch(r"env=None auth=(Bearer )?\[redacted key\]", message), message
    assert echoed == "env=[redacted key] auth=None"  # the env var reached the server
    # a server that refuses the call, and one that cannot be reached, with the secret header
    with pytest.raises(MCPConnectionError) as refused:
        async with MCPServer.http(http_url, headers={"Authorization": f"Bearer {HEADER_SECRET}x"}):
            pass
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/mcp"
    with pytest.raises(MCPConnectionError) as unreachable:
        async with MCPServer.http(dead, headers={"X-Key": HEADER_SECRET}, connect_timeout_s=5):
            pass
    texts += [message, echoed, transcript.read_text(), str(refused.value), str(unreachable.value)]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert HEADER_SECRET not in text and ENV_SECRET not in text, text
    assert "cannot connect to MCP server" in str(refused.value)  # the wrong header: refused


async def invoke(server: MCPServer, name: str, **arguments: Any) -> Any:
    found = next(t for t in server.tools() if t.name == name)
    return await found.invoke(arguments)


# -- the command line ----------------------------------------------------------------------------


def test_cli_run_with_mcp_servers(tmp_path: Path) -> None:
    policy = ToolLoopPolicy(steps=1)
    with SimServer(SimConfig(policy=policy)).run_in_thread() as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOONSHOT_")}
        env["MOONSHOT_API_KEY"] = "sk-sim"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentloop.cli",
                "run",
                "--plain",
                "--base-url",
                sim.base_url,
                "--mcp",
                "python -m mcp_server_time",
                "Etc/UTC",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "-> get_current_time(" in done.stdout
        # the simulator's hint is no timezone: the real server's own error came back
        assert "Invalid timezone" in done.stdout
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentloop.cli",
                "run",
                "--base-url",
                sim.base_url,
                "--mcp",
                "no-such-mcp-server-command",
                "hi",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert bad.returncode == 2
    assert "cannot connect to MCP server" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.anyio
async def test_events_and_spans_name_the_server_a_tool_came_from(sim_factory: Any) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider())  # once per process (another test may have)
    provider = trace.get_tracer_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    sim = await sim_factory(policy=ToolLoopPolicy(steps=1))
    async with MCPServer.stdio(sys.executable, ["-m", "mcp_server_time"], name="time") as server:
        agent = Agent(kimi(sim), [*server.tools()])
        sources = []
        async with agent.stream("what time is it?") as run:
            async for event in run:
                if isinstance(event, ev.ToolCallStarted | ev.ToolCallFinished):
                    sources.append(event.source)
    assert sources and set(sources) == {"mcp:time"}
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("execute_tool")]
    assert spans and {s.attributes["agentloop.tool.source"] for s in spans} == {"mcp:time"}
