"""The Kimi API simulator: a real HTTP/1.1 server on loopback.

It implements ``/v1/chat/completions`` (streamed and not), ``/v1/models`` and
``/v1/tokenizers/estimate-token-count``, and enforces the wire contract the way the real API
does (``shared/docs/kimi-contract.md``): the thinking object, the fixed sampler, tool_choice,
the window, tool schemas (MFJS), reasoning_content round-trips, tool-call ids, auth per region,
RPM/TPM/concurrency limits with 429 + Retry-After. Usage reports ``cached_tokens`` as the longest
message prefix shared with an earlier prompt of the same key, so prompt caching can be measured.

The server is written on asyncio streams rather than a framework so that faults are real: a
reset is a TCP RST, a cut stream is a connection dropped mid-body.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock, MonotonicClock
from ..models import mfjs
from .faults import FaultPlan
from .policies import Policy, PolicyContext, ToolCall, ToolLoopPolicy, Turn
from .profiles import ServerProfile, profile

MODELS = {
    "kimi-k2.6": 262_144,
    "kimi-k2.5": 262_144,
    "kimi-k2-thinking": 262_144,
    "kimi-k2-thinking-turbo": 262_144,
    "moonshot-v1-8k": 8_192,
    "moonshot-v1-32k": 32_768,
    "moonshot-v1-128k": 131_072,
}
THINKING_MODELS = {"kimi-k2.6", "kimi-k2.5", "kimi-k2-thinking", "kimi-k2-thinking-turbo"}
FIXED_SAMPLER = {
    "temperature": 1.0,
    "top_p": 0.95,
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
TOOL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]{2,63}$")
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def count_tokens(text: str) -> int:
    """The simulator's tokenizer: one token per four bytes of UTF-8, rounded up."""
    if not text:
        return 0
    size = len(text) if text.isascii() else len(text.encode())
    return (size + 3) // 4


