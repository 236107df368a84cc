"""A client for any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, OpenAI ...).

``OpenAIModel`` owns the request/attempt cycle shared by every provider: build the body, wait for
the rate limiter, send, parse the stream into deltas, and retry what can be retried. Provider
quirks live in subclasses that override ``build_body`` (see ``kimi.py``).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import json
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import anyio

from .. import _json
from .._deadline import now as loop_time
from .._deadline import watchdog
from .._secret import Secret, SecretHeaders
from ..clock import DEFAULT_CLOCK, Clock
from ..errors import (
    APIError,
    ConfigurationError,
    ContextLengthError,
    EmptyResponseError,
    NothingListeningError,
    ProtocolError,
    RetriesExhaustedError,
    StreamInterruptedError,
    StreamStalledError,
    UnexpectedResponseError,
    error_from_response,
)
from ..limits import AdmissionPermit, Limiter, current_loop, shared_limiter
from ..messages import Message, Usage
from ..pricing import RateCard
from ..retry import RetryPolicy
from ._calibration import Calibrator
from .base import (
    AnyTool,
    BuiltinTool,
    Delta,
    FinishDelta,
    ModelRequest,
    ModelResponse,
    ReasoningDelta,
    ResponseStarted,
    RetryDelta,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
)
from .stream import DONE, SSEDecoder, chunk_deltas, message_deltas, parse_chunk
from .text_calls import extract_text_tool_calls
from .transport import Httpx2Transport, RawResponse, Transport, make_transport

_UNSET: Any = object()
DEFAULT_CONTEXT_WINDOW = 128_000


def _byte_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def estimate_message_bytes(message: Message) -> int:
    """About the bytes one wire message adds to a request body as text (compact JSON, each
    escape counted once): what the calibrated estimate scales, matching what the calibrator
    measures on the bodies sent."""
    size = 3  # its braces and the comma before the next message
    for key, value in message.items():
        if isinstance(value, str):
            size += len(key) + 6 + _byte_len(value)  # "key":"value",
        elif key == "tool_calls" and isinstance(value, list):
            size += len(key) + 4
            for call in value:
                fn = call.get("function") or {}
                size += 66 + _byte_len(call.get("id") or "")
                size += _byte_len(fn.get("name") or "") + _byte_len(fn.get("arguments") or "")
        elif isinstance(value, list):
            size += len(key) + 4 + sum(_byte_len(json.dumps(part)) + 1 for part in value)
        else:
            size += len(key) + 4 + len(json.dumps(value))
    return size


def prompt_bytes(body: dict[str, Any], payload: bytes) -> int:
    """The bytes of a request's prompt (its messages and tools) as text, from the serialised
    ``payload`` of ``body``: what the calibrator measures, as ``estimate_message_bytes`` and
    the tools' sizes add up to. A JSON escape counts one byte (one character to the chat
    template); the body's other fields (model, max_tokens, ...) are left out."""
    others = _json.dumps({k: v for k, v in body.items() if k not in ("messages", "tools")})
    framing = len(others) + 12 + (10 if "tools" in body else 0)  # ,"messages":[] ,"tools":[]
    return len(payload) - escapes(payload) - framing


_EXACT_UP_TO = 128 * 1024
_SPANS = 64
_SPAN = 1024


def escapes(payload: bytes) -> int:
    """About how many JSON escapes ``payload`` holds: counted exactly up to 128 KB, beyond
    that from 64 spans of 1 KB spread over it, so that measuring a long history's prompt costs
    a fixed 64 KB scan and not another pass over the body (the calibrator needs the prompt's
    size to within a percent, not to the byte)."""
    size = len(payload)
    if size <= _EXACT_UP_TO:
        return payload.count(b"\\")
    stride = size // _SPANS
    seen = sum(payload.count(b"\\", start, start + _SPAN) for start in range(0, size, stride))
    spans = len(range(0, size, stride))
    return seen * size // (spans * _SPAN)


