"""The wire under odd servers: wrong-shape chunks and bodies, stalled streams, Retry-After in
every form, bodies that are not the API's, and error hints that fit their cause. Real HTTP
against the simulator; each test pins the error type and message, the attempts, the time taken,
and that ``agent.run`` returns a ``RunResult`` with the history intact."""

from __future__ import annotations

import contextlib
import email.utils
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentloop import (
    Agent,
    Budget,
    ProtocolError,
    RetriesExhaustedError,
    RetryPolicy,
    RunResult,
    StreamStalledError,
    UnexpectedResponseError,
    errors,
    tool,
)
from agentloop import events as ev
from agentloop.clock import ManualClock
from agentloop.models import KimiModel, ModelRequest, assemble
from agentloop.models.base import (
    FinishDelta,
    ReasoningDelta,
    RetryDelta,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
)
from agentloop.models.openai import retry_after_seconds
from agentloop.models.stream import DONE, SSEDecoder, chunk_deltas, message_deltas, parse_chunk
from agentloop.sim import (
    EchoPolicy,
    FaultPlan,
    ScriptedPolicy,
    SimConfig,
    SimServer,
    ToolCall,
    Turn,
)

from .conftest import kimi

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("transport")]
SimFactory = Callable[..., Any]
Q = [{"role": "user", "content": "q"}]
FAST = RetryPolicy(base_delay=0.01, jitter=lambda upper: 0.0)  # waits of 5 ms, 10 ms, ...
TIMEOUTS = {"idle_timeout": 0.3, "first_byte_timeout": 0.3}


@tool
async def lookup(query: str) -> str:
    """Look a thing up.

    Args:
        query: what to look for.
    """
    return f"hits for {query}"


def tool_then_answer() -> ScriptedPolicy:
    return ScriptedPolicy(
        [Turn(tool_calls=[ToolCall("lookup", '{"query": "a"}', "call-1")]), Turn(content="done")]
    )


def assert_first_step_kept(result: RunResult) -> None:
    """The failed run still holds the task, the first step's call and its result."""
    roles = [m["role"] for m in result.messages]
    assert roles == ["user", "assistant", "tool"]
    assert result.messages[1]["tool_calls"][0]["id"] == "call-1"
    tool_message = result.messages[2]
    assert (tool_message["tool_call_id"], tool_message["content"]) == ("call-1", "hits for a")
    assert len(result.steps) == 1


async def run_collecting(agent: Agent, task: str = "q") -> tuple[RunResult, list[ev.Retry]]:
    retries: list[ev.Retry] = []
    result: RunResult | None = None
    async with agent.stream(task) as run:
        async for event in run:
            if isinstance(event, ev.Retry):
                retries.append(event)
            elif isinstance(event, ev.RunFinished):
                result = event.result
    assert isinstance(result, RunResult)
    return result, retries


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# -- 1. chunks and bodies of the wrong shape -------------------------------------------------
CALL = {"index": 0, "id": "c1", "type": "function", "function": {"name": "lookup"}}
WRONG_CHUNKS: dict[str, tuple[Any, str]] = {
    "choices an object": (
        {"choices": {"0": {"delta": {"content": "x"}}}},
        "choices is an object, not an array",
    ),
    "choices holding null": ({"choices": [None]}, "choices[0] is null, not an object"),
    "delta a string": (
        {"choices": [{"index": 0, "delta": "hello"}]},
        "choices[0].delta is a string, not an object",
    ),
    "arguments an object": (
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {**CALL, "function": {"name": "lookup", "arguments": {"q": 1}}}
                        ]
                    }
                }
            ]
        },
        "choices[0].delta.tool_calls[0].function.arguments is an object, not a string",
    ),
    "content a number": (
        {"choices": [{"delta": {"content": 5}}]},
        "choices[0].delta.content is a number, not a string",
    ),
    "reasoning an array": (
        {"choices": [{"delta": {"reasoning_content": ["x"]}}]},
        "choices[0].delta.reasoning_content is an array, not a string",
    ),
    "tool_calls an object": (
        {"choices": [{"delta": {"tool_calls": CALL}}]},
        "choices[0].delta.tool_calls is an object, not an array",
    ),
    "index a string": (
        {"choices": [{"delta": {"tool_calls": [{**CALL, "index": "0"}]}}]},
        "choices[0].delta.tool_calls[0].index is a string, not an integer",
    ),
    "id a number": (
        {"choices": [{"delta": {"tool_calls": [{**CALL, "id": 7}]}}]},
        "choices[0].delta.tool_calls[0].id is a number, not a string",
    ),
    "finish_reason a number": (
        {"choices": [{"delta": {}, "finish_reason": 1}]},
        "choices[0].finish_reason is a number, not a string",
    ),
    "usage of the wrong types": (
        {"choices": [], "usage": {"prompt_tokens": "many", "completion_tokens": 3}},
        "usage.prompt_tokens is a string, not a token count",
    ),
    "usage negative": (
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": -3}},
        "usage.completion_tokens is -3, not a token count",
    ),
    "usage an array": ({"choices": [], "usage": [1, 2]}, "usage is an array, not an object"),
    "usage inside the choice a string": (
        {"choices": [{"delta": {}, "usage": "none"}]},
        "choices[0].usage is a string, not an object",
    ),
}


