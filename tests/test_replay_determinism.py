"""A durable run's replay makes the decisions the first run made from the same step results,
even where they rest on token estimates and the resumed process's model client has calibrated
nothing (context strategies firing on a small window, a server with a large tool preamble).
The journal is recorded in memory and replayed with a fresh model client: every operation the
replay asks for must be the recorded one, and the histories must be identical."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agentloop import Agent, tool
from agentloop._journal import CallRecord, Journal
from agentloop._loop import Control, Run
from agentloop.context import STUB_MARK, ClearToolResults, Compact
from agentloop.models import KimiModel
from agentloop.sim import SimServer, ToolLoopPolicy
from agentloop.sim.profiles import ServerProfile
from agentloop.tools import Tool, ToolOutcome

pytestmark = pytest.mark.anyio


class Recorder(Journal):
    """Records (durable=True, as a store's journal is) or replays what it recorded."""

    durable = True

    def __init__(self, now: Callable[[], float], log: list[tuple[str, Any]] | None = None):
        super().__init__(now)
        self.replaying = log is not None
        self.log: list[tuple[str, Any]] = [] if log is None else log
        self.at = 0

    def _next(self, kind: str) -> Any:
        recorded, value = self.log[self.at]
        self.at += 1
        assert recorded == kind, f"operation {self.at}: recorded {recorded}, replay asks {kind}"
        return value

    async def model_call(self, work: Callable[[], Awaitable[CallRecord]]) -> CallRecord:
        if self.replaying:
            return self._next("model")  # type: ignore[no-any-return]
        record = await work()
        self.log.append(("model", record))
        return record

    async def tool_call(
        self, call: dict[str, Any], tool: Tool, work: Callable[[], Awaitable[ToolOutcome]]
    ) -> ToolOutcome:
        if self.replaying:
            return self._next("tool")  # type: ignore[no-any-return]
        outcome = await work()
        self.log.append(("tool", outcome))
        return outcome


@tool
def act(query: str) -> str:
    """Do a thing.

    Args:
        query: what.
    """
    return f"done: {query} " + "lorem ipsum dolor sit amet " * 200


@pytest.mark.parametrize("preamble", [0, 1500])
async def test_a_replay_with_a_fresh_model_client_decides_the_same(
    sim_factory: Callable[..., Any], preamble: int
) -> None:
    sim: SimServer = await sim_factory(
        policy=ToolLoopPolicy(steps=8),
        profile=ServerProfile("kimi", tool_preamble_tokens=preamble),
        models={"kimi-k2.6": 8000},
    )

    def agent() -> Agent:  # a new client: nothing calibrated, as in a resumed process
        model = KimiModel(
            api_key="sk-sim",
            base_url=sim.base_url,
            rpm=None,
            context_window=8000,
            max_tokens=1000,
            thinking=False,
        )
        strategies = [
            ClearToolResults(trigger=0.3),
            Compact(trigger=0.7, keep_turns=1, max_summary_tokens=800),
        ]
        return Agent(model, [act], context=strategies)

    async def ignore(event: Any) -> None:
        pass

    first_agent, second_agent = agent(), agent()
    first = Recorder(first_agent.clock.now)
    task = "do the things"
    original = await Run(
        first_agent, first_agent._start_messages(task, None), ignore, Control(), first
    ).drive(task)
    assert original.stop_reason == "completed"
    assert any(STUB_MARK in str(m.get("content")) for m in original.messages)  # they fired
    again = Recorder(second_agent.clock.now, first.log)
    replayed = await Run(
        second_agent, second_agent._start_messages(task, None), ignore, Control(), again
    ).drive(task)
    assert replayed.error is None and again.at == len(first.log)
    assert replayed.messages == original.messages
    assert replayed.usage == original.usage
