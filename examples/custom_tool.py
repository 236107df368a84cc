"""Custom tools as decorated functions, sync and async, and what the model sees when it sends
bad arguments.

Offline, the simulator plays the model (no key needed; from a checkout, after
``pip install -e .``):

    python examples/custom_tool.py

Online, against Kimi K2.6 (``MOONSHOT_BASE_URL`` too for a key from platform.moonshot.cn):

    MOONSHOT_API_KEY=sk-... python examples/custom_tool.py --online

Offline, the simulated model first calls ``convert`` with a unit that is not allowed and a
negative amount; the validator rejects the call before the function runs and the error (with
JSON-pointer paths) goes back to the model, which then corrects itself.
"""

from __future__ import annotations

import argparse
import json
from contextlib import AsyncExitStack
from typing import Annotated, Literal

import anyio
from pydantic import Field

from agentloop import Agent, KimiModel, RunResult, events, tool
from agentloop.sim import ScriptedPolicy, SimConfig, SimServer, ToolCall, Turn

RATES = {"EUR": 1.0, "USD": 1.08, "JPY": 162.0}


@tool
def convert(
    amount: Annotated[float, Field(ge=0)],
    source: Literal["EUR", "USD", "JPY"] = "EUR",
    target: str = "USD",
) -> str:
    """Convert money between currencies at today's (fixed) rate.

    Args:
        amount: how much money, in the source currency.
        source: the currency the amount is in.
        target: the currency to convert to.
    """
    if target not in RATES:
        raise ValueError(f"unknown currency {target}; known: {', '.join(RATES)}")
    return f"{amount * RATES[target] / RATES[source]:.2f} {target}"


@tool(timeout_s=5)
async def wait_then_echo(text: str, seconds: float = 0.1) -> str:
    """Wait a moment, then echo the text (an async tool).

    Args:
        text: what to echo.
        seconds: how long to wait first.
    """
    await anyio.sleep(seconds)
    return text


def offline_policy() -> ScriptedPolicy:
    bad = {"amount": -5, "source": "GBP", "target": "USD"}
    good = {"amount": 120, "source": "EUR", "target": "JPY"}
    return ScriptedPolicy(
        [
            Turn(reasoning="Convert first.", tool_calls=[ToolCall("convert", json.dumps(bad))]),
            Turn(
                reasoning="The arguments were rejected; fix them.",
                tool_calls=[
                    ToolCall("convert", json.dumps(good)),
                    ToolCall("wait_then_echo", '{"text": "done"}'),
                ],
            ),
            lambda ctx: Turn(reasoning="Answer.", content=f"120 EUR is {ctx.tool_results()[-2]}."),
        ]
    )


async def run(online: bool, show: bool = True) -> RunResult:
    async with AsyncExitStack() as stack:
        if online:
            model = KimiModel()
        else:
            sim = await stack.enter_async_context(SimServer(SimConfig(policy=offline_policy())))
            model = KimiModel(api_key="sk-sim", base_url=sim.base_url)
        agent = Agent(model, tools=[convert, wait_then_echo], instructions="Use the tools.")
        stream = agent.stream("How much is 120 EUR in JPY? Then echo 'done'.")
        async for event in stream:
            if show and isinstance(event, events.ToolCallFinished):
                status = "ok" if event.ok else f"rejected ({event.error})"
                print(f"{event.name}: {status}\n  {event.result}")
        assert stream.result is not None
        return stream.result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--online", action="store_true", help="use Kimi (MOONSHOT_API_KEY)")
    result = anyio.run(run, parser.parse_args().online)
    print(f"\n{result.output}  [{result.stop_reason}]")
