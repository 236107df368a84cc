"""Tool calls as the model really sends them (issue 12): control characters, deep or huge
arguments, invalid JSON, undeclared ``$`` tools, empty or duplicate ids. Each call is answered
once with a tool message the model can act on, and the next request is accepted by the strict
simulator (over real HTTP)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest

from agentloop import Agent, tool
from agentloop.models import WEB_SEARCH
from agentloop.sim import ScriptedPolicy, SimConfig, SimServer, ToolCall, Turn
from agentloop.tools import (
    MAX_ARGUMENT_CHARS,
    MAX_ARGUMENT_DEPTH,
    Tool,
    history_arguments,
    load_arguments,
)

from .conftest import kimi

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]
BOTH = pytest.mark.parametrize("stream", [True, False], ids=["streamed", "plain"])


@tool
async def lookup(query: str) -> str:
    """Look a thing up.

    Args:
        query: what to look for.
    """
    await anyio.lowlevel.checkpoint()
    return f"hits for {query}"


@tool
def echo_text(text: str) -> str:
    """Give the text back.

    Args:
        text: the text.
    """
    return text


@tool
def measure(text: str) -> str:
    """Count the characters of a text.

    Args:
        text: the text.
    """
    return f"{len(text)} characters"


store = Tool.from_schema(
    lambda data: f"stored {len(json.dumps(data))} bytes",
    {"type": "object", "properties": {"data": {"type": "array"}}, "required": ["data"]},
    name="store",
    description="Store nested data.",
)


class RawSim(SimServer):
    """The simulator, sending a scripted call's id exactly as given (an empty one too) and the
    arguments of a ``ToolCall`` whose text is a key of ``expand`` as that key's value (so a
    10 MB argument is not counted against the simulated output budget)."""

    def __init__(self, config: SimConfig, expand: dict[str, str] | None = None) -> None:
        super().__init__(config)
        self.expand = expand or {}

    def _wire_call(self, call: ToolCall, index: int) -> dict[str, Any]:
        wire = super()._wire_call(call, index)
        if call.id is not None:
            wire["id"] = call.id
        wire["function"]["arguments"] = self.expand.get(call.arguments, call.arguments)
        return wire


def script(*calls: ToolCall) -> ScriptedPolicy:
    return ScriptedPolicy([Turn(tool_calls=list(calls)), Turn(content="ok")])


def assert_accepted(sim: SimServer, result: Any) -> None:
    """No request was refused, the run ended normally, and the last request carried the
    history as the result keeps it, every call answered exactly once."""
    assert sim.stats.by_status.get(400, 0) == 0
    assert result.stop_reason == "completed" and result.output == "ok"
    assert sim.stats.bodies[-1]["messages"] == result.messages[:-1]
    calls = [c["id"] for c in result.messages[1]["tool_calls"]]
    answers = [m["tool_call_id"] for m in result.messages if m["role"] == "tool"]
    assert len(set(calls)) == len(calls) and answers == calls
    for call in result.messages[1]["tool_calls"]:
        json.loads(call["function"]["arguments"])  # strict JSON, what the API accepts


def tool_messages(result: Any) -> list[str]:
    return [m["content"] for m in result.messages if m["role"] == "tool"]


# 1. control characters ---------------------------------------------------------------------
@BOTH
async def test_literal_control_characters_in_arguments_are_accepted(
    sim_factory: SimFactory, stream: bool
) -> None:
    raw = '{"text": "line one\nline two\ttabbed\r\x01"}'  # literal, unescaped (kimi-cli #1378)
    sim = await sim_factory(strict=True, policy=script(ToolCall("echo_text", raw, id="c1")))
    result = await Agent(kimi(sim, stream=stream), tools=[echo_text]).run("go")
    assert tool_messages(result) == ["line one\nline two\ttabbed\r\x01"]
    record = result.steps[0].tool_calls[0]
    assert record.ok and record.error is None and record.arguments == raw
    # the history carries the same arguments as strict JSON
    sent = result.messages[1]["tool_calls"][0]
    assert sent["id"] == "c1"
    assert json.loads(sent["function"]["arguments"]) == {"text": "line one\nline two\ttabbed\r\x01"}
    assert_accepted(sim, result)


def test_the_parser_takes_control_characters_and_keeps_big_integers_exact() -> None:
    arguments, problem = echo_text.parse('{"text": "a\nb"}')
    assert problem is None and arguments == {"text": "a\nb"}
    # orjson (the JSON fast path) refuses the first and turns 2**64 into a float
    assert load_arguments('{"n": 18446744073709551616}') == ({"n": 2**64}, True)
    assert load_arguments('{\n  "text": "a\tb"\n}') == ({"text": "a\tb"}, False)
    assert load_arguments('{\n  "text": "a"\n}') == ({"text": "a"}, True)  # whitespace is legal
    assert history_arguments('{"text": "a\tb"}') == '{"text":"a\\tb"}'
    assert [history_arguments(raw) for raw in ("", " ", "[1]", "null", '{"a": 1}')] == [
        "",
        "{}",
        "{}",
        "{}",
        '{"a": 1}',
    ]


# 2. deep and huge arguments ----------------------------------------------------------------
def nested(levels: int) -> str:
    """``{"data": [[...]]}``: the object plus ``levels`` arrays inside it."""
    return '{"data": ' + "[" * levels + "]" * levels + "}"


async def test_nesting_up_to_the_cap_runs_and_one_more_level_is_a_tool_error(
    sim_factory: SimFactory,
) -> None:
    at_cap, over = nested(MAX_ARGUMENT_DEPTH - 1), nested(MAX_ARGUMENT_DEPTH)
    sim = await sim_factory(
        strict=True,
        policy=script(ToolCall("store", at_cap, id="a"), ToolCall("store", over, id="b")),
    )
    result = await Agent(kimi(sim), tools=[store]).run("go")
    first, second = result.steps[0].tool_calls
    assert first.ok and second.error == "arguments_too_large" and not second.ok
    assert tool_messages(result) == [
        f"stored {2 * (MAX_ARGUMENT_DEPTH - 1)} bytes",
        f"Error: the arguments of store are nested more than {MAX_ARGUMENT_DEPTH} levels deep; "
        "the call was not run (the conversation keeps it with {} as its arguments). Send "
        "flatter arguments.",
    ]
    assert second.arguments == over
    sent = result.messages[1]["tool_calls"]
    assert [c["function"]["arguments"] for c in sent] == [at_cap, "{}"]
    assert_accepted(sim, result)


async def test_arguments_too_deep_for_the_parser_are_a_tool_error_not_a_recursion_error(
    sim_factory: SimFactory,
) -> None:
    deep = nested(40_000)  # under the size cap; past orjson's and Python's recursion limits
    assert len(deep) < MAX_ARGUMENT_CHARS
    sim = await sim_factory(strict=True, policy=script(ToolCall("store", deep, id="a")))
    result = await Agent(kimi(sim), tools=[store]).run("go")
    record = result.steps[0].tool_calls[0]
    assert not record.ok and record.error == "arguments_too_large"
    assert "nested more than 64 levels deep" in tool_messages(result)[0]
    assert result.messages[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert_accepted(sim, result)


@BOTH
async def test_a_10_mb_argument_is_refused_and_never_sent_back(stream: bool) -> None:
    huge = '{"text": "' + "x" * 10_000_000 + '"}'
    config = SimConfig(
        strict=True, chunk_chars=1_000_000, policy=script(ToolCall("echo_text", "HUGE", id="h"))
    )
    async with RawSim(config, expand={"HUGE": huge}) as sim:
        result = await Agent(kimi(sim, stream=stream), tools=[echo_text]).run("go")
    record = result.steps[0].tool_calls[0]
    assert not record.ok and record.error == "arguments_too_large"
    assert tool_messages(result) == [
        "Error: the arguments of echo_text are 10,000,012 characters long, over the limit of "
        "100,000; the call was not run (the conversation keeps it with {} as its arguments). "
        "Send smaller arguments, or split the work over several calls."
    ]
    # the step record keeps the head of the text and its length
    assert record.arguments == huge[:MAX_ARGUMENT_CHARS] and record.arguments_chars == len(huge)
    assert result.messages[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert len(json.dumps(sim.stats.bodies[-1])) < 10_000  # not echoed into later requests
    assert_accepted(sim, result)


async def test_arguments_at_the_size_cap_run(sim_factory: SimFactory) -> None:
    text = "y" * (MAX_ARGUMENT_CHARS - len('{"text": ""}'))
    raw = json.dumps({"text": text})
    assert len(raw) == MAX_ARGUMENT_CHARS
    sim = await sim_factory(
        strict=True, chunk_chars=10_000, policy=script(ToolCall("measure", raw, id="a"))
    )
    result = await Agent(kimi(sim), tools=[measure]).run("go")
    record = result.steps[0].tool_calls[0]
    assert record.ok and record.arguments == raw and record.arguments_chars is None
    assert tool_messages(result) == [f"{len(text)} characters"]
    assert result.messages[1]["tool_calls"][0]["function"]["arguments"] == raw  # verbatim
    assert_accepted(sim, result)


# 3. malformed arguments --------------------------------------------------------------------
@BOTH
async def test_malformed_arguments_do_not_poison_the_conversation(
    sim_factory: SimFactory, stream: bool
) -> None:
    # kimi-cli #2165: a missing quote before a key
    bad = '{"query": "mesh", "limit": 3, description": "x"}'
    sim = await sim_factory(
        strict=True,
        policy=script(ToolCall("lookup", bad, id="m"), ToolCall("lookup", '{"query": "b"}')),
    )
    result = await Agent(kimi(sim, stream=stream), tools=[lookup]).run("go")
    broken, fine = result.steps[0].tool_calls
    assert not broken.ok and broken.error == "invalid_json" and broken.arguments == bad
    assert fine.ok
    assert tool_messages(result) == [
        "Error: the arguments of lookup are not valid JSON (Expecting property name enclosed "
        "in double quotes: line 1 column 31 (char 30)); the call was not run (the conversation "
        "keeps it with {} as its arguments). You sent: "
        + bad
        + ". Send a JSON object matching the tool's parameters.",
        "hits for b",
    ]
    assert result.messages[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert_accepted(sim, result)


async def test_truncated_arguments_quote_only_their_head(sim_factory: SimFactory) -> None:
    bad = '{"text": "' + "z" * 5_000  # cut off mid-string
    sim = await sim_factory(strict=True, policy=script(ToolCall("echo_text", bad, id="t")))
    result = await Agent(kimi(sim), tools=[echo_text]).run("go")
    record = result.steps[0].tool_calls[0]
    assert record.error == "invalid_json" and record.arguments == bad
    message = tool_messages(result)[0]
    assert "You sent: " + bad[:200] + "… (5,010 characters)." in message
    assert len(message) < 600
    assert_accepted(sim, result)


async def test_the_strict_simulator_refuses_invalid_json_arguments_in_the_history(
    sim_factory: SimFactory,
) -> None:
    """The real API does (kimi-cli #2165, #1378; third-party reports, so behind ``strict``):
    the simulator must too, or the tests above would prove nothing."""
    sim = await sim_factory(strict=True)

    def body(arguments: str) -> dict[str, Any]:
        call = {"id": "a", "type": "function", "function": {"name": "f", "arguments": arguments}}
        return {
            "model": "kimi-k2.6",
            "thinking": {"type": "disabled"},
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "a", "content": "r"},
            ],
        }

    async with httpx2.AsyncClient(headers={"Authorization": "Bearer sk-sim"}) as client:
        url = f"{sim.base_url}/chat/completions"
        for arguments in ('{"q": ', '{"q": "a\nb"}', "   "):
            refused = await client.post(url, json=body(arguments))
            assert refused.status_code == 400
            assert refused.json()["error"]["message"].startswith(
                "Invalid request: the arguments of tool call a (message index 1) are not valid JSON"
            )
        for arguments in ('{"q": "a\\nb"}', "{}", ""):
            assert (await client.post(url, json=body(arguments))).status_code == 200


# 4. undeclared $ tools ---------------------------------------------------------------------
async def test_an_undeclared_dollar_tool_is_an_error_not_an_echo(sim_factory: SimFactory) -> None:
    shell = ToolCall("$shell", '{"cmd": "rm -rf /"}', id="s")
    sim = await sim_factory(strict=True, policy=script(shell))
    result = await Agent(kimi(sim), tools=[lookup]).run("go")
    record = result.steps[0].tool_calls[0]
    assert not record.ok and record.error == "unknown_tool"
    assert tool_messages(result) == [
        "Error: there is no tool named '$shell'. Available tools: lookup."
    ]
    assert_accepted(sim, result)


async def test_only_a_declared_builtin_is_echoed(sim_factory: SimFactory) -> None:
    search = '{"search_result": {"search_id": "s-1"}}'
    sim = await sim_factory(
        strict=True,
        policy=script(
            ToolCall("$web_search", search, id="w"), ToolCall("$shell", '{"cmd": "ls"}', id="s")
        ),
    )
    result = await Agent(kimi(sim, thinking=False), tools=[WEB_SEARCH]).run("go")
    echoed, refused = result.steps[0].tool_calls
    assert echoed.ok and not refused.ok and refused.error == "unknown_tool"
    assert tool_messages(result) == [
        search,
        "Error: there is no tool named '$shell'. Available tools: $web_search.",
    ]
    assert_accepted(sim, result)


# 5. empty and duplicate ids ----------------------------------------------------------------
@BOTH
async def test_duplicate_ids_are_made_unique_and_each_call_answered_once(stream: bool) -> None:
    calls = [ToolCall("lookup", f'{{"query": "{q}"}}', id="dup") for q in "abc"]
    async with RawSim(SimConfig(strict=True, policy=script(*calls))) as sim:
        result = await Agent(kimi(sim, stream=stream), tools=[lookup]).run("go")
    records = result.steps[0].tool_calls
    assert [r.call_id for r in records] == ["dup", "call_1_1", "call_1_2"]
    assert [r.model_call_id for r in records] == [None, "dup", "dup"]
    assert all(r.ok for r in records)
    assert [c["id"] for c in result.messages[1]["tool_calls"]] == ["dup", "call_1_1", "call_1_2"]
    assert tool_messages(result) == ["hits for a", "hits for b", "hits for c"]
    assert_accepted(sim, result)


@BOTH
async def test_empty_ids_get_fresh_ones(stream: bool) -> None:
    calls = [
        ToolCall("lookup", '{"query": "a"}', id=""),
        ToolCall("lookup", '{"query": "b"}', id=""),
    ]
    async with RawSim(SimConfig(strict=True, policy=script(*calls))) as sim:
        result = await Agent(kimi(sim, stream=stream), tools=[lookup]).run("go")
    records = result.steps[0].tool_calls
    assert [r.call_id for r in records] == ["call_1_0", "call_1_1"]
    assert [r.model_call_id for r in records] == ["", ""]
    assert [m["tool_call_id"] for m in result.messages if m["role"] == "tool"] == [
        "call_1_0",
        "call_1_1",
    ]
    assert tool_messages(result) == ["hits for a", "hits for b"]
    assert_accepted(sim, result)


async def test_a_fresh_id_never_collides_with_one_the_model_sent() -> None:
    calls = [
        ToolCall("lookup", '{"query": "a"}', id="call_1_1"),
        ToolCall("lookup", '{"query": "b"}', id="call_1_1"),
        ToolCall("lookup", '{"query": "c"}', id=""),
        ToolCall("lookup", '{"query": "d"}', id="call_1_2"),
    ]
    async with RawSim(SimConfig(strict=True, policy=script(*calls))) as sim:
        result = await Agent(kimi(sim), tools=[lookup]).run("go")
    ids = [r.call_id for r in result.steps[0].tool_calls]
    assert ids == ["call_1_1", "call_1_1_2", "call_1_2_2", "call_1_2"]
    assert tool_messages(result) == ["hits for a", "hits for b", "hits for c", "hits for d"]
    assert_accepted(sim, result)


async def test_ids_as_sent_are_kept_when_they_can_be_answered(sim_factory: SimFactory) -> None:
    ids = ["functions.lookup:0", "functions.lookup:1"]
    calls = [ToolCall("lookup", '{"query": "a"}', id=i) for i in ids]
    sim = await sim_factory(strict=True, policy=script(*calls))
    result = await Agent(kimi(sim), tools=[lookup]).run("go")
    assert [r.call_id for r in result.steps[0].tool_calls] == ids
    assert all(r.model_call_id is None for r in result.steps[0].tool_calls)
    assert_accepted(sim, result)
