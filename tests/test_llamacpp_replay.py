"""The recorded llama.cpp traffic (``shared/conformance/llamacpp``), replayed byte for byte
through ``OpenAIModel`` by a tiny loopback server (issue 13).

Each recorded request is rebuilt as a ``ModelRequest``; the body ``OpenAIModel`` sends must be
the recorded one (the server looks its response up by it), and the response assembled from the
recorded bytes must hold the recorded text, tool calls and finish_reason. Streams carry no usage
(the estimate is booked, marked estimated); bodies carry the server's. The two streams the server
cut under concurrency are retried; the 400 over the window is a ``ContextLengthError`` that
teaches the window.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentloop import OpenAIModel
from agentloop.errors import ContextLengthError, StreamInterruptedError
from agentloop.models import ModelRequest, ToolSpec, assemble
from agentloop.retry import RetryPolicy

from .conftest import SHARED

pytestmark = pytest.mark.anyio
RECORDED = SHARED / "conformance" / "llamacpp"
if not RECORDED.is_dir():
    pytest.skip(f"no recorded llama.cpp traffic at {RECORDED}", allow_module_level=True)
LISTING = json.dumps(
    {
        "object": "list",
        "data": [
            {
                "id": "qwen2.5-coder-1.5b-instruct.gguf",
                "object": "model",
                "owned_by": "me",
                "permissions": [],
            }
        ],
    }
).encode()
NO_WAIT = RetryPolicy(base_delay=0.01, max_delay=0.01, jitter=lambda u: 0.0)


def records(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (RECORDED / name).read_text().splitlines() if line]


def _key(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


class Replay:
    """Answers each POST with the recorded response whose request body is the one received
    (or, when ``queue`` holds responses, the next of those, whatever was asked)."""

    def __init__(self) -> None:
        self.by_body: dict[str, tuple[int, str, bytes]] = {}
        self.queue: list[tuple[int, str, bytes]] = []
        self.bodies: list[dict[str, Any]] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add(self, record: dict[str, Any]) -> None:
        kind = "text/event-stream" if record["request"].get("stream") else "application/json"
        self.by_body[_key(record["request"])] = (record["status"], kind, record["raw"].encode())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while line := await reader.readline():
                headers = {}
                while (raw := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = raw.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                if line.startswith(b"GET /v1/models"):  # as llama-cpp-python: no window
                    status, kind, data = 200, "application/json", LISTING
                    head = f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\n"
                    writer.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
                    continue
                body = json.loads(await reader.readexactly(int(headers["content-length"])))
                self.bodies.append(body)
                if self.queue:
                    status, kind, data = self.queue.pop(0)
                else:
                    status, kind, data = self.by_body.get(
                        _key(body), (404, "application/json", b'{"error": "not recorded"}')
                    )
                head = f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\n"
                writer.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
                del line
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def __aenter__(self) -> Replay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def replay() -> AsyncIterator[Replay]:
    async with Replay() as server:
        yield server


def request_of(recorded: dict[str, Any]) -> ModelRequest:
    tools = [
        ToolSpec(
            t["function"]["name"],
            t["function"]["description"],
            t["function"]["parameters"],
            t["function"].get("strict", False),
        )
        for t in recorded.get("tools") or []
    ]
    return ModelRequest(recorded["messages"], tools, recorded["max_tokens"])


def recorded_answer(record: dict[str, Any]) -> tuple[str, list[tuple[str, str]], str | None]:
    """(text, [(tool name, arguments)], finish_reason) read straight from the recorded bytes."""
    if not record["request"].get("stream"):
        choice = json.loads(record["raw"])["choices"][0]
        message = choice["message"]
        calls = [
            (c["function"]["name"], c["function"]["arguments"])
            for c in message.get("tool_calls") or []
        ]
        return message.get("content") or "", calls, choice["finish_reason"]
    text, calls, finish = "", [], None
    for line in record["raw"].splitlines():
        if not line.startswith("data: {"):
            continue
        choice = json.loads(line[6:])["choices"][0]
        delta = choice["delta"]
        text += delta.get("content") or ""
        for call in delta.get("tool_calls") or []:
            calls.append((call["function"]["name"], call["function"]["arguments"]))
        finish = choice["finish_reason"] or finish
    return text, calls, finish


@pytest.mark.parametrize("name", ["streamed.jsonl", "nonstreamed.jsonl"])
async def test_every_recorded_response_through_openai_model(replay: Replay, name: str) -> None:
    recorded = records(name)
    for record in recorded:
        replay.add(record)
    streamed = name == "streamed.jsonl"
    model = OpenAIModel(
        "qwen2.5-coder-1.5b",
        base_url=replay.base_url,
        stream=streamed,
        context_window=4096,  # n_ctx; llama-cpp-python's /v1/models does not report it
        retry=NO_WAIT,
    )
    seen_calls = 0
    for record in recorded:
        response = await assemble(model.stream(request_of(record["request"])))
        text, calls, finish = recorded_answer(record)
        assert response.attempts == 1, record["id"]
        assert response.text == text and response.finish_reason == finish, record["id"]
        assert [
            (c["function"]["name"], c["function"]["arguments"]) for c in response.tool_calls
        ] == calls
        seen_calls += len(calls)
        if streamed:  # the server ignores stream_options.include_usage
            assert response.usage.estimated and response.usage.input_tokens > 0
            assert response.usage.output_tokens > 0
        else:
            usage = json.loads(record["raw"])["usage"]
            assert not response.usage.estimated
            assert (response.usage.input_tokens, response.usage.output_tokens) == (
                usage["prompt_tokens"],
                usage["completion_tokens"],
            )
    # the body agentloop sends today is the recorded one, request for request
    assert [_key(b) for b in replay.bodies] == [_key(r["request"]) for r in recorded]
    assert seen_calls > 0


@pytest.mark.parametrize("whole", ["raw_stream_notools2.txt", "raw_stream_notools3.txt"])
async def test_the_streams_cut_under_concurrency_are_retried(replay: Replay, whole: str) -> None:
    # the two streams cut under concurrency, and raw_stream_notools.txt, cut the same way
    cut = (RECORDED / "cut_under_concurrency.txt").read_text().split("# ---- next response ----")
    cut.append((RECORDED / "raw_stream_notools.txt").read_text())
    replay.queue = [(200, "text/event-stream", part.strip().encode() + b"\n\n") for part in cut]
    answer = (RECORDED / whole).read_bytes()
    replay.queue.append((200, "text/event-stream", answer))
    model = OpenAIModel("qwen2.5-coder-1.5b", base_url=replay.base_url, retry=NO_WAIT)
    response = await assemble(model.stream(ModelRequest([{"role": "user", "content": "q"}])))
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in answer.decode().splitlines()
        if line.startswith("data: {")
    )
    assert response.text == text and response.finish_reason == "stop"
    assert text and response.usage.estimated
    assert response.attempts == 4
    assert [type(r.error) for r in response.retries] == [StreamInterruptedError] * 3
    assert all("[DONE] but no finish_reason" in r.error.message for r in response.retries)
    # /v1/models was asked once, and reports no window: the default stands
    assert (model.context_window, model.context_window_source) == (128_000, "default")


async def test_the_recorded_400_over_the_window_teaches_it(replay: Replay) -> None:
    recorded = json.loads((RECORDED / "context_length_400.json").read_text())
    replay.queue = [(400, "application/json", json.dumps(recorded["body"]).encode())]
    model = OpenAIModel("qwen2.5-coder-1.5b", base_url=replay.base_url, stream=False)
    assert model.context_window == 128_000
    with pytest.raises(ContextLengthError) as info:
        await assemble(model.stream(ModelRequest([{"role": "user", "content": "long"}])))
    assert info.value.window == 4096 and info.value.error_type == "invalid_request_error"
    assert (model.context_window, model.context_window_source) == (4096, "error")
    assert len(replay.bodies) == 1  # not retried
