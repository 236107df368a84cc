"""An MCP server's tools next to a Python tool: the time server from PyPI (``mcp-server-time``)
over stdio, through ``agentloop.mcp``.

Offline, the simulator plays the model (no key needed; from a checkout, after
``pip install -e ".[examples]"``, which brings the MCP SDK and the time server):

    python examples/mcp_tools.py

Online, against Kimi K2.6 (``MOONSHOT_BASE_URL`` too for a key from platform.moonshot.cn):

    MOONSHOT_API_KEY=sk-... python examples/mcp_tools.py --online

Offline, the simulated model asks the time server for the time in Tokyo, then calls the Python
tool with the hour it read, and answers from both results.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AsyncExitStack

import anyio

from agentloop import Agent, KimiModel, RunResult, tool
from agentloop.mcp import MCPServer
from agentloop.sim import PolicyContext, ScriptedPolicy, SimConfig, SimServer, ToolCall, Turn

TASK = "What time is it in Tokyo, and is the office open?"


@tool
def office_open(hour: int) -> str:
    """Whether the Tokyo office is open at a given hour (9 to 18).

    Args:
        hour: the hour of the day, 0-23, in Tokyo.
    """
    return "open" if 9 <= hour < 18 else "closed"


def _hour(ctx: PolicyContext) -> Turn:
    now = json.loads(ctx.tool_results()[-1])["datetime"]
    return Turn(tool_calls=[ToolCall("office_open", json.dumps({"hour": int(now[11:13])}))])


def _answer(ctx: PolicyContext) -> Turn:
    now, status = ctx.tool_results()[-2:]
    return Turn(
        content=f"In Tokyo it is {json.loads(now)['datetime'][11:16]}: the office is {status}."
    )


SCRIPT = ScriptedPolicy(
    [
        Turn(tool_calls=[ToolCall("get_current_time", '{"timezone": "Asia/Tokyo"}')]),
        _hour,
        _answer,
    ]
)


async def run(online: bool) -> RunResult:
    async with AsyncExitStack() as stack:
        if online:
            model = KimiModel()
        else:
            sim = await stack.enter_async_context(SimServer(SimConfig(policy=SCRIPT)))
            model = KimiModel(api_key="sk-sim", base_url=sim.base_url)
        # the server runs as a subprocess for as long as the block lasts
        clock = await stack.enter_async_context(
            MCPServer.stdio(sys.executable, ["-m", "mcp_server_time"], name="time")
        )
        agent = Agent(model, [*clock.tools(), office_open])
        result = await agent.run(TASK)
        for step in result.steps:
            for call in step.tool_calls:
                source = agent.tools[call.name].source or "python"
                print(f"step {step.step}: {call.name} ({source}) ok={call.ok}")
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--online", action="store_true", help="use Kimi (MOONSHOT_API_KEY)")
    args = parser.parse_args()
    result = anyio.run(run, args.online)
    print(result.output)
    print(f"stop: {result.stop_reason}")


if __name__ == "__main__":
    main()