def message_sizes(message: Message) -> tuple[int, int]:
    """``(estimate_message_tokens(message), estimate_message_bytes(message))`` in one pass (a
    calibrated estimate needs both for every message appended to a run)."""
    size = 3
    text = 32
    for key, value in message.items():
        if isinstance(value, str):
            n = len(value) if value.isascii() else len(value.encode())
            size += len(key) + 6 + n
            if key == "content" or key == "reasoning_content":
                text += n
        elif key == "tool_calls" and isinstance(value, list):
            size += len(key) + 4
            for call in value:
                fn = call.get("function") or {}
                name = fn.get("name") or ""
                arguments = fn.get("arguments") or ""
                call_id = call.get("id") or ""
                n = len(name) if name.isascii() else len(name.encode())
                n += len(arguments) if arguments.isascii() else len(arguments.encode())
                size += 66 + _byte_len(call_id) + n
                text += 48 + n
        elif isinstance(value, list):
            parts = [_byte_len(json.dumps(part)) for part in value]
            size += len(key) + 4 + sum(parts) + len(parts)
            if key == "content":
                text += sum(parts)
        else:
            size += len(key) + 4 + len(json.dumps(value))
    if "tool_calls" in message and not isinstance(message["tool_calls"], list):
        for call in message["tool_calls"] or ():
            fn = call.get("function") or {}
            text += 48 + _byte_len(fn.get("arguments") or "") + _byte_len(fn.get("name") or "")
    return text // 4 + 1, size