@pytest.mark.parametrize("name", list(WRONG_CHUNKS))
async def test_wrong_shape_chunk_is_a_protocol_error_retried_like_a_cut(
    sim_factory: SimFactory, name: str
) -> None:
    chunk, problem = WRONG_CHUNKS[name]
    plan = FaultPlan(schedule={1: "badchunk"}, bad_chunk=json.dumps(chunk))
    sim = await sim_factory(faults=plan, policy=EchoPolicy())
    start = time.monotonic()
    response = await assemble(kimi(sim, retry=FAST).stream(ModelRequest(Q)))
    assert time.monotonic() - start < 1.0
    assert response.text == "echo: q" and response.attempts == 2
    [retry] = response.retries
    assert type(retry.error) is ProtocolError and retry.error.retryable
    assert retry.error.message == f"a chunk of the wrong shape ({problem}): {compact(chunk)}"
    assert sim.stats.completions == 2


WRONG_BODIES: dict[str, tuple[Any, str]] = {
    "choices null": ({"choices": None}, "choices is missing"),
    "choices empty": ({"choices": []}, "choices is empty"),
    "choices an object": ({"choices": {"message": {}}}, "choices is an object, not an array"),
    "choices holding null": ({"choices": [None]}, "choices[0] is null, not an object"),
    "message a string": (
        {"choices": [{"message": "hi", "finish_reason": "stop"}]},
        "choices[0].message is a string, not an object",
    ),
    "message missing": ({"choices": [{"finish_reason": "stop"}]}, "choices[0].message is missing"),
    "content a list": (
        {"choices": [{"message": {"content": ["a"]}, "finish_reason": "stop"}]},
        "choices[0].message.content is an array, not a string",
    ),
    "arguments an object": (
        {
            "choices": [
                {
                    "message": {
                        "content": "",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}],
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        },
        "choices[0].message.tool_calls[0].function.arguments is an object, not a string",
    ),
    "usage a number": (
        {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "usage": 3},
        "usage is a number, not an object",
    ),
    "not an object": ([1, 2], "the body is an array, not an object"),
}


@pytest.mark.parametrize("name", list(WRONG_BODIES))
async def test_wrong_shape_body_is_a_protocol_error(sim_factory: SimFactory, name: str) -> None:
    body, problem = WRONG_BODIES[name]
    plan = FaultPlan(schedule={1: "badchunk"}, bad_chunk=json.dumps(body))
    sim = await sim_factory(faults=plan, policy=EchoPolicy())
    response = await assemble(kimi(sim, retry=FAST, stream=False).stream(ModelRequest(Q)))
    assert response.text == "echo: q" and response.attempts == 2
    [retry] = response.retries
    assert type(retry.error) is ProtocolError
    assert retry.error.message == f"a response body of the wrong shape ({problem}): {compact(body)}"


async def test_a_200_error_body_is_the_error_it_names(sim_factory: SimFactory) -> None:
    body = {"error": {"type": "engine_overloaded_error", "message": "busy"}}
    plan = FaultPlan(schedule={1: "badchunk"}, bad_chunk=json.dumps(body))
    sim = await sim_factory(faults=plan, policy=EchoPolicy())
    response = await assemble(kimi(sim, retry=FAST, stream=False).stream(ModelRequest(Q)))
    assert response.attempts == 2
    assert type(response.retries[0].error) is errors.EngineOverloadedError


async def test_wrong_shapes_on_every_attempt_end_the_run_with_its_history(
    sim_factory: SimFactory,
) -> None:
    chunk, problem = WRONG_CHUNKS["arguments an object"]
    plan = FaultPlan(schedule={n: "badchunk" for n in (2, 3, 4)}, bad_chunk=json.dumps(chunk))
    sim = await sim_factory(faults=plan, policy=tool_then_answer())
    retry = RetryPolicy(max_attempts=3, base_delay=0.01, jitter=lambda upper: 0.0)
    agent = Agent(kimi(sim, retry=retry), tools=[lookup], budget=Budget(max_steps=5))
    start = time.monotonic()
    result, retries = await run_collecting(agent)
    assert time.monotonic() - start < 1.5
    assert result.stop_reason == "error" and result.error is not None
    assert result.error.startswith("gave up after 3 attempt(s) in ")
    assert f"a chunk of the wrong shape ({problem})" in result.error
    assert [r.attempt for r in retries] == [1, 2]
    assert sim.stats.completions == 4
    assert_first_step_kept(result)


async def test_a_wrong_shape_mid_run_recovers(sim_factory: SimFactory) -> None:
    chunk, _ = WRONG_CHUNKS["choices holding null"]
    plan = FaultPlan(schedule={2: "badchunk"}, bad_chunk=json.dumps(chunk))
    sim = await sim_factory(faults=plan, policy=tool_then_answer())
    agent = Agent(kimi(sim, retry=FAST), tools=[lookup], budget=Budget(max_steps=5))
    result, retries = await run_collecting(agent)
    assert result.stop_reason == "completed" and result.output == "done"
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    assert [s.retries for s in result.steps] == [0, 1]
    assert retries[0].error.startswith("a chunk of the wrong shape (choices[0] is null")


# -- fuzz: the parser, directly --------------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def maybe(value: Any) -> Any:
    """A strategy that gives ``value`` (a strategy) or any JSON value or leaves the key out."""
    return st.one_of(value, json_values)


@st.composite
def chunk_shapes(draw: Any) -> Any:
    """Chunks near the real shape, each field sometimes replaced by any JSON value."""
    fn = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "name": maybe(st.text(max_size=5)),
                "arguments": maybe(st.text(max_size=5)),
            },
        )
    )
    call = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "index": maybe(st.integers(0, 3)),
                "id": maybe(st.text(max_size=5)),
                "type": st.just("function"),
                "function": maybe(st.just(fn)),
            },
        )
    )
    usage = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "prompt_tokens": maybe(st.integers(0, 10**6)),
                "completion_tokens": maybe(st.integers(0, 10**6)),
                "cached_tokens": maybe(st.integers(0, 10**6)),
                "prompt_tokens_details": maybe(st.just({"cached_tokens": 3})),
            },
        )
    )
    delta = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "role": st.just("assistant"),
                "content": maybe(st.text(max_size=5)),
                "reasoning_content": maybe(st.text(max_size=5)),
                "tool_calls": maybe(st.lists(maybe(st.just(call)), max_size=2)),
            },
        )
    )
    choice = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "index": st.just(0),
                "delta": maybe(st.just(delta)),
                "finish_reason": maybe(st.sampled_from(["stop", "length", "tool_calls"])),
                "usage": maybe(st.just(usage)),
            },
        )
    )
    return draw(
        maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "id": st.just("c"),
                    "choices": maybe(st.lists(maybe(st.just(choice)), max_size=2)),
                    "usage": maybe(st.just(usage)),
                },
            )
        )
    )


