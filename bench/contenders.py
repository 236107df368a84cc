"""The same tool-calling task run by each contender: ``python -m bench.contenders NAME URL OPTS``.

Every contender drives the simulator's tool loop (one ``lookup`` call per step, ~1.5 KB results,
then an answer) with thinking disabled (the peers do not send ``reasoning_content`` back) and
no retries. A warm-up run is excluded; then ``runs`` runs (``concurrency`` at a time) are timed.
Prints one JSON line: CPU seconds and wall seconds of the timed part, model calls made, and the
process's peak RSS.
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson

MODEL = "kimi-k2.6"
KEY = "sk-sim"
NO_THINKING = {"thinking": {"type": "disabled"}}
TASK = "Find out about the harbour archive and summarise it."
RESULT = ("The harbour archive ledger lists vessels, cargo and dates. " * 26)[:1500]
SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "what to look up"}},
    "required": ["query"],
    "additionalProperties": False,
}


async def lookup_impl(query: str) -> str:
    # async and I/O-free for every contender: the floor calls it inline, and nobody pays a
    # worker-thread hop that another contender does not
    return f"{query}: {RESULT}"


Runner = Callable[[], Awaitable[int]]  # one run; returns the model calls it made


# -- the floors: minimal hand-written loops, as lean as such a loop gets ---------------------------
# orjson both ways and one pass over the SSE bytes (no text decoding, no line iterator), so a
# ratio to a floor is the cost of everything a runtime adds over the bare HTTP stack.
class _Assembler:
    """Folds streamed chunks into one assistant message (the floors' whole SSE handling)."""

    __slots__ = ("calls", "content", "pending")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.pending = b""

    def feed(self, data: bytes) -> None:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            choices = orjson.loads(line[6:]).get("choices")
            if not choices:
                continue
            delta = choices[0].get("delta") or {}
            text = delta.get("content")
            if text:
                self.content.append(text)
            for piece in delta.get("tool_calls") or ():
                slot = self.calls.get(piece["index"])
                if slot is None:
                    slot = self.calls[piece["index"]] = {
                        "id": "",
                        "type": "function",
                        "function": {"name": "", "arguments": ""},
                    }
                slot["id"] = piece.get("id") or slot["id"]
                fn = piece.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return message


def _floor_body(messages: list[dict[str, Any]], stream: bool) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "messages": messages,
            "tools": FLOOR_TOOLS,
            "max_tokens": 4096,
            "stream": stream,
            **NO_THINKING,
        }
    )


FLOOR_TOOLS = [
    {
        "type": "function",
        "function": {"name": "lookup", "description": "Look up.", "parameters": SCHEMA},
    }
]
FLOOR_HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def _floor_loop(call: Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]) -> Runner:
    async def run() -> int:
        messages: list[dict[str, Any]] = [{"role": "user", "content": TASK}]
        made = 0
        while True:
            message = await call(messages)
            made += 1
            messages.append(message)
            if not message.get("tool_calls"):
                return made
            for tc in message["tool_calls"]:
                args = orjson.loads(tc["function"]["arguments"])
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": tc["id"],
                        "content": await lookup_impl(args["query"]),
                    }
                )

    return run


def httpx_floor(base_url: str, stream: bool) -> Runner:
    import httpx2

    client = httpx2.AsyncClient(
        base_url=base_url,
        headers=FLOOR_HEADERS,
        timeout=60,
        limits=httpx2.Limits(max_connections=None, max_keepalive_connections=None),
    )

    async def call(messages: list[dict[str, Any]]) -> dict[str, Any]:
        body = _floor_body(messages, stream)
        if not stream:
            response = await client.post("/chat/completions", content=body)
            response.raise_for_status()
            return orjson.loads(response.content)["choices"][0]["message"]  # type: ignore[no-any-return]
        assembler = _Assembler()
        async with client.stream("POST", "/chat/completions", content=body) as response:
            response.raise_for_status()
            async for data in response.aiter_bytes():
                assembler.feed(data)
        return assembler.message()

    return _floor_loop(call)


# -- the aiohttp floor: the same minimal loop on aiohttp (the fast extra) ------------------------
def aiohttp_floor(base_url: str, stream: bool) -> Runner:
    import aiohttp

    session: aiohttp.ClientSession | None = None  # made inside the running loop
    url = f"{base_url}/chat/completions"

    async def call(messages: list[dict[str, Any]]) -> dict[str, Any]:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(
                headers=FLOOR_HEADERS,
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=60),
            )
        body = _floor_body(messages, stream)
        async with session.post(url, data=body) as response:
            response.raise_for_status()
            if not stream:
                return orjson.loads(await response.read())["choices"][0]["message"]  # type: ignore[no-any-return]
            assembler = _Assembler()
            async for data in response.content.iter_any():
                assembler.feed(data)
        return assembler.message()

    return _floor_loop(call)


