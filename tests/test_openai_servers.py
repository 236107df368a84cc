"""OpenAI-compatible servers that are not Kimi (issue 13), over real HTTP against the
simulator's server profiles (``agentloop/sim/profiles.py``).

- No usage in the stream: the estimate is booked, marked estimated (step, result, events,
  spans), every budget holds on it, and one ``EstimatedUsageWarning`` per run says so.
- ``[DONE]`` with no finish_reason is a cut stream: retried.
- The window: read from ``/models`` where the server reports it (an explicit value stands),
  learned from each server's context-length error, which is a ``ContextLengthError``.
- A streamed prompt over the window answered 200 with an empty body: retried once, then
  ``EmptyResponseError`` naming the likely cause.
- Timeouts name the setting that fired and its value, never the request rate.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest

from agentloop import Agent, Budget, OpenAIModel, tool
from agentloop import events as ev
from agentloop.errors import (
    ContextLengthError,
    EmptyResponseError,
    EstimatedUsageWarning,
    StreamInterruptedError,
    StreamStalledError,
)
from agentloop.models import ModelRequest, assemble
from agentloop.retry import RetryPolicy
from agentloop.sim import EchoPolicy, FaultPlan, ToolLoopPolicy
from agentloop.sim.profiles import LOCAL_MODEL, profile

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.usefixtures("transport"),
    pytest.mark.filterwarnings("ignore::agentloop.errors.EstimatedUsageWarning"),
]
SimFactory = Callable[..., Any]
Q = [{"role": "user", "content": "q"}]
# the llama-cpp-python profile without its (realistic, slow) buffered generation
LLAMA = profile("llamacpp", decode_tokens_per_s=1e9)
NO_WAIT = RetryPolicy(base_delay=0.01, max_delay=0.01, jitter=lambda u: 0.0)


@tool
def lookup(query: str) -> str:
    """Look a fact up.

    Args:
        query: what to look for.
    """
    return f"fact about {query}: " + "x" * 200


def local(sim: Any, model: str = LOCAL_MODEL, **kwargs: Any) -> OpenAIModel:
    kwargs.setdefault("retry", NO_WAIT)
    kwargs.setdefault("default_max_tokens", 256)  # 8,192 by default: over a 4,096 window
    return OpenAIModel(model, base_url=sim.base_url, **kwargs)


def tool_loop() -> ToolLoopPolicy:
    return ToolLoopPolicy(steps=4, reasoning_chars=0)


# -- no usage in the stream ---------------------------------------------------------------------
async def test_a_stream_without_usage_books_the_estimate_marked_estimated(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(profile=LLAMA, policy=tool_loop())
    agent = Agent(local(sim), tools=[lookup], budget=Budget(per_step_tokens=64))
    events: list[ev.Event] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with agent.stream("go") as run:
            async for event in run:
                events.append(event)
    result = run.result if hasattr(run, "result") else events[-1].result  # type: ignore[union-attr]
    assert result.stop_reason == "completed"
    assert len(result.steps) == 5
    # what the server counted (it reported none of it): the estimate is within a third
    served = sum(u["total_tokens"] for u in sim.stats.usages if u)
    assert served == 1286
    assert result.usage.estimated and result.usage_estimated
    assert 0.9 * served <= result.usage.total_tokens <= 1.3 * served
    assert all(s.usage.estimated and s.usage.input_tokens > 0 for s in result.steps)
    assert all(s.usage.output_tokens > 0 for s in result.steps)
    finished = [e for e in events if isinstance(e, ev.StepFinished)]
    assert [e.record.usage_estimated for e in finished] == [True] * 5
    assert finished[-1].usage_so_far.estimated
    assert finished[-1].usage_so_far.total_tokens == result.usage.total_tokens
    estimated = [w for w in caught if issubclass(w.category, EstimatedUsageWarning)]
    assert len(estimated) == 1  # once per run, not per step
    assert "reported no token usage" in str(estimated[0].message)


async def test_reported_usage_is_not_estimated(sim_factory: SimFactory) -> None:
    sim = await sim_factory(profile=profile("vllm"), policy=EchoPolicy())
    model = local(sim, "Qwen/Qwen2.5-Coder-1.5B-Instruct")  # vLLM honours include_usage
    with warnings.catch_warnings():
        warnings.simplefilter("error", EstimatedUsageWarning)
        result = await Agent(model).run("q")
    assert result.usage.total_tokens == sim.stats.usages[0]["total_tokens"]  # type: ignore[index]
    assert not result.usage.estimated


async def test_max_billed_tokens_holds_on_estimated_usage(sim_factory: SimFactory) -> None:
    # issue 13: streamed, the run completed past the limit the non-streamed run stopped at
    budget = Budget(per_step_tokens=64, max_billed_tokens=1500)
    outcomes = []
    for stream in (False, True):
        sim = await sim_factory(profile=LLAMA, policy=tool_loop())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EstimatedUsageWarning)
            result = await Agent(local(sim, stream=stream), tools=[lookup], budget=budget).run("go")
        outcomes.append((result.stop_reason, result.usage.estimated))
        assert result.usage.total_tokens <= 1500
        assert result.detail is not None and result.detail.startswith("max_billed_tokens")
    assert outcomes == [("token_budget", False), ("token_budget", True)]


async def test_the_estimated_usage_reaches_the_spans(sim_factory: SimFactory) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sim = await sim_factory(profile=LLAMA, policy=ToolLoopPolicy(steps=1, reasoning_chars=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimatedUsageWarning)
        await Agent(local(sim), tools=[lookup]).run("go")
    spans = exporter.get_finished_spans()
    chats = [s for s in spans if s.name == f"chat {LOCAL_MODEL}"]
    [run] = [s for s in spans if s.name == "invoke_agent"]
    assert len(chats) == 2
    assert all(s.attributes["agentloop.usage.estimated"] is True for s in chats)  # type: ignore[index]
    assert run.attributes["agentloop.usage.estimated"] is True  # type: ignore[index]


# -- [DONE] with no finish_reason -------------------------------------------------------------
async def test_done_without_a_finish_reason_is_a_cut_stream_and_retried(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(profile=profile(LLAMA, cut_streams=frozenset({1})), policy=EchoPolicy())
    response = await assemble(local(sim).stream(ModelRequest(Q)))
    assert response.text == "echo: q" and response.finish_reason == "stop"
    assert response.attempts == 2 and sim.stats.cut_at_done == 1
    [retry] = response.retries
    assert type(retry.error) is StreamInterruptedError and retry.error.retryable
    assert retry.error.message == (
        "the stream ended with [DONE] but no finish_reason (the server cut it short)"
    )


async def test_three_concurrent_runs_on_a_busy_server_all_complete(
    sim_factory: SimFactory,
) -> None:
    # llama-cpp-python under three concurrent requests cut two streams to a role chunk and
    # [DONE] (cut_under_concurrency.txt): both runs used to complete with ""
    import anyio

    sim = await sim_factory(profile=LLAMA, policy=EchoPolicy(), latency=0.05)
    results: dict[int, Any] = {}

    async def one(k: int) -> None:
        # staggered retries, so the retried requests find the server free
        retry = RetryPolicy(base_delay=0.2 * (k + 1), jitter=lambda u: u)
        agent = Agent(
            OpenAIModel(LOCAL_MODEL, base_url=sim.base_url, retry=retry, default_max_tokens=256)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EstimatedUsageWarning)
            results[k] = await agent.run(f"task {k}")

    async with anyio.create_task_group() as tg:
        for k in range(3):
            tg.start_soon(one, k)
    assert sim.stats.cut_at_done == 2
    assert {k: (r.stop_reason, r.output) for k, r in results.items()} == {
        k: ("completed", f"echo: task {k}") for k in range(3)
    }


# -- the window of a model that is not Kimi ---------------------------------------------------
@pytest.mark.parametrize(
    ("name", "model", "window"),
    [
        ("vllm", "Qwen/Qwen2.5-Coder-1.5B-Instruct", 32_768),  # max_model_len
        ("sglang", "Qwen/Qwen2.5-Coder-1.5B-Instruct", 32_768),  # max_model_len
        ("llama-server", "anything.gguf", 4096),  # meta.n_ctx_train of the one model served
        ("kimi", "kimi-k2.6", 262_144),  # context_length
    ],
)
async def test_the_window_is_read_from_models_on_first_use(
    sim_factory: SimFactory, name: str, model: str, window: int
) -> None:
    sim = await sim_factory(profile=name, policy=EchoPolicy(), api_keys={"sk-sim": "ai"})
    client = local(sim, model, api_key="sk-sim")
    assert client.context_window == 128_000 and client.context_window_source == "default"
    await assemble(client.stream(ModelRequest(Q)))
    assert (client.context_window, client.context_window_source) == (window, "/models")
    await assemble(client.stream(ModelRequest(Q)))
    assert sim.stats.requests == 3  # /models once, lazily, then two completions


async def test_an_explicit_window_stands_and_a_silent_server_keeps_the_default(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(profile="vllm", policy=EchoPolicy())
    explicit = local(sim, "Qwen/Qwen2.5-Coder-1.5B-Instruct", context_window=8_000)
    await assemble(explicit.stream(ModelRequest(Q)))
    assert (explicit.context_window, sim.stats.requests) == (8_000, 1)  # /models not asked
    llama = await sim_factory(profile=LLAMA, policy=EchoPolicy())
    client = local(llama)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimatedUsageWarning)
        await assemble(client.stream(ModelRequest(Q)))
    assert (client.context_window, client.context_window_source) == (128_000, "default")


BIG = [{"role": "user", "content": "word " * 4000}]  # ~5,000 simulator tokens


@pytest.mark.parametrize(
    ("name", "model", "window", "wording"),
    [
        ("llamacpp", LOCAL_MODEL, 4096, "This model's maximum context length is 4096 tokens"),
        ("vllm", "m", 4096, "This model's maximum context length is 4096 tokens"),
        ("sglang", "m", 4096, "maximum context length of 4096 tokens"),
        ("llama-server", "m", 4096, "the request exceeds the available context size"),
        ("openai", "m", 4096, "This model's maximum context length is 4096 tokens"),
        ("kimi", "m", 4096, "Your request exceeded model token limit: 4096"),
    ],
)
async def test_every_servers_context_length_error_teaches_the_window(
    sim_factory: SimFactory, name: str, model: str, window: int, wording: str
) -> None:
    sim = await sim_factory(profile=name, models={model: window}, policy=EchoPolicy())
    # not streamed (llama-cpp-python answers a streamed overflow with an empty 200), and an
    # explicit window far too large, so the request is sent and refused
    client = local(sim, model, api_key="sk-sim", stream=False, context_window=1_000_000)
    with pytest.raises(ContextLengthError) as info:
        await assemble(client.stream(ModelRequest(BIG, max_tokens=256)))
    assert wording in info.value.message
    assert info.value.window == window and info.value.status == 400
    assert (client.context_window, client.context_window_source) == (window, "error")
    assert sim.stats.completions == 1  # not retried


# -- overflow: 200 with an empty body ---------------------------------------------------------
async def test_an_empty_200_is_retried_once_then_its_own_error(sim_factory: SimFactory) -> None:
    sim = await sim_factory(profile=LLAMA, policy=EchoPolicy())
    client = local(sim, retry=RetryPolicy(base_delay=0.01, jitter=lambda u: u))
    with pytest.raises(EmptyResponseError) as info:
        await assemble(client.stream(ModelRequest(BIG, max_tokens=256)))
    error = info.value
    assert sim.stats.empty_overflows == 2 and sim.stats.completions == 2
    assert not error.retryable and error.status == 200
    assert error.message == "the server answered 200 with an empty body, twice for the same request"
    assert "over the server's context window" in str(error)
    assert "rate" not in str(error)


# -- timeouts ---------------------------------------------------------------------------------
async def test_a_buffered_tool_stream_names_the_first_byte_timeout(
    sim_factory: SimFactory,
) -> None:
    # with tools offered llama-cpp-python sends nothing until the whole generation is done:
    # ~24 tokens at 40 tokens/s is 0.6s before the first byte
    slow = profile("llamacpp", decode_tokens_per_s=40.0)
    sim = await sim_factory(profile=slow, policy=ToolLoopPolicy(steps=1, reasoning_chars=0))
    tools = Agent(local(sim), tools=[lookup]).toolbox.specs
    request = ModelRequest(Q, tools, max_tokens=64)
    client = local(sim, first_byte_timeout=0.2, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(StreamStalledError) as info:
        await assemble(client.stream(request))
    text = str(info.value)
    assert info.value.message == "no response within 0.2s of sending the request"
    assert "first_byte_timeout=0.2s fired" in text
    assert "buffers the whole generation when tools are offered" in text
    assert "rate" not in text.replace("generation", "")
    # sized to max_tokens at the server's decode speed, the same call succeeds (on a fresh
    # server: this one is still generating the abandoned answer, and would cut the stream)
    sim = await sim_factory(profile=slow, policy=ToolLoopPolicy(steps=1, reasoning_chars=0))
    sized = local(sim, first_byte_timeout=0.2, buffers_stream=True, generation_tokens_per_s=40.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimatedUsageWarning)
        response = await assemble(sized.stream(request))
    assert response.tool_calls and response.attempts == 1


async def test_an_idle_stall_names_the_idle_timeout(sim_factory: SimFactory) -> None:
    sim = await sim_factory(faults=FaultPlan(schedule={1: "stall"}), policy=EchoPolicy())
    client = OpenAIModel(
        "kimi-k2.6",
        api_key="sk-sim",
        base_url=sim.base_url,
        idle_timeout=0.2,
        retry=RetryPolicy(max_attempts=1),
    )
    with pytest.raises(StreamStalledError) as info:
        await assemble(client.stream(ModelRequest(Q)))
    assert str(info.value) == (
        "the stream stalled: no data for 0.2s after the last event (keep-alive only) — "
        "idle_timeout=0.2s fired"
    )


async def test_the_first_step_is_sized_against_the_window_the_server_reports(
    sim_factory: SimFactory,
) -> None:
    sim = await sim_factory(profile="llama-server", policy=EchoPolicy(), api_keys={"sk-sim": "ai"})
    client = local(sim, "anything.gguf", api_key="sk-sim")
    history = [{"role": "user", "content": "word " * 5_000}]  # about 6K tokens: over 4,096
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimatedUsageWarning)
        result = await Agent(client, context=[]).run(history=history)
    # the window (4,096) was asked for before step 1, so nothing over it was sent
    assert client.context_window == 4_096
    assert result.stop_reason == "token_budget" and "context_window" in (result.detail or "")
    assert sim.stats.completions == 0