def assert_well_typed(deltas: list[Any]) -> None:
    for delta in deltas:
        if isinstance(delta, ReasoningDelta | TextDelta):
            assert type(delta.text) is str
        elif isinstance(delta, ToolCallDelta):
            assert type(delta.index) is int and type(delta.arguments) is str
            assert delta.id is None or type(delta.id) is str
            assert delta.name is None or type(delta.name) is str
        elif isinstance(delta, FinishDelta):
            assert delta.reason is None or type(delta.reason) is str
        elif isinstance(delta, UsageDelta):
            u = delta.usage
            for n in (u.input_tokens, u.cached_input_tokens, u.output_tokens):
                assert type(n) is int and n >= 0
        else:
            raise AssertionError(f"unexpected delta {delta!r}")


def assert_named_problem(exc: errors.APIError) -> None:
    """A protocol error always says which field is wrong (never the fallback text)."""
    if isinstance(exc, ProtocolError):
        assert "wrong shape (" in exc.message or exc.message.startswith("malformed")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunk_shapes())
def test_fuzz_chunks_give_typed_deltas_or_a_protocol_error(chunk: Any) -> None:
    out: list[Any] = []
    try:
        chunk_deltas(parse_chunk(json.dumps(chunk).encode()), out)
    except errors.APIError as exc:
        assert_named_problem(exc)
        assert exc.retryable
        return
    assert_well_typed(out)