def estimate_message_tokens(message: Message) -> int:
    """A cheap, slightly generous token estimate of one wire message (≈4 bytes per token), the
    uncalibrated figure (``OpenAIModel.estimate_tokens`` learns the model's own)."""
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
        context_window: int | None = None,
        default_max_tokens: int = 8_192,
        rate_card: RateCard | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        limiter: Limiter | None = _UNSET,
        retry: RetryPolicy | None = None,
        clock: Clock = DEFAULT_CLOCK,
        transport: Transport | str | None = None,
        timeout: float = 600.0,
        extra_body: dict[str, Any] | None = None,
        send_reasoning: bool = False,
        require_key: bool = False,
        final_answer_keeps_tools: bool = True,
        text_tool_calls: bool = False,
        first_byte_timeout: float | None = _UNSET,
        idle_timeout: float | None = _UNSET,
        buffers_stream: bool = _UNSET,
        generation_tokens_per_s: float = _UNSET,
    ) -> None:
        self.name = model
        key = api_key if api_key is not None else os.environ.get(self.api_key_env)
        if require_key and not key:
            raise ConfigurationError(self._missing_key_message())
        if key:
            key = _checked_key(key)
        # never a plain string on the model: tracebacks with locals and debuggers show reprs
        self._api_key = Secret(key) if key else None
        self.base_url = (
            base_url or os.environ.get(self.base_url_env) or self.default_base_url
        ).rstrip("/")
        self.streaming = stream
        # An explicit window is authoritative; otherwise the first call reads it from
        # /v1/models where the server reports it, and a context-length error naming the
        # window sets it (see discover_context_window and _error).
        self.context_window = context_window or DEFAULT_CONTEXT_WINDOW
        self.context_window_source = "explicit" if context_window else "default"
        self._discover_window = not context_window
        for name, value in (
            ("first_byte_timeout", first_byte_timeout),
            ("idle_timeout", idle_timeout),
            ("buffers_stream", buffers_stream),
            ("generation_tokens_per_s", generation_tokens_per_s),
        ):
            if value is not _UNSET:
                setattr(self, name, value)
        self.default_max_tokens = default_max_tokens
        self.min_max_tokens = 1
        self.rate_card = rate_card
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.extra_body = dict(extra_body or {})
        self.send_reasoning = send_reasoning
        # The final-answer call keeps the tools (and the cached prefix) with tool_choice "none";
        # False drops them instead, for servers whose models call tools regardless.
        self.final_answer_keeps_tools = final_answer_keeps_tools
        # small models often write <tool_call>{...}</tool_call> as text: parse it (opt-in)
        self.text_tool_calls = text_tool_calls
        self._text_calls = 0
        self._reports = 0  # responses that reported usage (calibration samples them)
        if limiter is _UNSET:
            limiter = (
                shared_limiter(
                    self.base_url,
                    self._api_key.reveal() if self._api_key else None,
                    rpm=rpm,
                    tpm=tpm,
                    max_concurrency=max_concurrency,
                    clock=clock,
                )
                if (rpm or tpm or max_concurrency)
                else None
            )
        self.limiter: Limiter | None = limiter
        # an instance as given (the caller closes it), or one built by name ("httpx2", the
        # default, or "aiohttp": the fast extra) and owned here
        self._transport: Transport = make_transport(transport, timeout=timeout)
        self._owns_transport = transport is None or isinstance(transport, str)
        self._url = f"{self.base_url}/chat/completions"
        self._headers = SecretHeaders(
            {"Content-Type": "application/json", "Accept": "text/event-stream"}, self._api_key
        )
        self._tool_cache: dict[int, tuple[AnyTool, dict[str, Any]]] = {}
        self._tool_bytes: dict[int, tuple[AnyTool, int]] = {}
        # tokens per byte and the fixed cost of a prompt, learnt from reported usage
        self.calibration = Calibrator()

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
        """The prompt tokens of ``messages`` and ``tools``: about four bytes per token, raised
        to this model's calibrated figure once the server has reported usage and where that
        is higher (see ``calibrated_estimate``). Calibration only raises: every budget holds
        as long as the server counts no more than the estimate, and the default errs high
        for most tokenizers, so a fit that came out lower would trade that guarantee for a
        little room."""
        calibration = self.calibration
        if not calibration.calibrated:
            return self.default_estimate(messages, tools)
        # default_estimate and calibrated_estimate in one pass over the messages
        default = 0
        nbytes = 0
        for message in messages:
            tokens, size = message_sizes(message)
            default += tokens
            nbytes += size
        for tool in tools:
            size = self._tool_size(tool)
            default += size // 4 + 8
            nbytes += size
        return max(default, calibration.tokens(nbytes, whole=bool(tools)))

    def default_estimate(self, messages: Sequence[Message], tools: Sequence[AnyTool] = ()) -> int:
        """The estimate before calibration: about four bytes per token, the same in every
        process (what a durable run decides on, so that its replay decides the same)."""
        default = sum(estimate_message_tokens(m) for m in messages)
        return default + sum(self._tool_size(tool) // 4 + 8 for tool in tools)

    def calibrated_estimate(
        self, messages: Sequence[Message], tools: Sequence[AnyTool] = ()
    ) -> int | None:
        """The calibrator's figure alone (None before any report): tokens per byte learnt
        from reported usage, plus the fixed cost of the chat template and tool preamble when
        tools are given: the agent passes them for a whole prompt, never for the messages
        added to one already measured."""
        calibration = self.calibration
        if not calibration.calibrated:
            return None
        nbytes = sum(estimate_message_bytes(m) for m in messages)
        nbytes += sum(self._tool_size(tool) for tool in tools)
        return calibration.tokens(nbytes, whole=bool(tools))

    def _tool_size(self, tool: AnyTool) -> int:
        """A tool declaration's bytes in the request body as text, cached."""
        cached = self._tool_bytes.get(id(tool))
        if cached is None or cached[0] is not tool:
            wire = self._wire_tools([tool])[0]
            raw = json.dumps(wire, ensure_ascii=False, separators=(",", ":")).encode()
            cached = (tool, len(raw) - raw.count(b"\\") + 1)
            self._tool_bytes[id(tool)] = cached
        return cached[1]

    # -- the window --------------------------------------------------------------------------
    @property
    def window_known(self) -> bool:
        """False until the server has been asked for the window (when none was given)."""
        return not self._discover_window

    async def discover_context_window(self) -> int | None:
        """Read this model's window from ``GET /models`` (vLLM and SGLang ``max_model_len``,
        llama.cpp's llama-server ``meta.n_ctx`` / ``meta.n_ctx_train``, ``context_length`` of
        the simulator and others) and set ``context_window`` unless it was given explicitly.
        Done once, lazily, by the first call; the window found or None (not reported, or the
        request failed: the default stands)."""
        self._discover_window = False
        found: int | None = None
        with anyio.move_on_after(_DISCOVERY_TIMEOUT):
            try:
                listing = await self._get_json(f"{self.base_url}/models")
            except Exception:  # best effort: a server without /models is still a server
                listing = None
            found = _listed_window(listing, self.name)
        if found is not None and self.context_window_source != "explicit":
            self.context_window = found
            self.context_window_source = "/models"
        return found

    async def _get_json(self, url: str) -> Any:
        """GET through the transport (its optional ``get``; httpx2's pools otherwise)."""
        get = getattr(self._transport, "get", None)
        if get is not None:
            return _json.loads(await get(url, self._headers))
        transport = self._transport
        if not isinstance(transport, Httpx2Transport):
            return None  # a transport that only posts: nothing to ask
        pools = transport._pools
        loop = current_loop()
        if pools.loop is not loop:
            pools = await transport._pools_for(loop)
        response = await pools.clients[0].get(url, headers=self._headers)
        return _json.loads(response.content) if response.status_code == 200 else None

    def _learn_window(self, error: APIError) -> None:
        """A context-length error that names the window: the server's word is final."""
        if isinstance(error, ContextLengthError) and error.window:
            self.context_window = error.window
            self.context_window_source = "error"
            self._discover_window = False

    def finish_response(self, response: ModelResponse) -> ModelResponse:
        """The assembled response as the agent should take it: with ``text_tool_calls``, tool
        calls written as text become structured calls (validated like any other)."""
        if not self.text_tool_calls:
            return response
        self._text_calls += 1
        fixed = extract_text_tool_calls(response.message, str(self._text_calls))
        if fixed is not None:
            response.message = fixed
            response.finish_reason = "tool_calls"
        return response

    # -- the call --------------------------------------------------------------------------
    # How long an attempt waits for the server (wall-clock seconds; None: no bound of its
    # own). Data events count; SSE comments do not. KimiModel takes both as arguments.
    idle_timeout: float | None = 300.0  # between two data events
    first_byte_timeout: float | None = 300.0  # from sending the request to the first data
    # A server that sends nothing until the whole generation is done (always so for
    # stream=False) gets first_byte_timeout + max_tokens / generation_tokens_per_s for its
    # first byte, and that wait is not cut short by RetryPolicy.max_total_s.
    buffers_stream: bool = False
    generation_tokens_per_s: float = 20.0

    def first_byte_wait(self, max_tokens: int) -> tuple[float | None, bool]:
        """The wait for an attempt's first data, and whether it is a whole generation's."""
        if self.streaming and not self.buffers_stream:
            return self.first_byte_timeout, False
        if self.first_byte_timeout is None:
            return None, True
        return self.first_byte_timeout + max_tokens / self.generation_tokens_per_s, True

    async def stream(self, request: ModelRequest) -> AsyncGenerator[Delta, None]:
        """Stream one model call as deltas, retrying retryable failures (see ``RetryDelta``).

        A response that reports no usage ends with an estimated ``UsageDelta`` (the prompt's
        estimate and one of the output), marked ``Usage.estimated``."""
        if self._discover_window:
            await self.discover_context_window()
        input_estimate = (
            request.input_tokens
            if request.input_tokens is not None
            else self.estimate_tokens(request.messages, request.tools)
        )
        body = self.build_body(request, input_estimate)
        payload = _json.dumps(body)
        max_tokens = int(body.get("max_tokens") or 0)
        reserve = input_estimate + max_tokens
        first_wait = self.first_byte_wait(max_tokens)
        clock = self.clock
        started = clock.now()
        # max_total_s counts the time without data: from the start, or the last data event
        progress = _Progress(started)
        attempt = 0
        empties = 0  # attempts answered 200 with no data at all
        while True:
            attempt += 1
            permit = None
            if self.limiter:
                queued = clock.now()
                permit = await self.limiter.acquire(reserve)
                progress.anchor += clock.now() - queued  # waiting our turn is not a failure
            billed = reserve
            try:
                attempt_deltas = self._attempt(payload, attempt, permit, progress, first_wait)
                reported = False
                output = 0  # characters of output, for the estimate if no usage comes
                calls = 0
                async with contextlib.aclosing(attempt_deltas):  # closed at once when we stop
                    async for batch in attempt_deltas:
                        for delta in batch:
                            kind = type(delta)
                            if kind is TextDelta or kind is ReasoningDelta:
                                output += len(delta.text)  # type: ignore[union-attr]
                            elif kind is ToolCallDelta:
                                output += len(delta.arguments)  # type: ignore[union-attr]
                                if delta.name:  # type: ignore[union-attr]
                                    calls += 1
                            elif kind is UsageDelta:
                                usage = delta.usage  # type: ignore[union-attr]
                                billed = usage.total_tokens
                                reported = True
                                self._reports += 1
                                # every report until the fit has settled, then one in 16:
                                # measuring a prompt scans a body that grows with the history
                                if self.calibration.observations < 64 or self._reports % 16 == 0:
                                    self.calibration.observe(
                                        prompt_bytes(body, payload), usage.input_tokens
                                    )
                            yield delta  # noqa: ASYNC119 (no cancel scope: see _attempt)
                if not reported:
                    usage = Usage(
                        input_tokens=input_estimate,
                        output_tokens=(output + 16 * calls) // 4 + 1,
                        estimated=True,
                    )
                    billed = usage.total_tokens
                    yield UsageDelta(usage)
                return
            except APIError as error:
                self._learn_window(error)
                if isinstance(error, _EmptyBodyError):
                    empties += 1
                    if empties > 1:  # the same request answered with nothing twice
                        raise EmptyResponseError(
                            f"{error.message}, twice for the same request",
                            status=200,
                            request_id=error.request_id,
                        ) from error
                now = clock.now()
                wait = self.retry.delay(attempt, error)
                reason = self.retry.give_up(attempt, error, now - progress.anchor, wait)
                if reason is not None:
                    if not error.retryable or self.retry.max_attempts == 1:
                        raise  # not retryable, or no retries were asked for
                    raise RetriesExhaustedError(error, attempt, now - started, reason) from error
                # The run keeps the delta until it ends: drop what the error drags along (its
                # traceback's frames, and through aiohttp's chained errors the event loop's
                # timer heap), or 2,000 runs with a few faults hold ~1M objects (bench/soak)
                error.__traceback__ = error.__context__ = error.__cause__ = None
                yield RetryDelta(attempt, error, wait)
                await clock.sleep(wait)
            finally:
                if permit is not None:
                    permit.reconcile(billed)
                    permit.release()

    async def _attempt(
        self,
        payload: bytes,
        attempt: int,
        permit: AdmissionPermit | None,
        progress: _Progress,
        first_wait: tuple[float | None, bool],
    ) -> AsyncGenerator[list[Delta], None]:
        """One request, its deltas in batches (what one read of the body gave). Every wait for
        the server runs under the watchdog (never across a yield, so the caller's time between
        deltas is never counted): the first data must come within the first-byte wait, each
        later data event within ``idle_timeout``, and neither wait runs past what is left of
        ``RetryPolicy.max_total_s``."""
        waited = permit.waited if permit is not None else 0.0
        clock = self.clock
        scale = _real_seconds(clock)
        total = self.retry.max_total_s * scale
        left = max(0.0, total - (clock.now() - progress.anchor) * scale)
        wait, generation = first_wait
        capped = not generation and (wait is None or left < wait)
        if capped:
            wait = left
        idle = self.idle_timeout
        gap_capped = idle is None or total < idle
        gap = total if gap_capped or idle is None else idle
        dog = watchdog()  # one timer for every wait of this attempt
        opened = self._transport.post(self._url, self._headers, payload, timed=True)
        entered = False
        try:
            start = loop_time()
            try:
                with dog.until(_deadline(start, wait)) as scope:
                    response = await opened.__aenter__()
            except NothingListeningError as exc:
                raise NothingListeningError(
                    exc.message,
                    hint=f"nothing is listening at {self.base_url}: start the server, or fix "
                    f"base_url (or {self.base_url_env})",
                ) from None
            if scope.cancelled_caught:
                raise _stalled("headers", wait, self._why(capped, generation))
            entered = True
            if permit is not None:
                permit.touch()
            headers = response.headers
            request_id = headers.get("x-trace-id") or headers.get("x-request-id")
            if response.status != 200:
                with dog.until(loop_time() + gap):
                    # read inline: a local holding the body would show a key the server echoed
                    # in any traceback rendered with its locals (the exception's text is redacted)
                    raise self._error(response.status, await response.read(), request_id, headers)
                raise _stalled("error body", gap, self._why(gap_capped, None))
            content_type = headers.get("content-type") or ""
            media = content_type.partition(";")[0].strip().lower()
            sse = media == "text/event-stream" or (not media and self.streaming)
            if not sse and media and media != "application/json" and not media.endswith("+json"):
                raise await self._unexpected(response, content_type, gap, request_id)
            # what the first wait has left once the headers are in
            first = wait
            if wait is not None:
                wait = max(0.0, wait - (loop_time() - start))
            # The yields below hold no cancel scope (the watchdog is disarmed between waits);
            # every caller closes this generator (contextlib.aclosing), so the response is
            # released when the consumer stops, not when the generator is collected.
            yield [ResponseStarted(request_id, attempt, waited)]
            if not sse:
                raw = b""
                with dog.until(_deadline(loop_time(), wait, gap)) as scope:
                    raw = await response.read()
                if scope.cancelled_caught:
                    if wait is not None and wait > gap:
                        raise _stalled("body", wait, self._why(capped, generation))
                    raise _stalled("body", gap, self._why(gap_capped, None))
                progress.anchor = clock.now()
                if not raw.strip():
                    raise _EmptyBodyError(
                        "the server answered 200 with an empty body", request_id=request_id
                    )
                try:
                    obj = _json.loads(raw)
                except (ValueError, RecursionError):
                    raise ProtocolError(
                        f"the response body is not valid JSON: {_head(raw)!r}",
                        request_id=request_id,
                    ) from None
                yield message_deltas(obj)
                return
            chunks = response.iter_bytes()
            try:
                receive = chunks.__anext__
                decoder = SSEDecoder()
                done = False
                finished = False
                bytes_since = False  # bytes but no data event since the last one (comments)
                data_seen = False
                out: list[Delta] = []
                left = math.inf if wait is None else wait
                current_time = loop_time
                while True:
                    now = current_time()
                    try:
                        with dog.until(now + left) as scope:
                            chunk = await receive()
                    except StopAsyncIteration:
                        break
                    except StreamInterruptedError as exc:
                        raise self._named_timeout(exc) from None
                    if scope.cancelled_caught:
                        if data_seen:
                            raise _stalled("gap", gap, self._why(gap_capped, None), bytes_since)
                        raise _stalled("first", first, self._why(capped, generation), bytes_since)
                    events = decoder.feed(chunk)
                    if not events:
                        left -= current_time() - now
                        bytes_since = True
                        continue
                    left = gap
                    bytes_since = False
                    data_seen = True
                    progress.anchor = clock.now()
                    for event in events:
                        if event == DONE:
                            done = True
                            break
                        chunk_deltas(parse_chunk(event), out)
                    if out:
                        for delta in out:
                            if type(delta) is FinishDelta:
                                finished = True
                        yield out
                        out = []
                    if done:
                        # Read the body to its end (normally just the last empty chunk) so the
                        # connection goes back to the pool; a failure now no longer matters.
                        with (
                            contextlib.suppress(StreamInterruptedError),
                            dog.until(current_time() + gap),
                        ):
                            async for _ in chunks:
                                pass
                        if not finished:
                            raise _cut_at_done(request_id)
                        return
                for event in decoder.flush():  # a last event without its blank line
                    if event == DONE:
                        done = True
                        break
                    chunk_deltas(parse_chunk(event), out)
                for delta in out:
                    if type(delta) is FinishDelta:
                        finished = True
                if out:
                    yield out
                if done:
                    if not finished:
                        raise _cut_at_done(request_id)
                    return
                if not data_seen and not out:
                    raise _EmptyBodyError(
                        "the server answered 200 with an empty body"
                        + (" (keep-alive comments only)" if bytes_since else ""),
                        request_id=request_id,
                    )
                raise StreamInterruptedError(
                    "the stream ended before [DONE]"
                    + ("" if finished else " and before a finish_reason"),
                    request_id=request_id,
                )
            finally:
                await _aclose(chunks)
        except BaseException as exc:
            if entered:  # the response's exit sees what ended the attempt, as ``async with``
                entered = False
                if await opened.__aexit__(type(exc), exc, exc.__traceback__):
                    return
            raise
        finally:
            dog.close()
            if entered:
                await opened.__aexit__(None, None, None)

    async def _unexpected(
        self, response: RawResponse, content_type: str, gap: float, request_id: str | None
    ) -> UnexpectedResponseError:
        """A 200 that is not the API's: name its content type and its first bytes."""
        head = b""
        with anyio.move_on_after(gap), contextlib.suppress(APIError):
            chunks = response.iter_bytes()
            try:
                async for chunk in chunks:
                    head += chunk
                    if len(head) >= _SNIPPET:
                        break
            finally:
                await _aclose(chunks)
        wanted = "an event stream" if self.streaming else "a JSON body"
        return UnexpectedResponseError(
            f"the server answered 200 with Content-Type {content_type}, not {wanted}: "
            f"{_head(head)!r}",
            status=200,
            request_id=request_id,
        )

    def _named_timeout(self, error: StreamInterruptedError) -> StreamInterruptedError:
        """The HTTP library's own read timeout (a ``client=`` or transport of the caller's:
        agentloop's own waits are bounded above) is a stall: say which timeout it was."""
        if "Timeout" not in error.message or isinstance(error, StreamStalledError):
            return error
        return StreamStalledError(
            f"the HTTP client's read timeout fired mid-stream ({error.message})",
            request_id=error.request_id,
            hint="that timeout belongs to the transport or client= passed in (agentloop's "
            f"own waits are first_byte_timeout={_seconds(self.first_byte_timeout)} and "
            f"idle_timeout={_seconds(self.idle_timeout)}): raise its read timeout or leave "
            f"it unset; {_BUFFERING_HINT}",
        )

    def _why(self, capped: bool, generation: bool | None) -> tuple[str, bool]:
        """The timeout that bounded a wait, named with its value, and whether the server may be
        buffering a whole generation (``generation``: None for the idle timeout)."""
        if capped:
            return f"what was left of RetryPolicy.max_total_s={self.retry.max_total_s:g}s", False
        if generation is None:
            return f"idle_timeout={_seconds(self.idle_timeout)}", False
        if generation:
            return (
                f"first_byte_timeout={_seconds(self.first_byte_timeout)} + max_tokens / "
                f"generation_tokens_per_s={self.generation_tokens_per_s:g}",
                False,
            )
        return f"first_byte_timeout={_seconds(self.first_byte_timeout)}", True

    def _error(self, status: int, raw: bytes, request_id: str | None, headers: Any) -> APIError:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict) and "error" not in body and isinstance(body.get("message"), str):
            body = {"error": body}  # vLLM and others: {"object": "error", "message", "type"}
        if not (isinstance(body, dict) and isinstance(body.get("error"), dict | str)):
            # not a JSON error (a proxy's or gateway's page): say what came instead
            kind = headers.get("content-type") or "untyped"
            message = (
                f"the server answered with a {kind} body, not a JSON error: {_head(raw)!r}"
                if raw.strip()
                else "the server answered with an empty body"
            )
            body = {"error": {"message": message}}
        return error_from_response(
            status,
            body,
            request_id=request_id,
            retry_after=retry_after_seconds(headers.get("retry-after")),
            base_url=self.base_url,
        )

    async def aclose(self) -> None:
        if self._owns_transport:
            await self._transport.aclose()


