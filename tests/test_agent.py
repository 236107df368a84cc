"""The agent loop over real HTTP against the simulator (strict mode: every assistant message of
every request must carry reasoning_content)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

import anyio
import pytest

from agentloop import Agent, Budget, KimiModel, tool
from agentloop import events as ev
from agentloop.sim import FaultPlan, PolicyContext, ScriptedPolicy, SimServer, ToolCall, Turn
from agentloop.sim.policies import ToolLoopPolicy

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]


@tool
async def lookup(query: str, limit: int = 5) -> str:
    """Look a thing up.

    Args:
        query: what to look for.
        limit: how many hits to return.
    """
    await anyio.sleep(0.01)
    return f"{limit} hits for {query}"


@tool(timeout_s=0.05)
async def slow(query: str) -> str:
    """Take too long."""
    await anyio.sleep(5)
    return "never"


@tool
def pick(color: Literal["red", "blue"], count: int) -> str:
    """Pick a color (a sync tool: runs in a worker thread)."""
    return f"{count}x{color}"


def model(sim: SimServer, **kw: Any) -> KimiModel:
    return KimiModel(api_key="sk-sim", base_url=sim.base_url, rpm=None, **kw)


async def test_multi_step_run_with_parallel_tool_calls(sim_factory: SimFactory) -> None:
    sim = await sim_factory(strict=True, policy=ToolLoopPolicy(steps=3, parallel=3))
    agent = Agent(model(sim), tools=[lookup, pick], instructions="Be brief.")
    seen: list[ev.Event] = []
    stream = agent.stream("find it")
    async for event in stream:
        seen.append(event)
    result = stream.result
    assert result is not None and result.stop_reason == "completed"
    assert len(result.steps) == 4 and result.output.startswith("Answer after 9 tool result(s)")
    assert all(len(step.tool_calls) == 3 for step in result.steps[:3])
    assert all(tc.ok for step in result.steps for tc in step.tool_calls)
    # results go back in the order of the calls, one per call
    for i, msg in enumerate(result.messages):
        if msg.get("tool_calls"):
            ids = [c["id"] for c in msg["tool_calls"]]
            answered = [m["tool_call_id"] for m in result.messages[i + 1 : i + 1 + len(ids)]]
            assert answered == ids
    # reasoning is in the transcript and was streamed
    assert all("reasoning_content" in m for m in result.messages if m["role"] == "assistant")
    assert any(isinstance(e, ev.ReasoningDelta) for e in seen)
    assert isinstance(seen[0], ev.RunStarted) and isinstance(seen[-1], ev.RunFinished)
    assert result.usage.cached_input_tokens > 0 and result.cost_usd > 0
    assert all(step.request_id for step in result.steps)


async def test_validation_errors_are_fed_back_and_corrected(sim_factory: SimFactory) -> None:
    def second(ctx: PolicyContext) -> Turn:
        feedback = ctx.tool_results()[0]
        assert "/limit" in feedback and "invalid arguments" in feedback
        return Turn(tool_calls=[ToolCall("lookup", '{"query": "x", "limit": 2}')])

    sim = await sim_factory(strict=True, policy=ScriptedPolicy([
        Turn(tool_calls=[ToolCall("lookup", '{"query": "x", "limit": "two"}'),
                         ToolCall("nope", "{}"), ToolCall("lookup", '{"query": ')]),
        second, Turn(content="done")]))  # fmt: skip
    result = await Agent(model(sim), tools=[lookup]).run("go")
    assert result.stop_reason == "completed"
    first = result.steps[0].tool_calls
    assert [tc.error for tc in first] == ["invalid_arguments", "unknown_tool", "invalid_json"]
    assert result.steps[1].tool_calls[0].ok


async def test_tool_timeout_and_exception(sim_factory: SimFactory) -> None:
    sim = await sim_factory(policy=ScriptedPolicy([
        Turn(tool_calls=[ToolCall("slow", '{"query": "q"}')]), Turn(content="ok")]))  # fmt: skip
    result = await Agent(model(sim), tools=[slow]).run("go")
    assert result.steps[0].tool_calls[0].error == "timeout"
    assert "timed out" in result.messages[2]["content"]


async def test_deadline(sim_factory: SimFactory) -> None:
    sim = await sim_factory(policy=ToolLoopPolicy(steps=100), latency=0.05)
    result = await Agent(model(sim), tools=[lookup], budget=Budget(deadline_s=0.3)).run("go")
    assert result.stop_reason == "deadline" and result.steps


async def test_error_stop(sim_factory: SimFactory) -> None:
    sim = await sim_factory(faults=FaultPlan(schedule={2: "quota"}), policy=ToolLoopPolicy())
    result = await Agent(model(sim), tools=[lookup]).run("go")
    assert result.stop_reason == "error" and "quota" in (result.error or "")
    assert len(result.steps) == 1  # what was done is kept


async def test_cancellation_mid_stream(sim_factory: SimFactory) -> None:
    sim = await sim_factory(chunk_chars=1, policy=ScriptedPolicy([Turn(
        reasoning="thinking " * 2000, content="never")]))  # fmt: skip
    stream = Agent(model(sim)).stream("go")
    async for event in stream:
        if isinstance(event, ev.ReasoningDelta):
            stream.cancel()
    assert stream.result is not None and stream.result.stop_reason == "cancelled"


async def test_loop_detection(sim_factory: SimFactory) -> None:
    same = Turn(tool_calls=[ToolCall("lookup", '{"query": "same"}')])
    sim = await sim_factory(policy=ScriptedPolicy([same]))
    result = await Agent(model(sim), tools=[lookup], loop_limit=2).run("go")
    assert result.stop_reason == "loop_detected"
    assert any("change your approach" in str(m.get("content")) for m in result.messages)


async def test_length_with_no_answer_is_retried_with_more_room(sim_factory: SimFactory) -> None:
    def thinker(ctx: PolicyContext) -> Turn:
        return Turn(reasoning="hmm " * 20, reasoning_tokens=40_000, content="the answer")

    sim = await sim_factory(policy=ScriptedPolicy([thinker]))
    result = await Agent(model(sim)).run("go")
    assert result.stop_reason == "completed" and result.output == "the answer"
    assert [b["max_tokens"] for b in sim.stats.bodies] == [32_000, 64_000]
    assert result.usage.output_tokens == 32_000 + 40_000 + 3  # the failed attempt is billed

    sim2 = await sim_factory(policy=ScriptedPolicy([Turn(reasoning="x", reasoning_tokens=10**6)]))
    result2 = await Agent(model(sim2), budget=Budget(total_tokens=50_000)).run("go")
    assert result2.stop_reason == "reasoning_exhausted" and result2.output == ""


async def test_continue_and_resume(sim_factory: SimFactory) -> None:
    sim = await sim_factory(strict=True, policy=ToolLoopPolicy(steps=4))
    budget = Budget(max_steps=2, final_answer_on_limit=False)
    agent = Agent(model(sim), tools=[lookup], budget=budget)
    stopped = await agent.run("go")
    assert stopped.stop_reason == "max_steps"
    agent.budget = Budget(max_steps=10)
    resumed = await agent.run(history=stopped.messages)
    assert resumed.stop_reason == "completed"
    follow = await agent.run("and then?", history=resumed.messages)
    assert follow.stop_reason == "completed"
    assert follow.messages[: len(resumed.messages)] == resumed.messages


def test_run_sync() -> None:
    with SimServer().run_in_thread() as sim:
        result = Agent(model(sim), tools=[lookup]).run_sync("go")
    assert result.stop_reason == "completed"


def test_presets() -> None:
    browse = Budget.preset("browsecomp")
    assert (browse.max_steps, browse.per_step_tokens, browse.total_tokens) == (300, 48_000, 256_000)
    assert Budget.preset("swe-bench-verified").per_step_tokens == 32_000
    assert Budget.preset("aime").per_step_tokens == 96_000
    with pytest.raises(Exception, match="valid presets"):
        Budget.preset("nope")


async def test_spans(sim_factory: SimFactory) -> None:
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
    await Agent(model(sim), tools=[lookup]).run("go")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run, chat, tool_span = (
        spans["invoke_agent"],
        spans["chat kimi-k2.6"],
        spans["execute_tool lookup"],
    )
    assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert chat.attributes["gen_ai.request.model"] == "kimi-k2.6"
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    assert "gen_ai.usage.cached_input_tokens" in chat.attributes
    assert "agentloop.limiter_wait_s" in chat.attributes and "agentloop.retries" in chat.attributes
    assert tool_span.attributes["gen_ai.tool.name"] == "lookup"
    assert chat.parent is not None and chat.parent.span_id == run.context.span_id
    assert chat.attributes["gen_ai.provider.name"] == "moonshot"  # the model's own provider
    dump = json.dumps([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    assert "sk-sim" not in dump
    # a streamed run feeds the same spans from the same events
    exporter.clear()
    async with Agent(model(sim), tools=[lookup]).stream("go") as run:
        async for _ in run:
            pass
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["chat kimi-k2.6", "chat kimi-k2.6", "execute_tool lookup", "invoke_agent"]


async def test_retry_limit_oversized_results_and_raw_schema_tools(sim_factory: SimFactory) -> None:
    from agentloop import Tool

    calls = 0

    def flaky(x: int) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("backend down")

    raw = Tool.from_schema(
        flaky,
        {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
         "additionalProperties": False},
        name="flaky", description="Fails.", max_failures=2,
    )  # fmt: skip

    @tool(max_result_chars=50)
    def big() -> str:
        """Return a lot."""
        return "y" * 500

    turns = [Turn(tool_calls=[ToolCall("flaky", f'{{"x": {i}}}')]) for i in range(3)]
    sim = await sim_factory(policy=ScriptedPolicy([
        *turns, Turn(tool_calls=[ToolCall("big", "{}")]), Turn(content="done")]))  # fmt: skip
    result = await Agent(model(sim), tools=[raw, big]).run("go")
    errors_seen = [s.tool_calls[0].error for s in result.steps[:3]]
    assert errors_seen == ["exception", "exception", "retry_limit"] and calls == 2
    big_result = result.messages[-2]["content"]
    assert big_result.startswith("y" * 50) and "[truncated: 450 more characters" in big_result