@settings(max_examples=250, deadline=None)
@given(chunk_shapes())
def test_fuzz_bodies_give_typed_deltas_or_an_agentloop_error(body: Any) -> None:
    # the same shapes as a whole response, with "delta" read as "message"
    raw = json.dumps(body).replace('"delta"', '"message"').encode()
    try:
        obj = json.loads(raw)
        deltas = message_deltas(obj)
    except errors.APIError as exc:
        assert_named_problem(exc)
        return
    assert_well_typed(deltas)


GOOD_STREAM = (
    b"".join(
        b"data: " + compact(c).encode() + b"\n\n"
        for c in (
            {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"delta": {"reasoning_content": "hm"}}]},
            {"choices": [{"delta": {"content": "hi "}}]},
            {"choices": [{"delta": {"tool_calls": [{**CALL, "function": {"arguments": ""}}]}}]},
            {
                "choices": [
                    {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}
                ]
            },
            {
                "choices": [{"delta": {}, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 1},
            },
        )
    )
    + b"data: [DONE]\n\n"
)


def parse_stream(pieces: list[bytes]) -> list[Any]:
    decoder = SSEDecoder()
    out: list[Any] = []
    for piece in [*pieces, None]:
        for event in decoder.feed(piece) if piece is not None else decoder.flush():
            if event == DONE:
                return out
            chunk_deltas(parse_chunk(event), out)
    return out


def merged(deltas: list[Any]) -> list[tuple[str, Any]]:
    """Deltas with same-kind neighbours joined (how many reads a stream came in must not
    matter beyond that)."""
    out: list[tuple[str, Any]] = []
    for d in deltas:
        if isinstance(d, ReasoningDelta | TextDelta) and out and out[-1][0] == type(d).__name__:
            out[-1] = (out[-1][0], out[-1][1] + d.text)
        elif isinstance(d, ReasoningDelta | TextDelta):
            out.append((type(d).__name__, d.text))
        else:
            out.append((type(d).__name__, repr(d)))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(GOOD_STREAM)), max_size=12), st.booleans())
def test_fuzz_sse_framing_split_anywhere_same_deltas(cuts: list[int], crlf: bool) -> None:
    stream = GOOD_STREAM.replace(b"\n", b"\r\n") if crlf else GOOD_STREAM
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert merged(parse_stream(pieces)) == merged(parse_stream([GOOD_STREAM]))


@settings(max_examples=250, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"data: ", b"data:", b"\n", b"\r\n", b"\r", b": ping\n", b"event: x\n", b"{", b"}"]
        )
        | st.binary(max_size=12)
        | st.sampled_from([c for c in GOOD_STREAM.split(b"\n\n") if c]),
        max_size=20,
    )
)
def test_fuzz_sse_garbage_raises_only_agentloop_errors(pieces: list[bytes]) -> None:
    try:
        assert_well_typed(parse_stream(pieces))
    except errors.APIError as exc:
        assert_named_problem(exc)