# -- a loop on the official openai SDK ---------------------------------------------------------
def openai_sdk(base_url: str, stream: bool) -> Runner:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    tools: Any = [
        {
            "type": "function",
            "function": {"name": "lookup", "description": "Look up.", "parameters": SCHEMA},
        }
    ]

    async def run() -> int:
        messages: list[Any] = [{"role": "user", "content": TASK}]
        made = 0
        while True:
            made += 1
            if stream:
                content, calls = "", {}
                async for chunk in await client.chat.completions.create(
                    model=MODEL,
                    messages=messages,
                    tools=tools,
                    max_tokens=4096,
                    stream=True,
                    extra_body=NO_THINKING,
                ):
                    if not chunk.choices:
                        continue
                    delta = chunk.choices[0].delta
                    content += delta.content or ""
                    for piece in delta.tool_calls or ():
                        slot = calls.setdefault(
                            piece.index,
                            {
                                "id": "",
                                "type": "function",
                                "function": {"name": "", "arguments": ""},
                            },
                        )
                        slot["id"] = piece.id or slot["id"]
                        if piece.function:
                            slot["function"]["name"] += piece.function.name or ""
                            slot["function"]["arguments"] += piece.function.arguments or ""
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    message["tool_calls"] = [calls[i] for i in sorted(calls)]
            else:
                completion = await client.chat.completions.create(
                    model=MODEL,
                    messages=messages,
                    tools=tools,
                    max_tokens=4096,
                    extra_body=NO_THINKING,
                )
                message = completion.choices[0].message.model_dump(exclude_none=True)
            messages.append(message)
            if not message.get("tool_calls"):
                return made
            for tc in message["tool_calls"]:
                args = json.loads(tc["function"]["arguments"])
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": tc["id"],
                        "content": await lookup_impl(args["query"]),
                    }
                )

    return run


# -- agentloop -----------------------------------------------------------------------------------
def agentloop_agent(
    base_url: str,
    *,
    retries: bool = False,
    on_call: Callable[[], None] | None = None,
    budget: Any = None,
    context: Any = None,
    **model_options: Any,
) -> Any:
    """agentloop on the simulator's tool loop, as every benchmark runs it: thinking off, no
    client rate limit, ``lookup`` as the tool (``on_call`` runs at each call). ``retries``:
    agentloop's default RetryPolicy, else one attempt a call; ``model_options`` go to
    ``KimiModel`` (``stream``, ``transport``, ``idle_timeout``, ``context_window``...)."""
    from agentloop import Agent, Budget, KimiModel, tool

    @tool
    async def lookup(query: str) -> str:
        """Look up.

        Args:
            query: what to look up.
        """
        if on_call is not None:
            on_call()
        return await lookup_impl(query)

    model = KimiModel(
        api_key=KEY, base_url=base_url, thinking=False, rpm=None, max_tokens=4096, **model_options
    )
    if not retries:
        model.retry.max_attempts = 1
    return Agent(model, tools=[lookup], budget=budget or Budget(max_steps=100), context=context)


def agentloop(base_url: str, stream: bool, transport: str = "httpx2") -> Runner:
    agent = agentloop_agent(base_url, stream=stream, transport=transport)

    async def run() -> int:
        result = await agent.run(TASK)
        if not result.ok:
            raise RuntimeError(f"agentloop run ended {result.stop_reason}: {result.error}")
        return len(result.steps)

    return run


# -- openai-agents ---------------------------------------------------------------------------------
def openai_agents(base_url: str, stream: bool) -> Runner:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)

    @function_tool
    async def lookup(query: str) -> str:
        """Look up.

        Args:
            query: what to look up.
        """
        return await lookup_impl(query)

    client = AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    agent = Agent(
        name="bench",
        instructions=None,
        tools=[lookup],
        model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
        model_settings=ModelSettings(max_tokens=4096, extra_body=NO_THINKING),
    )

    async def run() -> int:
        if stream:
            result = Runner.run_streamed(agent, TASK, max_turns=100)
            async for _ in result.stream_events():
                pass
        else:
            result = await Runner.run(agent, TASK, max_turns=100)  # type: ignore[assignment]
        return len(result.raw_responses)

    return run


# -- pydantic-ai -----------------------------------------------------------------------------------
def pydantic_ai(base_url: str, stream: bool) -> Runner:
    from openai import AsyncOpenAI
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    client = AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client))
    agent = Agent(model, model_settings={"max_tokens": 4096, "extra_body": NO_THINKING})

    @agent.tool_plain
    async def lookup(query: str) -> str:
        """Look up.

        Args:
            query: what to look up.
        """
        return await lookup_impl(query)

    async def run() -> int:
        if stream:
            requests = 0
            async with agent.run_stream_events(TASK) as events:
                async for event in events:
                    result = getattr(event, "result", None)
                    if result is not None:
                        requests = result.usage().requests
            return requests
        result = await agent.run(TASK)
        return result.usage().requests

    return run


CONTENDERS: dict[str, Callable[[str, bool], Runner]] = {
    "httpx2 loop (floor)": httpx_floor,
    "aiohttp loop (floor)": aiohttp_floor,
    "openai SDK loop": openai_sdk,
    "agentloop": agentloop,
    "agentloop (aiohttp)": functools.partial(agentloop, transport="aiohttp"),
    "openai-agents": openai_agents,
    "pydantic-ai": pydantic_ai,
}


REQUIRES = {
    "aiohttp loop (floor)": "aiohttp",
    "agentloop (aiohttp)": "aiohttp",
    "openai SDK loop": "openai",
    "openai-agents": "agents",
    "pydantic-ai": "pydantic_ai",
}


def available() -> list[str]:
    """The contenders whose libraries are installed (the peers come with the ``bench`` extra)."""
    from .harness import installed

    return [n for n in CONTENDERS if n not in REQUIRES or installed(REQUIRES[n])]


async def measure(name: str, base_url: str, options: dict[str, Any]) -> dict[str, Any]:
    run = CONTENDERS[name](base_url, bool(options.get("stream")))
    runs = int(options.get("runs", 5))
    limit = anyio.CapacityLimiter(int(options.get("concurrency", 1)))
    await run()  # warm-up: imports, connection, first-call caches
    calls = 0

    async def one() -> None:
        nonlocal calls
        async with limit:
            made = await run()  # (not `calls += await run()`: that reads `calls` before awaiting)
            calls += made

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(runs):
            group.start_soon(one)
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "calls": calls,
        "runs": runs,
        "rss_mb": cpu1.ru_maxrss / 1024,
    }


if __name__ == "__main__":
    report = anyio.run(measure, sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
    print(json.dumps(report))