def message_tokens(message: dict[str, Any]) -> int:
    tokens = 4
    content = message.get("content")
    if isinstance(content, str):
        tokens += count_tokens(content)
    elif isinstance(content, list):
        tokens += sum(count_tokens(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str):
        tokens += count_tokens(reasoning)
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        tokens += (
            4 + count_tokens(str(fn.get("name", ""))) + count_tokens(str(fn.get("arguments", "")))
        )
    return tokens


def tools_segment(tools: Any) -> tuple[bytes, int]:
    """The tool declarations as the prompt holds them: (their bytes, their tokens)."""
    if not tools:
        return b"", 0
    raw = json.dumps(tools, ensure_ascii=False, separators=(",", ":"))
    return raw.encode(), 8 + count_tokens(raw)


def prompt_size(req: dict[str, Any]) -> int:
    """A request's prompt tokens: its tool schemas and its messages. The one count behind the
    window check, TPM admission and the reported ``prompt_tokens`` (``_prompt`` adds up the
    same segments)."""
    return tools_segment(req.get("tools"))[1] + sum(message_tokens(m) for m in req["messages"])


class SimError(Exception):
    def __init__(self, status: int, error_type: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after


@dataclass
class SimConfig:
    """What the simulator enforces and how it answers."""

    policy: Policy = field(default_factory=ToolLoopPolicy)
    api_keys: dict[str, str] = field(default_factory=lambda: {"sk-sim": "ai"})
    region: str = "ai"
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    faults: FaultPlan = field(default_factory=FaultPlan)
    # Soft rules (reported by third parties): reject assistant messages without
    # reasoning_content even when they carry no tool calls.
    strict: bool = False
    echo_key: bool = False  # a 401 quotes the key it was given (see _authenticate)
    # tool_choice "none" removes tool calls from the answer, as the real API does; False
    # imitates a model that calls tools anyway
    honour_tool_choice: bool = True
    usage_placement: str = "alternate"  # "top", "choice" or "alternate" (streamed usage)
    chunk_chars: int = 24
    latency: float = 0.0  # seconds before the first byte (on the clock)
    batch_delay: float = 0.0  # seconds between network writes of a stream (a slow generation)
    clock: Clock = field(default_factory=MonotonicClock)
    # which server to be (profiles.py): "kimi", "llamacpp", "llama-server", "vllm", "sglang",
    # "openai", or a ServerProfile; ``models`` overrides the profile's models and windows
    profile: str | ServerProfile = "kimi"
    models: dict[str, int] | None = None


@dataclass
class SimStats:
    requests: int = 0
    completions: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    max_in_flight: int = 0
    cut_at_done: int = 0  # streams ended with [DONE] and no finish_reason (profile)
    empty_overflows: int = 0  # streamed prompts over the window answered 200, empty (profile)
    connections: int = 0  # TCP connections accepted (a client that pools reuses a few)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    # beside each body: the usage its completion reported (or would have, for a cut stream);
    # None for a request refused before it was generated
    usages: list[dict[str, int] | None] = field(default_factory=list)
    keep_bodies: bool = True


class _Account:
    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.charges: deque[list[float]] = deque()  # [arrival, tokens]
        self.tokens_in_window = 0.0
        self.in_flight = 0
        self.prefixes: dict[bytes, int] = {}


class SimServer:
    """Run with ``async with SimServer(config) as sim`` (this event loop) or
    ``with SimServer(config).run_in_thread() as sim`` (its own loop in a thread)."""

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or SimConfig()
        self.profile = profile(self.config.profile)
        self.models = dict(self.config.models or self.profile.models or MODELS)
        self.host = host
        self.port = port
        self.stats = SimStats()
        self._accounts: dict[str, _Account] = {}
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._trace = 0
        self._calls = 0  # tool-call ids are numbered across the server's life, like Kimi's

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, limit=2**24
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def run_in_thread(self) -> _ThreadRunner:
        return _ThreadRunner(self)

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    # -- HTTP --------------------------------------------------------------------------------
    @property
    def open_connections(self) -> int:
        """TCP connections a client holds open right now (pooled idle ones included)."""
        return len(self._connections)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        self.stats.connections += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                parts = line.decode("latin-1").split()
                if len(parts) != 3:
                    break
                method, target, _ = parts
                headers: dict[str, str] = {}
                while True:
                    raw = await reader.readline()
                    if raw in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                keep = await self._dispatch(method, target.split("?")[0], headers, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            if not writer.is_closing():
                writer.close()

    def _trace_id(self) -> str:
        self._trace += 1
        return f"sim-{self._trace:06d}"

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        obj: Any,
        extra: dict[str, str] | None = None,
        trace: str | None = None,
    ) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode()
        await self._send_body(writer, status, "application/json", body, extra, trace)

    async def _send_body(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        extra: dict[str, str] | None = None,
        trace: str | None = None,
    ) -> None:
        head = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        if trace:
            head.append(f"x-trace-id: {trace}")
        for k, v in (extra or {}).items():
            head.append(f"{k}: {v}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1

    async def _send_error(self, writer: asyncio.StreamWriter, err: SimError, trace: str) -> None:
        extra = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
        await self._send_json(
            writer,
            err.status,
            {"error": {"type": err.error_type, "message": err.message}},
            extra,
            trace,
        )

    async def _dispatch(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        self.stats.requests += 1
        trace = self._trace_id()
        try:
            key = self._authenticate(headers)
            if method == "GET" and path == "/v1/models":
                data = [self.profile.listing(m, w) for m, w in self.models.items()]
                await self._send_json(writer, 200, {"object": "list", "data": data}, None, trace)
                return True
            if method == "POST" and path == "/v1/tokenizers/estimate-token-count":
                req = self._parse_body(body)
                self._check_model(req.get("model"))
                total = sum(
                    message_tokens(m) for m in req.get("messages") or [] if isinstance(m, dict)
                )
                await self._send_json(
                    writer,
                    200,
                    {"code": 0, "data": {"total_tokens": total}, "scode": "0x0", "status": True},
                    None,
                    trace,
                )
                return True
            if method == "POST" and path == "/v1/chat/completions":
                return await self._chat(key, body, writer, trace)
            raise SimError(404, "resource_not_found_error", f"no route for {method} {path}")
        except SimError as err:
            await self._send_error(writer, err, trace)
            return True

    def _authenticate(self, headers: dict[str, str]) -> str:
        auth = headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not self.profile.kimi_contract:
            return key  # a local server takes any key, or none
        region = self.config.api_keys.get(key)
        if not key or region != self.config.region:
            message = "Invalid Authentication"
            if self.config.echo_key:  # as some OpenAI-compatible servers and proxies do
                message = f"Incorrect API key provided: {key}"
            raise SimError(401, "invalid_authentication_error", message)
        return key

    @staticmethod
    def _parse_body(body: bytes) -> dict[str, Any]:
        try:
            req = json.loads(body)
        except ValueError:
            raise SimError(
                400, "invalid_request_error", "Invalid request: body is not valid JSON"
            ) from None
        if not isinstance(req, dict):
            raise SimError(400, "invalid_request_error", "Invalid request: body must be an object")
        return req

    def _check_model(self, model: Any) -> int:
        if model not in self.models:
            if self.profile.any_model and self.models:  # one model, whatever it is called
                return next(iter(self.models.values()))
            raise SimError(
                404, "resource_not_found_error", f"Not found the model {model} or Permission denied"
            )
        return self.models[model]

    # -- rate limits -------------------------------------------------------------------------
    def _admit(self, account: _Account, prompt_tokens: int) -> list[float]:
        cfg = self.config
        now = cfg.clock.now()
        horizon = now - 60.0
        while account.requests and account.requests[0] <= horizon:
            account.requests.popleft()
        while account.charges and account.charges[0][0] <= horizon:
            account.tokens_in_window -= account.charges.popleft()[1]
        org = "Your account org-sim<ak-sim>"
        if cfg.max_concurrency is not None and account.in_flight >= cfg.max_concurrency:
            self.stats.rate_limited += 1
            raise SimError(
                429,
                "rate_limit_reached_error",
                f"{org} request reached organization max concurrency: "
                f"{cfg.max_concurrency}, please try again after 1 seconds",
                1,
            )
        if cfg.rpm is not None and len(account.requests) >= cfg.rpm:
            wait = max(1, math.ceil(account.requests[-cfg.rpm] + 60.0 - now))
            self.stats.rate_limited += 1
            raise SimError(
                429,
                "rate_limit_reached_error",
                f"{org} request reached organization max RPM: {cfg.rpm}, please try "
                f"again after {wait} seconds",
                wait,
            )
        if cfg.tpm is not None and account.tokens_in_window + prompt_tokens > cfg.tpm:
            self.stats.rate_limited += 1
            raise SimError(
                429,
                "rate_limit_reached_error",
                f"{org} request reached TPM rate limit, current:"
                f"{int(account.tokens_in_window)}, limit:{cfg.tpm}",
                1,
            )
        account.requests.append(now)
        charge = [now, float(prompt_tokens)]
        account.charges.append(charge)
        account.tokens_in_window += prompt_tokens
        return charge

    # -- validation --------------------------------------------------------------------------
    def _validate(self, req: dict[str, Any], window: int) -> tuple[bool, int]:
        def bad(message: str) -> SimError:
            return SimError(400, "invalid_request_error", message)

        model = req["model"]
        thinking_raw = req.get("thinking")
        thinking = model in THINKING_MODELS
        if thinking_raw is not None:
            if not isinstance(thinking_raw, dict):
                raise bad(
                    "Invalid request: thinking must be an object like "
                    '{"type": "enabled"}, got ' + json.dumps(thinking_raw)
                )
            kind = thinking_raw.get("type")
            if kind not in ("enabled", "disabled"):
                raise bad(
                    f"Invalid request: thinking.type must be 'enabled' or 'disabled', got {kind!r}"
                )
            if thinking_raw.get("keep") not in (None, "all"):
                raise bad("Invalid request: thinking.keep must be 'all' or null")
            if model == "kimi-k2-thinking" and kind == "disabled":
                raise bad("Invalid request: thinking cannot be disabled for this model")
            thinking = kind == "enabled" and model in THINKING_MODELS
        if "reasoning_effort" in req and thinking_raw is not None:
            raise bad("Invalid request: reasoning_effort cannot be used together with thinking")
        if thinking:
            for param, fixed in FIXED_SAMPLER.items():
                if param in req and req[param] is not None and req[param] != fixed:
                    value = 1 if param == "temperature" else fixed
                    raise bad(f"invalid {param}: only {value} is allowed for this model")
            choice = req.get("tool_choice")
            if choice is not None and choice not in ("auto", "none"):
                raise bad(
                    "Invalid request: tool_choice must be 'auto' or 'none' when thinking "
                    f"is enabled, got {json.dumps(choice)}"
                )
        tools = req.get("tools") or []
        if not isinstance(tools, list):
            raise bad("Invalid request: tools must be an array")
        if len(tools) > 128:
            raise bad(f"Invalid request: too many tools: {len(tools)} > 128")
        seen: set[Any] = set()
        for tool in tools:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict):
                raise bad("Invalid request: each tool needs a function object")
            name = fn.get("name")
            if tool.get("type") == "builtin_function":
                if name != "$web_search":
                    raise bad(f"Invalid request: unknown builtin function {name!r}")
            elif tool.get("type") == "function":
                if not isinstance(name, str) or not TOOL_NAME.match(name):
                    raise bad(
                        f"Invalid request: function name {name!r} is invalid, it must match "
                        "^[a-zA-Z_][a-zA-Z0-9_-]{2,63}$"
                    )
                # walle's strict level, the API's: a default beside anyOf/$ref passes
                problems = mfjs.check(fn.get("parameters", {}), level=mfjs.SERVER_LEVEL)
                if problems:
                    raise bad(f"Invalid request: tool {name} parameters: {problems[0]}")
            else:
                raise bad(f"Invalid request: unknown tool type {tool.get('type')!r}")
            if name in seen:
                raise bad(f"Invalid request: function name {name} is duplicated")
            seen.add(name)
        self._validate_messages(req.get("messages"), thinking)
        max_tokens = req.get("max_tokens", req.get("max_completion_tokens"))
        if max_tokens is None:
            max_tokens = 32_768
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise bad("Invalid request: max_tokens must be a positive integer")
        return thinking, max_tokens

    def _validate_messages(self, messages: Any, thinking: bool) -> None:
        def bad(message: str) -> SimError:
            return SimError(400, "invalid_request_error", message)

        if not isinstance(messages, list) or not messages:
            raise bad("Invalid request: messages must be a non-empty array")
        pending: dict[str, bool] | None = None
        for index, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise bad(f"Invalid request: message at index {index} must be an object")
            role = msg.get("role")
            if role not in ("system", "user", "assistant", "tool"):
                raise bad(f"Invalid request: unknown role {role!r} at index {index}")
            content = msg.get("content")
            if isinstance(content, list):
                for part in content:
                    if (
                        isinstance(part, dict)
                        and part.get("type") == "text"
                        and not part.get("text")
                    ):
                        raise bad("Invalid request: text content is empty")
            if role == "tool":
                call_id = msg.get("tool_call_id")
                if pending is None or call_id not in pending:
                    raise bad(
                        f"Invalid request: tool_call_id {call_id} is not found in the "
                        f"preceding assistant message (message index {index})"
                    )
                if pending[call_id]:
                    raise bad(f"Invalid request: duplicate tool message for tool_call_id {call_id}")
                pending[call_id] = True
                continue
            if pending is not None and not all(pending.values()):
                missing = [k for k, done in pending.items() if not done]
                raise bad(
                    "Invalid request: an assistant message with 'tool_calls' must be "
                    "followed by tool messages responding to each 'tool_call_id'. "
                    f"Missing: {', '.join(missing)}"
                )
            pending = None
            if role == "assistant":
                calls = msg.get("tool_calls")
                if thinking and "reasoning_content" not in msg and (calls or self.config.strict):
                    kind = "tool call message" if calls else "message"
                    raise bad(
                        "thinking is enabled but reasoning_content is missing in "
                        f"assistant {kind} at index {index}"
                    )
                if calls:
                    pending = {}
                    for call in calls:
                        pending[str(call.get("id"))] = False
                        # (soft) the server parses every non-empty arguments string of the
                        # history, strictly (kimi-cli #1378, #2165, #1171)
                        arguments = (call.get("function") or {}).get("arguments")
                        if self.config.strict and isinstance(arguments, str) and arguments:
                            try:
                                json.loads(arguments)
                            except ValueError as exc:
                                raise bad(
                                    f"Invalid request: the arguments of tool call {call.get('id')} "
                                    f"(message index {index}) are not valid JSON: {exc}"
                                ) from None
        if pending is not None and not all(pending.values()):
            raise bad(
                "Invalid request: the last assistant message's tool calls have no tool messages"
            )

    # -- caching -----------------------------------------------------------------------------
    def _prompt(self, account: _Account, req: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, cached tokens): the cache hit is the longest message prefix that an
        earlier prompt of this account shared byte for byte."""
        segments: list[tuple[bytes, int]] = []
        tools = tools_segment(req.get("tools"))  # the same segments as prompt_size
        if tools[1]:
            segments.append(tools)
        for msg in req["messages"]:
            raw = json.dumps(msg, ensure_ascii=False, separators=(",", ":"))
            segments.append((raw.encode(), message_tokens(msg)))
        total = 0
        cached = 0
        digest = hashlib.blake2b(digest_size=16)
        for encoded, tokens in segments:
            digest.update(encoded)
            total += tokens
            key = digest.digest()
            if key in account.prefixes:
                cached = total
            else:
                account.prefixes[key] = total
            digest = hashlib.blake2b(key, digest_size=16)
        # the last message is new by construction; a cache only serves whole earlier prefixes
        return total, min(cached, total)

    # -- completions -------------------------------------------------------------------------
    async def _chat(self, key: str, body: bytes, writer: asyncio.StreamWriter, trace: str) -> bool:
        cfg = self.config
        req = self._parse_body(body)
        index = len(self.stats.bodies)
        if self.stats.keep_bodies:
            self.stats.bodies.append(req)
            self.stats.usages.append(None)
        window = self._check_model(req.get("model"))
        account = self._accounts.setdefault(key, _Account())
        self.stats.completions += 1
        number = self.stats.completions
        fault = cfg.faults.pick(number)
        if fault == "auth":
            raise SimError(401, "invalid_authentication_error", "Invalid Authentication")
        if fault == "reset":
            _reset(writer)
            return False
        thinking, max_tokens = self._validate(req, window)
        if not isinstance(req.get("messages"), list):
            raise SimError(400, "invalid_request_error", "Invalid request: messages missing")
        prompt_tokens = prompt_size(req)  # tools included, as reported and as admitted (TPM)
        preamble = self.profile.tool_preamble_tokens if req.get("tools") else 0
        prompt_tokens += preamble
        if prompt_tokens + max_tokens > window:
            prof = self.profile
            if req.get("stream") and prof.streamed_overflow == "empty200":
                self.stats.empty_overflows += 1  # llama-cpp-python: 200, then nothing
                await self._send_body(writer, 200, "text/event-stream", b"", None, trace)
                return True
            status, error = prof.context_error(window, prompt_tokens, max_tokens)
            await self._send_json(writer, status, error, None, trace)
            return True
        if fault == "429":
            wait = cfg.faults.retry_after
            raise SimError(
                429,
                "rate_limit_reached_error",
                "Your account org-sim<ak-sim> request reached organization max RPM: "
                f"{cfg.rpm or 50}, please try again after {wait} seconds",
                wait,
            )
        if fault == "retrydate":  # Retry-After as an HTTP date (RFC 9110 §10.2.3), as proxies do
            when = email.utils.formatdate(time.time() + cfg.faults.retry_after, usegmt=True)
            error = {"type": "rate_limit_reached_error", "message": "Too many requests"}
            await self._send_json(writer, 429, {"error": error}, {"Retry-After": when}, trace)
            return True
        if fault == "overload":
            raise SimError(
                429,
                "engine_overloaded_error",
                "The engine is currently overloaded, please try again later",
            )
        if fault == "filter":
            raise SimError(
                400,
                "content_filter",
                "The request was rejected because it was considered high risk",
            )
        if fault == "403":
            raise SimError(
                403, "permission_denied_error", "You do not have permission to access this model"
            )
        if fault == "quota":
            raise SimError(
                429,
                "exceeded_current_quota_error",
                "Your account org-sim<ak-sim> is suspended, please check your plan "
                "and billing details",
            )
        if fault in ("500", "502", "503"):
            raise SimError(
                int(fault),
                "server_error",
                "The server had an error while processing your request, please retry",
            )
        if fault in ("gateway", "html"):  # a proxy's error page, a captive portal's login page
            page = GATEWAY_PAGE if fault == "gateway" else PORTAL_PAGE
            status = 503 if fault == "gateway" else 200
            await self._send_body(writer, status, "text/html; charset=utf-8", page, None, trace)
            return True
        charge = self._admit(account, prompt_tokens)
        account.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, account.in_flight)
        try:
            prompt_tokens, cached = self._prompt(account, req)
            prompt_tokens += preamble
            ctx = PolicyContext(
                req["messages"],
                req.get("tools") or [],
                thinking,
                max_tokens,
                self.stats.completions,
                req.get("tool_choice"),
            )
            turn = cfg.policy(ctx)
            if not thinking:
                turn = Turn("", turn.content, turn.tool_calls, finish=turn.finish)
            if not ctx.may_call_tools and cfg.honour_tool_choice:
                turn = Turn(turn.reasoning, turn.content, [], turn.reasoning_tokens, turn.finish)
            message, finish, completion = self._apply_budget(turn, max_tokens, req)
            finish = turn.finish or finish
            if fault == "truncargs" and message.get("tool_calls"):
                args = message["tool_calls"][0]["function"]["arguments"]
                message["tool_calls"][0]["function"]["arguments"] = args[: max(1, len(args) // 2)]
            charge[1] += completion
            account.tokens_in_window += completion
            self.stats.prompt_tokens += prompt_tokens
            self.stats.cached_tokens += cached
            self.stats.completion_tokens += completion
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
                "cached_tokens": cached,
            }
            if self.stats.keep_bodies:
                self.stats.usages[index] = usage
            delay = (cfg.faults.slow_seconds if fault == "slow" else 0.0) + cfg.latency
            if delay:
                await cfg.clock.sleep(delay)
            created = int(time.time())
            prof = self.profile
            if req.get("stream") and (
                fault == "donecut"
                or number in prof.cut_streams
                or (prof.cut_when_busy and account.in_flight > 1)
            ):
                return await self._cut_at_done(writer, trace, req, created)
            if not req.get("stream"):
                payload = {
                    "id": f"chatcmpl-{trace}",
                    "object": "chat.completion",
                    "created": created,
                    "model": req["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
                if fault == "badchunk":  # a body of the wrong shape, sent as it is
                    body = cfg.faults.bad_chunk.encode()
                    await self._send_body(writer, 200, "application/json", body, None, trace)
                    return True
                await self._send_json(writer, 200, payload, None, trace)
                return True
            return await self._stream(writer, trace, req, message, finish, usage, fault, created)
        finally:
            account.in_flight -= 1

    def _apply_budget(
        self, turn: Turn, max_tokens: int, req: dict[str, Any]
    ) -> tuple[dict[str, Any], str, int]:
        reasoning_tokens = (
            turn.reasoning_tokens
            if turn.reasoning_tokens is not None
            else count_tokens(turn.reasoning)
        )
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if reasoning_tokens >= max_tokens:
            # the whole budget went on thinking: no answer, no tool call (seed 001 §3)
            keep = max(0, len(turn.reasoning) * max_tokens // max(reasoning_tokens, 1))
            message["reasoning_content"] = turn.reasoning[:keep]
            return message, "length", max_tokens
        message["reasoning_content"] = turn.reasoning
        room = max_tokens - reasoning_tokens
        content = turn.content
        partial = req["messages"][-1]
        if partial.get("role") == "assistant" and partial.get("partial"):
            prefix = str(partial.get("content") or "")
            if content.startswith(prefix):
                content = content[len(prefix) :]  # partial mode: never repeat the prefix
        content_tokens = count_tokens(content)
        if content_tokens > room:
            message["content"] = content[: room * 4]
            return message, "length", max_tokens
        message["content"] = content
        calls = []
        used = reasoning_tokens + content_tokens
        for index, call in enumerate(turn.tool_calls):
            used += 4 + count_tokens(call.name) + count_tokens(call.arguments)
            calls.append(self._wire_call(call, index))
        if used > max_tokens:
            message.pop("tool_calls", None)
            return message, "length", max_tokens
        if calls:
            message["tool_calls"] = calls
            return message, "tool_calls", used
        return message, "stop", used

    def _wire_call(self, call: ToolCall, index: int) -> dict[str, Any]:
        call_id = call.id or f"functions.{call.name}:{self._calls}"
        self._calls += 1
        return {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }

    def _chunks(self, message: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Delta dicts: role, reasoning pieces, content pieces, then tool calls interleaved."""
        n = self.config.chunk_chars
        yield {"role": "assistant", "content": ""}
        reasoning = message.get("reasoning_content", "")
        if reasoning == "" and "reasoning_content" in message:
            yield {"reasoning_content": ""}
        for i in range(0, len(reasoning), n):
            yield {"reasoning_content": reasoning[i : i + n]}
        content = message.get("content") or ""
        for i in range(0, len(content), n):
            yield {"content": content[i : i + n]}
        calls = message.get("tool_calls") or []
        for call in calls:
            yield {
                "tool_calls": [
                    {
                        "index": call["index"],
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ]
            }
        pieces = [
            [a[i : i + n] for i in range(0, len(a), n)]
            for a in (c["function"]["arguments"] for c in calls)
        ]
        for round_ in range(max((len(p) for p in pieces), default=0)):
            for call, parts in zip(calls, pieces, strict=True):
                if round_ < len(parts):  # several calls interleave by index
                    yield {
                        "tool_calls": [
                            {"index": call["index"], "function": {"arguments": parts[round_]}}
                        ]
                    }

    async def _hold(self, writer: asyncio.StreamWriter, keepalive: bytes) -> None:
        """Keep a stream open and send no data (``keepalive`` every ``keepalive_seconds``, or
        nothing) until the client goes away or the server stops."""
        if keepalive:
            writer.write(_chunked(keepalive))
        await writer.drain()
        while not writer.is_closing():
            await self.config.clock.sleep(self.config.faults.keepalive_seconds)
            if keepalive:
                writer.write(_chunked(keepalive))
                await writer.drain()  # raises once the client has closed the connection

    async def _cut_at_done(
        self, writer: asyncio.StreamWriter, trace: str, req: dict[str, Any], created: int
    ) -> bool:
        """A role chunk, then ``[DONE]``: no finish_reason, no usage (the recorded
        ``cut_under_concurrency.txt``)."""
        self.stats.cut_at_done += 1
        chunk = {
            "id": f"chatcmpl-{trace}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": req["model"],
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant"},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        body = (PING if self.profile.ping else b"") + b"data: " + json.dumps(chunk).encode()
        body += b"\n\ndata: [DONE]\n\n"
        await self._send_body(writer, 200, "text/event-stream", body, None, trace)
        return True

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        trace: str,
        req: dict[str, Any],
        message: dict[str, Any],
        finish: str,
        usage: dict[str, Any],
        fault: str | None,
        created: int,
    ) -> bool:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            f"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\nx-trace-id: {trace}"
            "\r\n\r\n"
        )
        prof = self.profile
        if prof.buffers_tools and req.get("tools"):
            # the whole generation happens before the first byte (llama-cpp-python with tools)
            await self.config.clock.sleep(usage["completion_tokens"] / prof.decode_tokens_per_s)
        writer.write(head.encode())
        if prof.ping:
            writer.write(_chunked(PING))
        self.stats.by_status[200] = self.stats.by_status.get(200, 0) + 1
        base = {
            "id": f"chatcmpl-{trace}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": req["model"],
        }
        deltas = list(self._chunks(message))
        if fault in ("trickle", "silent"):
            await self._hold(writer, KEEPALIVE if fault == "trickle" else b"")
            return False
        half = len(deltas) // 2
        cut_at = half if fault == "cut" else -1
        bad_at = half if fault == "badsse" else -1
        shape_at = half if fault == "badchunk" else -1
        stall_at = half if fault == "stall" else -1
        out: list[bytes] = []
        for i, delta in enumerate(deltas):
            if i == cut_at:
                writer.write(_chunked(b"".join(out)))
                await writer.drain()
                _reset(writer)
                return False
            if i == stall_at:
                writer.write(_chunked(b"".join(out)))
                await writer.drain()
                await self._hold(writer, KEEPALIVE)
                return False
            if i == bad_at:
                out.append(b'data: {"id": "broken", "choices": [{"delta": {"content": "x\n\n')
            if i == shape_at:
                out.append(b"data: " + self.config.faults.bad_chunk.encode() + b"\n\n")
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            out.append(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n")
            if len(out) >= 32:
                writer.write(_chunked(b"".join(out)))
                out.clear()
                await writer.drain()
                if self.config.batch_delay:
                    await self.config.clock.sleep(self.config.batch_delay)
        placement = self.config.usage_placement
        if placement == "alternate":
            placement = "top" if self.stats.completions % 2 else "choice"
        final: dict[str, Any] = {
            **base,
            "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
        }
        options = req.get("stream_options")
        wanted = isinstance(options, dict) and options.get("include_usage") is True
        if prof.stream_usage == "never" or (prof.stream_usage == "requested" and not wanted):
            pass  # no usage in the stream
        elif placement == "choice":
            final["choices"][0]["usage"] = usage
        else:
            final["usage"] = usage
        out.append(b"data: " + json.dumps(final).encode() + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        writer.write(_chunked(b"".join(out)) + b"0\r\n\r\n")
        await writer.drain()
        return True


GATEWAY_PAGE = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
PORTAL_PAGE = (
    b"<!DOCTYPE html><html><head><title>Hotel Wi-Fi \xe2\x80\x94 sign in</title></head><body>"
    b"<h1>Welcome</h1><p>Please accept the terms of use to continue browsing.</p>"
    + b"<!-- padding -->" * 40
    + b"</body></html>"
)
KEEPALIVE = b": keep-alive\n\n"
PING = b": ping - 2026-12-01 22:07:25.906126+00:00\n\n"  # sse-starlette's, as recorded


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n" if data else b""


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP RST, as a crashed upstream would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _ThreadRunner:
    """Runs a SimServer on its own event loop in a daemon thread."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SimServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.server.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.server.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="agentloop-sim", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