# -- fuzz: over HTTP, through agent.run -------------------------------------------------------
@pytest.fixture(scope="module")
def threaded_sim() -> Any:
    with SimServer(SimConfig(policy=EchoPolicy())).run_in_thread() as sim:
        yield sim


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chunk_shapes(), st.booleans())
def test_fuzz_over_http_agent_run_always_returns_a_result(
    threaded_sim: SimServer, chunk: Any, stream: bool
) -> None:
    sim = threaded_sim
    n = sim.stats.completions + 1
    sim.config.faults = FaultPlan(schedule={n: "badchunk"}, bad_chunk=json.dumps(chunk))
    retry = RetryPolicy(max_attempts=2, base_delay=0.01, jitter=lambda upper: 0.0)
    agent = Agent(kimi(sim, retry=retry, stream=stream), budget=Budget(max_steps=2))
    result = agent.run_sync("q")
    assert isinstance(result, RunResult)
    assert result.messages[0] == {"role": "user", "content": "q"}
    if result.stop_reason == "error":
        assert result.error is not None and not result.error.startswith("unexpected")
    else:
        assert result.stop_reason in ("completed", "empty_answer")


# -- 2. stalled streams ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("trickle", "the server sent only keep-alive comments, no data, for 0.3s"),
        ("silent", "the server sent its headers, then nothing for 0.3s"),
        ("stall", "the stream stalled: no data for 0.3s after the last event (keep-alive only)"),
    ],
)
async def test_a_stalled_stream_ends_and_is_retried(
    sim_factory: SimFactory, fault: str, message: str
) -> None:
    sim = await sim_factory(faults=FaultPlan(schedule={1: fault}), policy=EchoPolicy())
    model = kimi(sim, retry=FAST, **TIMEOUTS)
    start = time.monotonic()
    response = await assemble(model.stream(ModelRequest(Q)))
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 0.9, elapsed
    assert response.text == "echo: q" and response.attempts == 2
    [retry] = response.retries
    assert type(retry.error) is StreamStalledError and retry.error.retryable
    assert retry.error.message == message


async def test_no_response_headers_within_the_first_byte_timeout(sim_factory: SimFactory) -> None:
    plan = FaultPlan(schedule={1: "slow"}, slow_seconds=3.0)
    sim = await sim_factory(faults=plan, policy=EchoPolicy())
    start = time.monotonic()
    response = await assemble(kimi(sim, retry=FAST, **TIMEOUTS).stream(ModelRequest(Q)))
    assert 0.3 <= time.monotonic() - start < 0.9
    assert response.attempts == 2
    assert response.retries[0].error.message == "no response within 0.3s of sending the request"


async def test_max_total_s_bounds_a_server_that_always_stalls(sim_factory: SimFactory) -> None:
    # the first step succeeds, every later attempt trickles comments; Kimi's own timeouts are
    # far longer than the policy's bound, which cuts the stall where it runs out
    plan = FaultPlan(schedule={n: "trickle" for n in range(2, 100)})
    sim = await sim_factory(faults=plan, policy=tool_then_answer())
    retry = RetryPolicy(max_attempts=50, max_total_s=1.0, base_delay=0.01)
    agent = Agent(kimi(sim, retry=retry), tools=[lookup], budget=Budget(max_steps=5))
    start = time.monotonic()
    result, retries = await run_collecting(agent)
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 1.6, elapsed
    assert retries == [] and sim.stats.completions == 2
    assert result.stop_reason == "error" and result.error is not None
    assert result.error.startswith("gave up after 1 attempt(s) in 1.0s: ")
    assert "RetryPolicy.max_total_s=1 ran out" in result.error
    assert "the server sent only keep-alive comments, no data, for 1s" in result.error
    assert "lower the request rate" not in result.error
    assert_first_step_kept(result)


async def test_stalls_are_retried_until_max_total_s(sim_factory: SimFactory) -> None:
    sim = await sim_factory(faults=FaultPlan(rates={"trickle": 1.0}), policy=EchoPolicy())
    retry = RetryPolicy(max_attempts=50, max_total_s=1.0, base_delay=0.01, jitter=lambda u: 0)
    model = kimi(sim, retry=retry, **TIMEOUTS)
    start = time.monotonic()
    with pytest.raises(RetriesExhaustedError) as info:
        await assemble(model.stream(ModelRequest(Q)))
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 1.4, elapsed
    # 0.3 s stalls with 5-10 ms waits: three whole ones, then the rest of the second
    assert info.value.attempts == 4 and sim.stats.completions == 4
    assert isinstance(info.value.last, StreamStalledError)
    assert "RetryPolicy.max_total_s=1 ran out" in str(info.value)


