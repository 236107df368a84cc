"""The provider-neutral model interface.

A ``ModelRequest`` (messages, tools, this call's output budget) goes in; an async stream of typed
deltas comes out; ``assemble`` turns the deltas into one ``ModelResponse`` whose ``message`` is the
assistant message in wire form, ready to append to the history verbatim.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import APIError
from ..messages import Message, Usage
from ..pricing import RateCard


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function tool as the model sees it."""

    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool = True


@dataclass(frozen=True, slots=True)
class BuiltinTool:
    """A tool the provider runs itself, e.g. Kimi's ``$web_search``."""

    name: str

    def answer(self, arguments: str) -> str:
        """The tool message that completes the call. Kimi runs its builtin functions on its
        side and expects the call's arguments back unchanged as the result."""
        return arguments


AnyTool = ToolSpec | BuiltinTool
ToolChoice = Literal["auto", "none", "required"] | str


@dataclass(slots=True)
class ModelRequest:
    messages: Sequence[Message]
    tools: Sequence[AnyTool] = ()
    max_tokens: int | None = None
    tool_choice: ToolChoice | None = None
    # Per-call override of the client's thinking setting (e.g. for $web_search or forced tools).
    thinking: bool | None = None
    # The caller's figure for the prompt's size (the agent measures it from usage), which saves
    # the model client estimating the whole history again.
    input_tokens: int | None = None


# -- deltas ----------------------------------------------------------------------------------
@dataclass(slots=True)
class ResponseStarted:
    request_id: str | None
    attempt: int
    limiter_wait: float


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of tool call ``index``; ``id``/``name`` arrive with its first fragment."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(slots=True)
class UsageDelta:
    usage: Usage


@dataclass(slots=True)
class FinishDelta:
    reason: str | None


@dataclass(slots=True)
class RetryDelta:
    """The attempt failed and will be retried: discard everything since ``ResponseStarted``."""

    attempt: int
    error: APIError
    wait: float


Delta = (
    ResponseStarted
    | ReasoningDelta
    | TextDelta
    | ToolCallDelta
    | UsageDelta
    | FinishDelta
    | RetryDelta
)


@dataclass(slots=True)
class ModelResponse:
    message: Message
    finish_reason: str | None
    usage: Usage
    request_id: str | None = None
    attempts: int = 1
    limiter_wait: float = 0.0
    retries: list[RetryDelta] = field(default_factory=list)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        calls = self.message.get("tool_calls")
        return calls if isinstance(calls, list) else []

    @property
    def text(self) -> str:
        content = self.message.get("content")
        return content if isinstance(content, str) else ""

    @property
    def reasoning(self) -> str:
        value = self.message.get("reasoning_content")
        return value if isinstance(value, str) else ""


@runtime_checkable
class Model(Protocol):
    """What the agent loop needs of a model client."""

    name: str
    provider: str  # the gen_ai.provider.name of telemetry, e.g. "moonshot"
    context_window: int
    default_max_tokens: int
    min_max_tokens: int
    rate_card: RateCard | None

    def stream(self, request: ModelRequest) -> AsyncGenerator[Delta, None]: ...

    def estimate_tokens(
        self, messages: Sequence[Message], tools: Sequence[AnyTool] = ()
    ) -> int: ...

    async def aclose(self) -> None: ...


class Assembler:
    """Builds the assistant message from deltas. Reset on ``RetryDelta``."""

    __slots__ = ("_calls", "_content", "_reasoning", "_saw_reasoning", "response")

    def __init__(self) -> None:
        self.response = ModelResponse(message={}, finish_reason=None, usage=Usage())
        self._reset()

    def _reset(self) -> None:
        self._reasoning: list[str] = []
        self._saw_reasoning = False
        self._content: list[str] = []
        self._calls: dict[int, list[Any]] = {}

    def feed(self, delta: Delta) -> None:
        # by exact type first: the common deltas, a few a step, without an isinstance chain
        if type(delta) is ToolCallDelta:
            self._call(delta)
        elif type(delta) is TextDelta:
            self._content.append(delta.text)
        elif type(delta) is ReasoningDelta:
            self._saw_reasoning = True
            self._reasoning.append(delta.text)
        elif type(delta) is UsageDelta:
            self.response.usage = delta.usage
        elif type(delta) is FinishDelta:
            self.response.finish_reason = delta.reason
        else:
            self._feed_other(delta)

    def _call(self, delta: ToolCallDelta) -> None:
        call = self._calls.get(delta.index)
        if call is None:
            self._calls[delta.index] = [delta.id, delta.name, [delta.arguments]]
        else:
            if delta.id and not call[0]:
                call[0] = delta.id
            if delta.name and not call[1]:
                call[1] = delta.name
            call[2].append(delta.arguments)

    def _feed_other(self, delta: Delta) -> None:
        if isinstance(delta, ToolCallDelta):  # a subclass, say
            self._call(delta)
        elif isinstance(delta, TextDelta):
            self._content.append(delta.text)
        elif isinstance(delta, ReasoningDelta):
            self._saw_reasoning = True
            self._reasoning.append(delta.text)
        elif isinstance(delta, UsageDelta):
            self.response.usage = delta.usage
        elif isinstance(delta, FinishDelta):
            self.response.finish_reason = delta.reason
        elif isinstance(delta, ResponseStarted):
            self.response.request_id = delta.request_id
            self.response.attempts = delta.attempt
            self.response.limiter_wait += delta.limiter_wait
        elif isinstance(delta, RetryDelta):
            self.response.retries.append(delta)
            self.response.finish_reason = None
            self.response.usage = Usage()
            self._reset()

    def finish(self, *, keep_reasoning: bool = True) -> ModelResponse:
        message: Message = {"role": "assistant", "content": "".join(self._content)}
        if keep_reasoning and self._saw_reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._calls:
            message["tool_calls"] = [
                {
                    "id": call[0] or "",
                    "type": "function",
                    "function": {"name": call[1] or "", "arguments": "".join(call[2])},
                }
                for _, call in sorted(self._calls.items())
            ]
        self.response.message = message
        return self.response


async def assemble(stream: AsyncIterator[Delta]) -> ModelResponse:
    """Consume a delta stream into one response."""
    assembler = Assembler()
    async for delta in stream:
        assembler.feed(delta)
    return assembler.finish()


def estimate_tokens_of(payload: Any) -> int:
    """A conservative token estimate: about four bytes of serialised JSON per token."""
    raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return len(raw.encode()) // 4 + 1
