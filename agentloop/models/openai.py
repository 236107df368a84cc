"""A client for any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, OpenAI ...).

``OpenAIModel`` owns the request/attempt cycle shared by every provider: build the body, wait for
the rate limiter, send, parse the stream into deltas, and retry what can be retried. Provider
quirks live in subclasses that override ``build_body`` (see ``kimi.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from .. import _json
from ..clock import DEFAULT_CLOCK, Clock
from ..errors import (
    APIError,
    ConfigurationError,
    RetriesExhaustedError,
    StreamInterruptedError,
    error_from_response,
)
from ..limits import Permit, RateLimiter, shared_limiter
from ..messages import Message
from ..pricing import RateCard
from ..retry import RetryPolicy
from .base import (
    AnyTool,
    BuiltinTool,
    Delta,
    FinishDelta,
    ModelRequest,
    ResponseStarted,
    RetryDelta,
    UsageDelta,
)
from .stream import DONE, SSEDecoder, chunk_deltas, message_deltas, parse_chunk
from .transport import Httpx2Transport, Transport

_UNSET: Any = object()


def _byte_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def estimate_message_tokens(message: Message) -> int:
    """A cheap, slightly generous token estimate of one wire message (≈4 bytes per token)."""
    size = 32
    content = message.get("content")
    if isinstance(content, str):
        size += _byte_len(content)
    elif isinstance(content, list):
        size += sum(_byte_len(json.dumps(part)) for part in content)
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str):
        size += _byte_len(reasoning)
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        size += 48 + _byte_len(fn.get("arguments") or "") + _byte_len(fn.get("name") or "")
    return size // 4 + 1


class OpenAIModel:
    """Chat completions over HTTP for any OpenAI-compatible server, without Kimi's rules."""

    provider = "openai"
    api_key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        stream: bool = True,
        context_window: int = 128_000,
        default_max_tokens: int = 8_192,
        rate_card: RateCard | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        limiter: RateLimiter | None = _UNSET,
        retry: RetryPolicy | None = None,
        clock: Clock = DEFAULT_CLOCK,
        transport: Transport | None = None,
        timeout: float = 600.0,
        extra_body: dict[str, Any] | None = None,
        send_reasoning: bool = False,
        require_key: bool = False,
    ) -> None:
        self.name = model
        self._api_key = api_key if api_key is not None else os.environ.get(self.api_key_env)
        if require_key and not self._api_key:
            raise ConfigurationError(self._missing_key_message())
        self.base_url = (
            base_url or os.environ.get(self.base_url_env) or self.default_base_url
        ).rstrip("/")
        self.streaming = stream
        self.context_window = context_window
        self.default_max_tokens = default_max_tokens
        self.min_max_tokens = 1
        self.rate_card = rate_card
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.extra_body = dict(extra_body or {})
        self.send_reasoning = send_reasoning
        if limiter is _UNSET:
            limiter = (
                shared_limiter(
                    self.base_url,
                    self._api_key,
                    rpm=rpm,
                    tpm=tpm,
                    max_concurrency=max_concurrency,
                    clock=clock,
                )
                if (rpm or tpm or max_concurrency)
                else None
            )
        self.limiter: RateLimiter | None = limiter
        self._transport: Transport = (
            transport if transport is not None else Httpx2Transport(timeout=timeout)
        )
        self._owns_transport = transport is None
        self._url = f"{self.base_url}/chat/completions"
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._tool_cache: dict[int, tuple[AnyTool, dict[str, Any]]] = {}
        self._tool_tokens: dict[int, tuple[AnyTool, int]] = {}

    def _missing_key_message(self) -> str:
        return f"no API key: pass api_key= or set {self.api_key_env}"

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(model={self.name!r}, base_url={self.base_url!r})"

    # -- request building (overridden per provider) ----------------------------------------
    def wire_tool(self, tool: AnyTool) -> dict[str, Any]:
        if isinstance(tool, BuiltinTool):
            return {"type": "builtin_function", "function": {"name": tool.name}}
        fn: dict[str, Any] = {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        }
        if tool.strict:
            fn["strict"] = True
        return {"type": "function", "function": fn}

    def _wire_tools(self, tools: Sequence[AnyTool]) -> list[dict[str, Any]]:
        out = []
        for tool in tools:
            cached = self._tool_cache.get(id(tool))
            if cached is None or cached[0] is not tool:
                cached = (tool, self.wire_tool(tool))
                self._tool_cache[id(tool)] = cached
            out.append(cached[1])
        return out

    def outgoing_messages(self, messages: Sequence[Message], thinking: bool) -> list[Message]:
        if self.send_reasoning:
            return list(messages)
        return [
            {k: v for k, v in m.items() if k != "reasoning_content"}
            if "reasoning_content" in m
            else m
            for m in messages
        ]

    def thinking_for(self, request: ModelRequest) -> bool:
        return False

    def max_tokens_for(self, request: ModelRequest, input_estimate: int) -> int:
        wanted = request.max_tokens or self.default_max_tokens
        room = self.context_window - input_estimate
        return max(1, min(wanted, room))

    def build_body(self, request: ModelRequest, input_estimate: int) -> dict[str, Any]:
        thinking = self.thinking_for(request)
        body: dict[str, Any] = {
            "model": self.name,
            "messages": self.outgoing_messages(request.messages, thinking),
            "max_tokens": self.max_tokens_for(request, input_estimate),
        }
        if request.tools:
            body["tools"] = self._wire_tools(request.tools)
        if request.tool_choice is not None:
            body["tool_choice"] = self.wire_tool_choice(request.tool_choice)
        if self.streaming:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return body

    def wire_tool_choice(self, choice: str) -> Any:
        if choice in ("auto", "none", "required"):
            return choice
        return {"type": "function", "function": {"name": choice}}

    def estimate_tokens(self, messages: Sequence[Message], tools: Sequence[AnyTool] = ()) -> int:
        total = sum(estimate_message_tokens(m) for m in messages)
        for tool in tools:
            cached = self._tool_tokens.get(id(tool))
            if cached is None or cached[0] is not tool:
                wire = self._wire_tools([tool])[0]
                cached = (tool, len(json.dumps(wire, separators=(",", ":"))) // 4 + 8)
                self._tool_tokens[id(tool)] = cached
            total += cached[1]
        return total

    # -- the call --------------------------------------------------------------------------
    async def stream(self, request: ModelRequest) -> AsyncGenerator[Delta, None]:
        """Stream one model call as deltas, retrying retryable failures (see ``RetryDelta``)."""
        input_estimate = (
            request.input_tokens
            if request.input_tokens is not None
            else self.estimate_tokens(request.messages, request.tools)
        )
        body = self.build_body(request, input_estimate)
        payload = _json.dumps(body)
        reserve = input_estimate + int(body.get("max_tokens") or 0)
        started = self.clock.now()
        attempt = 0
        while True:
            attempt += 1
            permit = await self.limiter.acquire(reserve) if self.limiter else None
            billed = reserve
            try:
                async for delta in self._attempt(payload, attempt, permit):
                    if isinstance(delta, UsageDelta):
                        billed = delta.usage.total_tokens
                    yield delta
                return
            except APIError as error:
                wait = self.retry.delay(attempt, error)
                elapsed = self.clock.now() - started
                if not self.retry.should_retry(attempt, error, elapsed, wait):
                    if error.retryable and attempt > 1:
                        raise RetriesExhaustedError(error, attempt, elapsed) from error
                    raise
                yield RetryDelta(attempt, error, wait)
                await self.clock.sleep(wait)
            finally:
                if permit is not None:
                    permit.reconcile(billed)
                    permit.release()

    async def _attempt(
        self, payload: bytes, attempt: int, permit: Permit | None
    ) -> AsyncIterator[Delta]:
        waited = permit.waited if permit is not None else 0.0
        async with self._transport.post(self._url, self._headers, payload) as response:
            if permit is not None:
                permit.touch()
            request_id = response.headers.get("x-trace-id") or response.headers.get("x-request-id")
            if response.status != 200:
                raw = await response.read()
                raise self._error(response.status, raw, request_id, response.headers)
            # The yields below sit inside the transport's `async with`, which holds no cancel
            # scope; every caller closes this generator (contextlib.aclosing), so the response
            # is released when the consumer stops, not when the generator is collected.
            yield ResponseStarted(request_id, attempt, waited)  # noqa: ASYNC119
            if not self.streaming:
                raw = await response.read()
                try:
                    obj = _json.loads(raw)
                except ValueError:
                    raise StreamInterruptedError(
                        "the response body is not valid JSON", request_id=request_id
                    ) from None
                for delta in message_deltas(obj):
                    yield delta  # noqa: ASYNC119
                return
            decoder = SSEDecoder()
            done = False
            finished = False
            out: list[Delta] = []
            chunks = response.iter_bytes()
            async for chunk in chunks:
                if done:
                    break
                for event in decoder.feed(chunk):
                    if event == DONE:
                        done = True
                        break
                    chunk_deltas(parse_chunk(event), out)
                if out:
                    for delta in out:
                        if isinstance(delta, FinishDelta):
                            finished = True
                        yield delta  # noqa: ASYNC119
                    out.clear()
                if done:
                    # Read the body to its end (normally just the last empty chunk) so the
                    # connection goes back to the pool; a failure now no longer matters.
                    with contextlib.suppress(StreamInterruptedError):
                        async for _ in chunks:
                            pass
                    break
            if not done:
                for event in decoder.flush():
                    if event == DONE:
                        done = True
            if not done:
                raise StreamInterruptedError(
                    "the stream ended before [DONE]"
                    + ("" if finished else " and before a finish_reason"),
                    request_id=request_id,
                )

    def _error(self, status: int, raw: bytes, request_id: str | None, headers: Any) -> APIError:
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"error": {"message": raw[:200].decode(errors="replace")}}
        retry_after: float | None = None
        value = headers.get("retry-after")
        if value:
            try:
                retry_after = float(value)
            except ValueError:
                retry_after = None
        return error_from_response(
            status, body, request_id=request_id, retry_after=retry_after, base_url=self.base_url
        )

    async def aclose(self) -> None:
        if self._owns_transport:
            await self._transport.aclose()