async def test_a_healthy_stream_is_never_cut(sim_factory: SimFactory) -> None:
    # ~1.2 s of reasoning in batches 30 ms apart: longer than the idle timeout and than
    # max_total_s, but never silent for long
    policy = ScriptedPolicy([Turn(reasoning="thinking " * 1200, content="done")])
    sim = await sim_factory(policy=policy, chunk_chars=8, batch_delay=0.03)
    retry = RetryPolicy(max_total_s=0.4, base_delay=0.01)
    model = kimi(sim, retry=retry, idle_timeout=0.25, first_byte_timeout=0.25)
    start = time.monotonic()
    response = await assemble(model.stream(ModelRequest(Q)))
    assert time.monotonic() - start > 1.0
    assert response.text == "done" and response.attempts == 1 and response.retries == []


async def test_a_buffering_server_gets_a_first_byte_timeout_sized_to_max_tokens(
    sim_factory: SimFactory,
) -> None:
    # the server is silent for 0.6 s (the whole generation); a non-streamed call waits
    # first_byte_timeout + max_tokens / generation_tokens_per_s, whatever max_total_s says
    sim = await sim_factory(policy=EchoPolicy(), latency=0.6)
    retry = RetryPolicy(max_total_s=0.3, base_delay=0.01)
    model = kimi(sim, retry=retry, stream=False, first_byte_timeout=0.2, idle_timeout=0.2)
    model.generation_tokens_per_s = 20_000.0  # 16,000 tokens: 0.8 s more
    start = time.monotonic()
    response = await assemble(model.stream(ModelRequest(Q, max_tokens=16_000)))
    assert time.monotonic() - start >= 0.6
    assert response.text == "echo: q" and response.attempts == 1
    # a streamed server that buffers likewise
    streamed = kimi(sim, retry=retry, first_byte_timeout=0.2, idle_timeout=0.2)
    streamed.buffers_stream = True
    streamed.generation_tokens_per_s = 20_000.0
    response = await assemble(streamed.stream(ModelRequest(Q, max_tokens=16_000)))
    assert response.text == "echo: q" and response.attempts == 1
    # one that streams as it generates is stalled at 0.2 s, retried, and bounded by 0.3 s
    plain = kimi(sim, retry=retry, first_byte_timeout=0.2, idle_timeout=0.2)
    start = time.monotonic()
    with pytest.raises(RetriesExhaustedError) as info:
        await assemble(plain.stream(ModelRequest(Q, max_tokens=16_000)))
    assert 0.3 <= time.monotonic() - start < 0.6
    assert info.value.attempts == 2
    assert info.value.last.message.startswith("no response within 0.")


def test_kimi_timeouts_default_and_override() -> None:
    model = KimiModel(api_key="sk-x", base_url="http://127.0.0.1:9/v1", rpm=None)
    assert (model.idle_timeout, model.first_byte_timeout) == (90.0, 180.0)
    other = KimiModel(api_key="sk-x", rpm=None, idle_timeout=30, first_byte_timeout=None)
    assert (other.idle_timeout, other.first_byte_timeout) == (30, None)


# -- 3. Retry-After ----------------------------------------------------------------------------
def test_retry_after_seconds_dates_and_garbage() -> None:
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(" 1.5 ") == 1.5
    soon = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.5 < (retry_after_seconds(soon) or 0) <= 10.0
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert retry_after_seconds(past) == 0.0
    assert retry_after_seconds("-5") == 0.0
    for bad in ("soon", "inf", "nan", "", None, "Mon, 99 Foo 2024"):
        assert retry_after_seconds(bad) is None


async def test_retry_after_as_an_http_date_is_honoured(sim_factory: SimFactory) -> None:
    sim = await sim_factory(faults=FaultPlan(schedule={1: "retrydate"}, retry_after=4))
    clock = ManualClock()
    model = kimi(sim, clock=clock, retry=RetryPolicy(jitter=lambda upper: 0.0))
    response = await assemble(model.stream(ModelRequest(Q)))
    assert response.attempts == 2
    error = response.retries[0].error
    assert type(error) is errors.RateLimitError and error.retry_after is not None
    # an HTTP date has whole seconds: +4 s from the server's now is 3 to 4 s from ours
    assert len(clock.sleeps) == 1 and 3.0 < clock.sleeps[0] <= 4.0