# -- module helpers ---------------------------------------------------------------------------
_SNIPPET = 200  # bytes of an unexpected body quoted in its error


class _Progress:
    """When the call last had news from the server (the model clock): its start, or the last
    data event of any attempt. ``RetryPolicy.max_total_s`` counts from here."""

    __slots__ = ("anchor",)

    def __init__(self, anchor: float) -> None:
        self.anchor = anchor


def _checked_key(key: str) -> str:
    """The key without surrounding whitespace (a key read from a file keeps its newline); a
    key with anything else than printable ASCII is refused here, by name only: an HTTP
    library would refuse it later in an error that quotes the header, key and all."""
    key = key.strip()
    if not (key.isascii() and key.isprintable()):
        raise ConfigurationError(
            "the API key holds a control character, a line break or a non-ASCII character: "
            "it is not a key as issued; check how it was set (copied with extra text?)"
        )
    return key


def _real_seconds(clock: Clock) -> float:
    """Wall-clock seconds per second of ``clock`` (a ScaledClock runs ``factor`` times fast)."""
    factor = getattr(clock, "factor", None)
    return 1.0 / factor if isinstance(factor, int | float) and factor > 0 else 1.0


def _deadline(now: float, wait: float | None, at_least: float = 0.0) -> float:
    return math.inf if wait is None else now + max(wait, at_least)


