"""Approval of tool calls over real HTTP against the strict simulator: a call of a tool that
needs approval pauses the run (``approval_required``, ``result.pending``) with every other call
of the step run; resuming needs a decision for each pending call; approve, reject (with a
reason) and edit (validated) each end in a history the strict simulator accepts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentloop import Agent, Edited, Rejected, tool
from agentloop.errors import ConfigurationError
from agentloop.sim import PolicyContext, ScriptedPolicy, SimServer, ToolCall, Turn

from .conftest import kimi

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]
deleted: list[str] = []
looked: list[str] = []


@tool(needs_approval=True)
def delete(path: str) -> str:
    """Delete a file.

    Args:
        path: the file.
    """
    deleted.append(path)
    return f"deleted {path}"


@tool(needs_approval=lambda args: not args["path"].startswith("/tmp/"))
def move(path: str) -> str:
    """Move a file to the archive.

    Args:
        path: the file.
    """
    return f"moved {path}"


@tool
def lookup(query: str) -> str:
    """Look a thing up.

    Args:
        query: what.
    """
    looked.append(query)
    return f"found {query}"


def policy(ctx: PolicyContext) -> Turn:
    """Step 1: look up and delete at once; then answer with what the tool messages said."""
    if ctx.step == 0:
        return Turn(
            reasoning="Both.",
            tool_calls=[
                ToolCall("lookup", '{"query": "old files"}'),
                ToolCall("delete", '{"path": "/data/old.txt"}'),
            ],
        )
    return Turn(reasoning="Done.", content="results: " + " | ".join(ctx.tool_results()))


async def paused(sim_factory: SimFactory) -> tuple[SimServer, Agent, Any]:
    deleted.clear()
    looked.clear()
    sim: SimServer = await sim_factory(policy=policy, strict=True)
    agent = Agent(kimi(sim), [lookup, delete, move])
    result = await agent.run("Clean up.")
    return sim, agent, result


async def test_a_call_needing_approval_pauses_the_run_with_the_rest_done(
    sim_factory: SimFactory,
) -> None:
    sim, agent, result = await paused(sim_factory)
    assert result.stop_reason == "approval_required"
    assert [(p.tool, p.arguments) for p in result.pending] == [
        ("delete", '{"path": "/data/old.txt"}')
    ]
    assert looked == ["old files"] and deleted == []  # the other call ran, this one did not
    answered = {m["tool_call_id"] for m in result.messages if m["role"] == "tool"}
    assert result.pending[0].call_id not in answered
    assert sim.stats.completions == 1  # no final-answer call on a pause

    with pytest.raises(ConfigurationError, match=result.pending[0].call_id):
        await agent.run(history=result.messages)  # no decision: named
    with pytest.raises(ConfigurationError, match="not waiting"):
        await agent.run(
            history=result.messages, approvals={result.pending[0].call_id: True, "x": True}
        )


async def test_approve_runs_the_call_and_the_run_goes_on(sim_factory: SimFactory) -> None:
    _, agent, result = await paused(sim_factory)
    done = await agent.run(history=result.messages, approvals={result.pending[0].call_id: True})
    assert done.stop_reason == "completed", done.error
    assert deleted == ["/data/old.txt"] and "deleted /data/old.txt" in done.output


async def test_reject_answers_the_call_with_the_reason(sim_factory: SimFactory) -> None:
    _, agent, result = await paused(sim_factory)
    call = result.pending[0].call_id
    done = await agent.run(history=result.messages, approvals={call: Rejected("keep backups")})
    assert done.stop_reason == "completed", done.error
    assert deleted == [] and "rejected" in done.output and "keep backups" in done.output

    _, agent, result = await paused(sim_factory)
    done = await agent.run(history=result.messages, approvals={result.pending[0].call_id: False})
    assert done.stop_reason == "completed" and deleted == []


async def test_edit_runs_the_call_with_new_validated_arguments(sim_factory: SimFactory) -> None:
    _, agent, result = await paused(sim_factory)
    call = result.pending[0].call_id
    done = await agent.run(
        history=result.messages, approvals={call: Edited({"path": "/data/old.txt.bak"})}
    )
    assert done.stop_reason == "completed" and deleted == ["/data/old.txt.bak"]

    _, agent, result = await paused(sim_factory)
    call = result.pending[0].call_id
    done = await agent.run(history=result.messages, approvals={call: Edited({"path": 7})})
    assert done.stop_reason == "completed" and deleted == []
    assert "invalid arguments" in done.output


async def test_a_callable_decides_per_call(sim_factory: SimFactory) -> None:
    def moves(ctx: PolicyContext) -> Turn:
        if ctx.step == 0:
            return Turn(
                tool_calls=[
                    ToolCall("move", '{"path": "/tmp/a"}'),
                    ToolCall("move", '{"path": "/home/b"}'),
                ]
            )
        return Turn(content="ok")

    sim = await sim_factory(policy=moves, strict=True)
    result = await Agent(kimi(sim), [move]).run("Archive.")
    assert result.stop_reason == "approval_required"
    assert [p.arguments for p in result.pending] == ['{"path": "/home/b"}']


async def test_a_paused_durable_run_resumes_from_its_store(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    from agentloop.durable import DurableStore

    deleted.clear()
    sim = await sim_factory(policy=policy, strict=True)
    agent = Agent(kimi(sim), [lookup, delete])
    async with DurableStore(tmp_path / "runs.db") as store:
        first = await agent.run("Clean up.", run_id="a", store=store)
        assert first.stop_reason == "approval_required"
        stored = await store.result("a")  # e.g. in another process, later
        assert stored is not None and stored.pending == first.pending
        done = await agent.run(
            resume=stored,
            approvals={stored.pending[0].call_id: True},
            run_id="a/approved",
            store=store,
        )
    assert done.stop_reason == "completed" and deleted == ["/data/old.txt"]
    # resume= continues the paused run: its steps and spend count on
    assert len(done.steps) == len(first.steps) + 1 and done.steps[0] == first.steps[0]
    assert done.usage.total_tokens > first.usage.total_tokens
    assert done.cost_usd > first.cost_usd > 0


async def test_approval_switched_on_after_the_agent_is_built_is_honoured(
    sim_factory: Callable[..., Any],
) -> None:
    """``needs_approval`` is a tool's own attribute: set after the Agent was built, it still
    pauses the call (found in review: a flag computed once let the call run)."""
    ran: list[str] = []

    @tool
    def erase(path: str) -> str:
        """Erase a file.

        Args:
            path: the file.
        """
        ran.append(path)
        return "erased"

    script = ScriptedPolicy(
        [Turn(tool_calls=[ToolCall("erase", '{"path": "/tmp/x"}', "c1")]), Turn(content="ok")]
    )
    sim = await sim_factory(policy=script)
    agent = Agent(kimi(sim), tools=[erase])
    erase.needs_approval = True
    result = await agent.run("clean up")
    assert ran == []
    assert result.stop_reason == "approval_required"
    assert [c.tool for c in result.pending] == ["erase"]