@pytest.mark.parametrize("fault", ["429", "retrydate"])
async def test_a_stated_wait_beyond_max_total_s_fails_at_once(
    sim_factory: SimFactory, fault: str
) -> None:
    plan = FaultPlan(schedule={2: fault}, retry_after=30)
    sim = await sim_factory(faults=plan, policy=tool_then_answer())
    agent = Agent(
        kimi(sim, retry=RetryPolicy(max_total_s=5)), tools=[lookup], budget=Budget(max_steps=5)
    )
    start = time.monotonic()
    result, retries = await run_collecting(agent)
    assert time.monotonic() - start < 0.5
    assert retries == [] and sim.stats.completions == 2
    assert result.stop_reason == "error" and result.error is not None
    assert result.error.startswith("gave up after 1 attempt(s) in 0.")
    # (an HTTP date has whole seconds: 29.x s from now, said as 30 s)
    assert (
        ": the server asked to wait 30s, more than the 5.0s left of RetryPolicy.max_total_s=5; "
        "last error: 429 rate_limit_reached_error: "
    ) in result.error
    assert "lower the request rate" in result.error  # it was a rate limit
    assert_first_step_kept(result)


# -- 4. bodies that are not the API's --------------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
async def test_an_html_200_is_a_clear_error_not_retried(
    sim_factory: SimFactory, stream: bool
) -> None:
    sim = await sim_factory(faults=FaultPlan(schedule={2: "html"}), policy=tool_then_answer())
    agent = Agent(kimi(sim, retry=FAST, stream=stream), tools=[lookup], budget=Budget(max_steps=5))
    start = time.monotonic()
    result, retries = await run_collecting(agent)
    assert time.monotonic() - start < 0.5
    assert retries == [] and sim.stats.completions == 2
    assert result.stop_reason == "error" and result.error is not None
    want = "event stream" if stream else "JSON body"
    assert result.error.startswith(
        f"the server answered 200 with Content-Type text/html; charset=utf-8, not an {want}"
        if stream
        else f"the server answered 200 with Content-Type text/html; charset=utf-8, not a {want}"
    )
    assert "'<!DOCTYPE html><html><head><title>Hotel Wi-Fi — sign in</title>" in result.error
    assert "proxy or captive portal" in result.error
    assert_first_step_kept(result)


async def test_unexpected_response_error_type_and_snippet(sim_factory: SimFactory) -> None:
    sim = await sim_factory(faults=FaultPlan(rates={"html": 1.0}))
    with pytest.raises(UnexpectedResponseError) as info:
        await assemble(kimi(sim, retry=FAST).stream(ModelRequest(Q)))
    error = info.value
    assert not error.retryable and error.status == 200 and sim.stats.completions == 1
    snippet = error.message.split(": ", 1)[1]
    assert snippet.startswith("'<!DOCTYPE") and len(snippet) <= 202 + 10


async def test_a_json_body_to_a_streamed_request_is_read_whole(sim_factory: SimFactory) -> None:
    # a server (or proxy) that ignores stream: true
    sim = await sim_factory(policy=EchoPolicy())
    model = kimi(sim, extra_body={"stream": False})
    response = await assemble(model.stream(ModelRequest(Q)))
    assert response.text == "echo: q" and response.attempts == 1
    assert response.usage.input_tokens > 0