def _seconds(value: float | None) -> str:
    return "ever" if value is None else f"{value:.3g}s"


_DISCOVERY_TIMEOUT = 10.0  # seconds the first call waits for GET /models at most
_WINDOW_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length")


def _listed_window(listing: Any, model: str) -> int | None:
    """The window a ``/models`` listing reports for ``model`` (the only model listed counts:
    llama.cpp serves one, under the name of its file), or None."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    entries = [e for e in data if isinstance(e, dict)]
    entry = next((e for e in entries if e.get("id") == model), None)
    if entry is None and len(entries) == 1:
        entry = entries[0]
    if entry is None:
        return None
    meta = entry.get("meta")
    candidates = [entry.get(key) for key in _WINDOW_KEYS]
    if isinstance(meta, dict):  # llama-server: n_ctx when it says, else the trained window
        candidates += [meta.get("n_ctx"), meta.get("n_ctx_train")]
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class _EmptyBodyError(StreamInterruptedError):
    """A 200 with no data at all: retried once; a repeat is ``EmptyResponseError``."""


def _cut_at_done(request_id: str | None) -> StreamInterruptedError:
    return StreamInterruptedError(
        "the stream ended with [DONE] but no finish_reason (the server cut it short)",
        request_id=request_id,
    )


_BUFFERING_HINT = (
    "a server that buffers the whole generation when tools are offered (llama.cpp) sends "
    "nothing until it is done: size the wait to max_tokens at its decode speed "
    "(buffers_stream=True, generation_tokens_per_s=...) or raise first_byte_timeout"
)


def _stalled(
    phase: str, wait: float | None, why: tuple[str, bool], bytes_since: bool = False
) -> StreamStalledError:
    s = _seconds(wait)
    if phase == "headers":
        text = f"no response within {s} of sending the request"
    elif phase == "first":
        text = (
            f"the server sent only keep-alive comments, no data, for {s}"
            if bytes_since
            else f"the server sent its headers, then nothing for {s}"
        )
    elif phase == "gap":
        what = "keep-alive only" if bytes_since else "nothing at all"
        text = f"the stream stalled: no data for {s} after the last event ({what})"
    else:  # a whole body (an error's, or a non-streamed answer's) that did not come
        text = f"the server sent its headers, then not the whole {phase} within {s}"
    setting, buffering = why
    if setting.startswith("what was left"):
        text += " (what was left of RetryPolicy.max_total_s)"
    hint = f"{setting} fired"  # which timeout, and its value; never advice on the rate
    return StreamStalledError(text, hint=f"{hint}; {_BUFFERING_HINT}" if buffering else hint)


def _head(raw: bytes) -> str:
    """The first bytes of a body, decoded whatever they are."""
    text = raw[:_SNIPPET].decode("utf-8", errors="replace")
    return text + "…" if len(raw) > _SNIPPET else text


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds: a number of seconds or an HTTP date (RFC 9110
    §10.2.3), never negative; None when absent or unreadable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is taken so
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
