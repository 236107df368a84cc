"""The wire contract (shared/docs/kimi-contract.md), statement by statement, over real HTTP
against the simulator — streamed and non-streamed where both exist."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

from agentloop import errors
from agentloop.messages import Usage
from agentloop.models import (
    WEB_SEARCH,
    KimiModel,
    ModelRequest,
    OpenAIModel,
    ReasoningDelta,
    TextDelta,
    ToolSpec,
    assemble,
)
from agentloop.sim import FaultPlan, ScriptedPolicy, SimServer, ToolCall, Turn

from .conftest import kimi

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]
LOOKUP = ToolSpec(
    "lookup",
    "Look a thing up.",
    {
        "type": "object",
        "title": "Args",
        "properties": {"q": {"type": "string", "title": "Q"}},
        "required": ["q"],
    },
)
BOTH = pytest.mark.parametrize("stream", [True, False], ids=["streamed", "plain"])


async def call(model: KimiModel | OpenAIModel, messages: list[dict[str, Any]], **kw: Any) -> Any:
    return await assemble(model.stream(ModelRequest(messages, **kw)))


def raw_client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers={"Authorization": "Bearer sk-sim"})


async def raw_post(sim: SimServer, body: dict[str, Any]) -> httpx2.Response:
    async with raw_client() as client:
        return await client.post(f"{sim.base_url}/chat/completions", json=body)


# 1. endpoint, auth, regions ----------------------------------------------------------------
@BOTH
async def test_01_auth_and_region_error_names_base_url(sim: SimServer, stream: bool) -> None:
    model = KimiModel(api_key="sk-wrong-secret-123", base_url=sim.base_url, rpm=None, stream=stream)
    with pytest.raises(errors.AuthenticationError) as info:
        await call(model, [{"role": "user", "content": "hi"}])
    text = str(info.value)
    assert sim.base_url in text and "region" in text and "api.moonshot.cn" in text
    assert "sk-wrong-secret-123" not in text + repr(info.value) + repr(model)
    assert info.value.status == 401 and info.value.request_id


async def test_01_cn_key_on_ai_region_is_401(sim_factory: SimFactory) -> None:
    sim = await sim_factory(api_keys={"sk-sim": "ai", "sk-cn": "cn"})
    model = KimiModel(api_key="sk-cn", base_url=sim.base_url, rpm=None)
    with pytest.raises(errors.AuthenticationError):
        await call(model, [{"role": "user", "content": "hi"}])


def test_01_defaults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOONSHOT_API_KEY", "sk-env")
    monkeypatch.delenv("MOONSHOT_BASE_URL", raising=False)
    assert KimiModel().base_url == "https://api.moonshot.ai/v1"
    monkeypatch.setenv("MOONSHOT_BASE_URL", "https://api.moonshot.cn/v1")
    assert KimiModel().base_url == "https://api.moonshot.cn/v1"
    monkeypatch.delenv("MOONSHOT_API_KEY")
    with pytest.raises(errors.ConfigurationError, match="MOONSHOT_API_KEY"):
        KimiModel()


# 2-6. request shape -----------------------------------------------------------------------
@BOTH
async def test_02_to_06_request_body(sim: SimServer, stream: bool) -> None:
    model = kimi(sim, stream=stream)
    await call(model, [{"role": "user", "content": "hi"}], tools=[LOOKUP])
    body = sim.stats.bodies[-1]
    assert body["thinking"] == {"type": "enabled", "keep": "all"}
    assert "reasoning_effort" not in body
    for fixed in ("temperature", "top_p", "n", "presence_penalty", "frequency_penalty"):
        assert fixed not in body
    assert "tool_choice" not in body
    assert body["max_tokens"] == 32_000
    assert "prompt_cache_key" not in body  # 9
    if stream:
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    else:
        assert "stream" not in body


async def test_03_sampler_is_locked_with_thinking(sim: SimServer) -> None:
    with pytest.raises(errors.ConfigurationError, match="temperature"):
        kimi(sim, temperature=0.7)
    response = await raw_post(
        sim,
        {"model": "kimi-k2.6", "temperature": 0.7, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "invalid temperature: only 1 is allowed for this model"
    )
    off = kimi(sim, thinking=False)
    await call(off, [{"role": "user", "content": "hi"}])
    assert sim.stats.bodies[-1]["thinking"] == {"type": "disabled"}
    assert sim.stats.bodies[-1]["temperature"] == 0.6


async def test_02_thinking_bool_is_rejected_by_the_simulator(sim: SimServer) -> None:
    response = await raw_post(
        sim,
        {"model": "kimi-k2.6", "thinking": True, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 400
    both = await raw_post(
        sim,
        {
            "model": "kimi-k2.6",
            "thinking": {"type": "enabled"},
            "reasoning_effort": "high",
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert both.status_code == 400


async def test_04_tool_choice_restricted(sim: SimServer) -> None:
    model = kimi(sim)
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(errors.ConfigurationError, match="tool_choice"):
        await call(model, msgs, tools=[LOOKUP], tool_choice="required")
    await call(model, msgs, tools=[LOOKUP], tool_choice="none")
    # forcing a tool is possible on purpose, with thinking off for that call
    await call(model, msgs, tools=[LOOKUP], tool_choice="lookup", thinking=False)
    assert sim.stats.bodies[-1]["tool_choice"] == {
        "type": "function",
        "function": {"name": "lookup"},
    }
    response = await raw_post(
        sim, {"model": "kimi-k2.6", "tool_choice": "required", "messages": msgs}
    )
    assert response.status_code == 400


async def test_05_max_tokens_floor_default_and_clamp(sim: SimServer) -> None:
    model = kimi(sim)
    await call(model, [{"role": "user", "content": "hi"}], max_tokens=2048)
    assert sim.stats.bodies[-1]["max_tokens"] == 16_000
    big = "word " * 200_000  # ~250K tokens of history: only a little room is left
    await call(model, [{"role": "user", "content": big}])
    sent = sim.stats.bodies[-1]["max_tokens"]
    assert 0 < sent < 32_000
    huge = {
        "model": "kimi-k2.6",
        "max_tokens": 32_000,
        "messages": [{"role": "user", "content": big}],
    }
    response = await raw_post(sim, huge)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Your request exceeded model token limit: 262144"


# 7. tools -----------------------------------------------------------------------------------
async def test_07_tool_rules(sim: SimServer) -> None:
    model = kimi(sim)
    msgs = [{"role": "user", "content": "hi"}]
    await call(model, msgs, tools=[LOOKUP])
    sent = sim.stats.bodies[-1]["tools"][0]["function"]
    assert "title" not in json.dumps(sent["parameters"]) and sent["strict"] is True
    with pytest.raises(errors.ToolSchemaError, match="name"):
        await call(model, msgs, tools=[ToolSpec("x", "bad name", {"type": "object"})])
    with pytest.raises(errors.ConfigurationError, match="duplicate"):
        await call(model, msgs, tools=[LOOKUP, LOOKUP])
    many = [ToolSpec(f"tool_{i}", "t", {"type": "object"}) for i in range(129)]
    with pytest.raises(errors.ConfigurationError, match="128"):
        await call(model, msgs, tools=many)
    bad_schema = ToolSpec(
        "bad", "t", {"type": "object", "properties": {"$ref": {"type": "string"}}}
    )
    with pytest.raises(errors.ToolSchemaError, match="reserved"):
        await call(model, msgs, tools=[bad_schema])
    raw = await raw_post(
        sim,
        {
            "model": "kimi-k2.6",
            "messages": msgs,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "bad",
                        "parameters": {
                            "type": "object",
                            "properties": {"$ref": {"type": "string"}},
                        },
                    },
                }
            ],
        },
    )
    assert raw.status_code == 400 and "reserved" in raw.json()["error"]["message"]


# 8. $web_search -----------------------------------------------------------------------------
async def test_08_web_search_builtin(sim_factory: SimFactory) -> None:
    args = '{"search_result":{"search_id":"abc"}}'
    sim = await sim_factory(
        policy=ScriptedPolicy(
            [Turn(tool_calls=[ToolCall("$web_search", args, id="call.1")]), Turn(content="done")]
        )
    )
    model = kimi(sim)
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "news?"}]
    first = await call(model, msgs, tools=[WEB_SEARCH])
    body = sim.stats.bodies[-1]
    assert body["tools"] == [{"type": "builtin_function", "function": {"name": "$web_search"}}]
    assert body["thinking"] == {"type": "disabled"}
    call_ = first.tool_calls[0]
    assert call_["function"]["arguments"] == args
    msgs += [
        first.message,
        {
            "role": "tool",
            "tool_call_id": call_["id"],
            "name": "$web_search",
            "content": call_["function"]["arguments"],
        },
    ]
    assert (await call(model, msgs, tools=[WEB_SEARCH])).text == "done"


# 10-12. history -----------------------------------------------------------------------------
IDS = ["functions.get_weather:0", "functions.a-b:12", "call.with.dots.7"]


@BOTH
async def test_10_12_history_round_trip(sim_factory: SimFactory, stream: bool) -> None:
    sim = await sim_factory(
        strict=True,
        policy=ScriptedPolicy(
            [
                Turn(
                    reasoning="", tool_calls=[ToolCall("lookup", '{"q": "a"}', id=i) for i in IDS]
                ),
                Turn(reasoning="thinking twice", content="answer"),
            ]
        ),
    )
    model = kimi(sim, stream=stream)
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "q"}]
    first = await call(model, msgs, tools=[LOOKUP])
    assert first.message["reasoning_content"] == ""  # kept even when empty
    assert [c["id"] for c in first.tool_calls] == IDS
    msgs.append(first.message)
    msgs += [{"role": "tool", "tool_call_id": c["id"], "content": "r"} for c in first.tool_calls]
    second = await call(model, msgs, tools=[LOOKUP])
    assert second.text == "answer"
    sent = sim.stats.bodies[-1]["messages"]
    assert sent[1]["reasoning_content"] == "" and sent[1]["content"] == ""
    assert [c["id"] for c in sent[1]["tool_calls"]] == IDS
    assert [m["tool_call_id"] for m in sent[2:]] == IDS


async def test_10_missing_reasoning_is_filled_and_enforced(sim: SimServer) -> None:
    history = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": ""}],
            "tool_calls": [
                {
                    "id": "functions.lookup:0",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "functions.lookup:0", "content": "r"},
    ]
    plain = [history[0], {**history[1], "content": ""}, history[2]]
    raw = await raw_post(sim, {"model": "kimi-k2.6", "messages": plain})
    assert raw.status_code == 400
    assert raw.json()["error"]["message"] == (
        "thinking is enabled but reasoning_content is missing in assistant tool call message "
        "at index 1"
    )
    await call(kimi(sim), history)  # the client fixes both problems (10 and 11)
    sent = sim.stats.bodies[-1]["messages"][1]
    assert sent["reasoning_content"] == "" and sent["content"] == ""
    assert "reasoning_content" not in history[1]  # the caller's history is not mutated


async def test_11_empty_text_part_rejected_by_simulator(sim: SimServer) -> None:
    raw = await raw_post(
        sim,
        {
            "model": "kimi-k2.6",
            "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}],
        },
    )
    assert raw.status_code == 400 and raw.json()["error"]["message"].endswith(
        "text content is empty"
    )


async def test_12_unanswered_or_unknown_tool_ids_rejected(sim: SimServer) -> None:
    assistant = {
        "role": "assistant",
        "reasoning_content": "",
        "content": "",
        "tool_calls": [
            {"id": "a.1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
        ],
    }
    for tail in (
        [{"role": "tool", "tool_call_id": "a_1", "content": "x"}],
        [{"role": "user", "content": "next"}],
    ):
        raw = await raw_post(
            sim,
            {
                "model": "kimi-k2.6",
                "messages": [{"role": "user", "content": "q"}, assistant, *tail],
            },
        )
        assert raw.status_code == 400


# 13-17. responses ---------------------------------------------------------------------------
@BOTH
async def test_13_14_response_parsing(sim_factory: SimFactory, stream: bool) -> None:
    sim = await sim_factory(
        chunk_chars=3,
        policy=ScriptedPolicy(
            [
                Turn(
                    reasoning="a long line of thought",
                    content="",
                    tool_calls=[
                        ToolCall("lookup", '{"q": "first query"}'),
                        ToolCall("lookup", '{"q": "second query"}'),
                    ],
                )
            ]
        ),
    )
    model = kimi(sim, stream=stream)
    deltas = [
        d async for d in model.stream(ModelRequest([{"role": "user", "content": "q"}], [LOOKUP]))
    ]
    kinds = [type(d) for d in deltas if isinstance(d, (ReasoningDelta, TextDelta))]
    assert kinds and kinds[0] is ReasoningDelta
    response = await call(model, [{"role": "user", "content": "q"}], tools=[LOOKUP])
    assert response.finish_reason == "tool_calls"
    assert response.reasoning == "a long line of thought"
    assert [json.loads(c["function"]["arguments"])["q"] for c in response.tool_calls] == [
        "first query",
        "second query",
    ]
    assert response.request_id and response.request_id.startswith("sim-")  # 17


async def test_15_usage_in_either_place_and_cached_tokens(sim: SimServer) -> None:
    model = kimi(sim)
    msgs = [{"role": "user", "content": "a question " * 100}]
    first = await call(model, msgs)  # usage at the top level of the last chunk
    second = await call(model, msgs)  # usage inside choices[0]
    assert first.usage.input_tokens > 0 and second.usage.input_tokens == first.usage.input_tokens
    assert first.usage.cached_input_tokens == 0
    assert second.usage.cached_input_tokens == second.usage.input_tokens
    parsed = Usage.from_wire(
        {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 7}}
    )
    assert parsed.cached_input_tokens == 7


@BOTH
async def test_16_length_with_no_answer(sim_factory: SimFactory, stream: bool) -> None:
    sim = await sim_factory(
        policy=ScriptedPolicy(
            [Turn(reasoning="thinking " * 50, reasoning_tokens=40_000, content="the answer")]
        )
    )
    response = await call(kimi(sim, stream=stream), [{"role": "user", "content": "q"}])
    assert response.finish_reason == "length"
    assert response.text == "" and not response.tool_calls
    assert response.usage.output_tokens == 32_000


# 18-19. errors and retries ------------------------------------------------------------------
ERROR_ROWS = [
    ("filter", errors.ContentFilterError, 400),
    ("auth", errors.AuthenticationError, 401),
    ("403", errors.PermissionDeniedError, 403),
    ("quota", errors.QuotaExceededError, 429),
]


@pytest.mark.parametrize(("fault", "kind", "status"), ERROR_ROWS)
async def test_18_non_retryable_rows_fail_fast(
    sim_factory: SimFactory, fault: str, kind: type, status: int
) -> None:
    sim = await sim_factory(faults=FaultPlan(schedule={1: fault}))
    with pytest.raises(kind) as info:
        await call(kimi(sim), [{"role": "user", "content": "q"}])
    assert info.value.status == status and info.value.error_type and info.value.request_id
    assert sim.stats.completions == 1  # no retry


async def test_18_unknown_model_is_not_found(sim: SimServer) -> None:
    with pytest.raises(errors.NotFoundError) as info:
        await call(kimi(sim, model="kimi-k9"), [{"role": "user", "content": "q"}])
    assert "kimi-k9" in info.value.message


async def test_18_invalid_request(sim: SimServer) -> None:
    model = OpenAIModel(
        "kimi-k2.6", api_key="sk-sim", base_url=sim.base_url, extra_body={"temperature": 0.2}
    )
    with pytest.raises(errors.InvalidRequestError) as info:
        await call(model, [{"role": "user", "content": "q"}])
    assert info.value.error_type == "invalid_request_error"


# 21-22. other endpoints ---------------------------------------------------------------------
async def test_21_estimate_token_count(sim: SimServer) -> None:
    model = kimi(sim)
    msgs = [{"role": "user", "content": "x" * 400}]
    assert await model.estimate_token_count(msgs) == 104
    assert model.estimate_tokens(msgs) >= 104  # the local estimate errs on the high side


async def test_22_partial_mode(sim_factory: SimFactory) -> None:
    sim = await sim_factory(policy=ScriptedPolicy([Turn(content="Dear Sir, thank you.")]))
    msgs = [
        {"role": "user", "content": "write"},
        {"role": "assistant", "content": "Dear Sir,", "partial": True},
    ]
    response = await call(kimi(sim, thinking=False), msgs)
    assert response.text == " thank you."
    assert sim.stats.bodies[-1]["messages"][-1]["partial"] is True


# OpenAI-compatible endpoints get none of Kimi's rules --------------------------------------
async def test_openai_model_sends_plain_requests(sim: SimServer) -> None:
    model = OpenAIModel("kimi-k2.6", api_key="sk-sim", base_url=sim.base_url)
    history = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "reasoning_content": "r"},
        {"role": "user", "content": "again"},
    ]
    await call(model, history, tools=[LOOKUP])
    body = sim.stats.bodies[-1]
    assert "thinking" not in body and "reasoning_content" not in body["messages"][1]
    assert body["tools"][0]["function"]["parameters"]["title"] == "Args"  # sent as given