# -- 5. hints that fit their cause -----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_refused_connection_names_the_base_url() -> None:
    base = f"http://127.0.0.1:{free_port()}/v1"
    model = KimiModel(api_key="sk-x", base_url=base, rpm=None, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(errors.APIConnectionError) as info:
        await assemble(model.stream(ModelRequest(Q)))
    assert f"nothing is listening at {base}" in str(info.value)
    retried = KimiModel(
        api_key="sk-x", base_url=base, rpm=None, retry=RetryPolicy(max_attempts=2, base_delay=0.01)
    )
    start = time.monotonic()
    with pytest.raises(RetriesExhaustedError) as exhausted:
        await assemble(retried.stream(ModelRequest(Q)))
    assert time.monotonic() - start < 0.5
    text = str(exhausted.value)
    assert text.startswith("gave up after 2 attempt(s)")
    assert f"nothing is listening at {base}" in text
    assert "lower the request rate" not in text and "None" not in text


async def test_a_proxy_error_page_says_what_was_received(sim_factory: SimFactory) -> None:
    sim = await sim_factory(faults=FaultPlan(rates={"gateway": 1.0}))
    retry = RetryPolicy(max_attempts=2, base_delay=0.01)
    with pytest.raises(RetriesExhaustedError) as info:
        await assemble(kimi(sim, retry=retry).stream(ModelRequest(Q)))
    last = info.value.last
    assert type(last) is errors.ServerError and last.status == 503 and last.error_type is None
    assert str(last).startswith(
        "HTTP 503: the server answered with a text/html; charset=utf-8 body, not a JSON error: "
        "'<html>\\r\\n<head><title>503 Service Temporarily Unavailable</title>"
    )
    assert "None" not in str(info.value)
    assert "lower the request rate" not in str(info.value)


def test_an_error_without_a_type_prints_no_none() -> None:
    error = errors.error_from_response(503, {"error": {"message": "busy"}})
    assert str(error) == "HTTP 503: busy"
    assert str(errors.error_from_response(502, None)) == "HTTP 502: (no error message)"
    typed = errors.error_from_response(500, {"error": {"type": "server_error", "message": "x"}})
    assert str(typed) == "500 server_error: x"


@pytest.mark.parametrize(("fault", "rate_hint"), [("429", True), ("500", False), ("cut", False)])
async def test_the_request_rate_hint_only_after_rate_limits(
    sim_factory: SimFactory, fault: str, rate_hint: bool
) -> None:
    sim = await sim_factory(faults=FaultPlan(rates={fault: 1.0}, retry_after=0))
    retry = RetryPolicy(max_attempts=2, base_delay=0.01, jitter=lambda upper: 0.0)
    with pytest.raises(RetriesExhaustedError) as info:
        await assemble(kimi(sim, retry=retry).stream(ModelRequest(Q)))
    assert ("lower the request rate" in str(info.value)) is rate_hint
    assert "raise RetryPolicy.max_attempts" in str(info.value)


async def test_timeouts_never_count_a_slow_consumer(
    sim_factory: SimFactory, transport: str
) -> None:
    # the idle timer runs only while we wait for the server, never while the caller holds a
    # delta: a consumer that takes twice the idle timeout per delta still gets all of them
    policy = ScriptedPolicy([Turn(reasoning="r" * 100, content="done")])
    sim = await sim_factory(policy=policy, chunk_chars=1, batch_delay=0.01)
    model = kimi(sim, retry=FAST, idle_timeout=0.05, first_byte_timeout=0.3)
    held = 0
    reasoning = ""
    async with contextlib.aclosing(model.stream(ModelRequest(Q))) as deltas:
        async for delta in deltas:
            assert not isinstance(delta, RetryDelta), delta.error
            if isinstance(delta, ReasoningDelta):
                held += 1
                reasoning += delta.text
                await anyio.sleep(0.1)
    assert reasoning == "r" * 100
    # httpx2 reads one network write at a time: the reasoning came in several reads, each held
    # past the idle timeout. aiohttp hands over all it has buffered, so after the first hold
    # the rest comes in one read (at least two reads, the second after a hold).
    assert held >= (3 if transport == "httpx2" else 2)


@pytest.mark.parametrize("fault", ["reset", "cut", "500"])
async def test_a_retried_attempts_error_is_kept_without_what_it_drags_along(
    sim_factory: SimFactory, fault: str
) -> None:
    # the run keeps every RetryDelta until it ends: a traceback or a chained transport error
    # would keep frames alive, and through them the event loop's timer heap (bench/soak)
    sim = await sim_factory(faults=FaultPlan(schedule={1: fault}), policy=EchoPolicy())
    response = await assemble(kimi(sim, retry=FAST).stream(ModelRequest(Q)))
    assert response.text == "echo: q"
    [retry] = response.retries
    error = retry.error
    assert error.__traceback__ is None and error.__context__ is None
    assert error.__cause__ is None and str(error)
