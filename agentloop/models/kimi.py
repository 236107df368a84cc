"""Moonshot Kimi (kimi-k2.6 and kin): every quirk of the API, in one place.

- ``thinking`` is an object, ``{"type": "enabled", "keep": "all"}`` by default (preserved
  thinking for multi-step tool use); never a bool, never beside ``reasoning_effort``.
- With thinking on, the sampler is fixed (temperature 1.0, top_p 0.95, n 1, penalties 0): we send
  none of them, and refuse other values up front instead of collecting a 400.
- ``tool_choice`` may only be "auto" or "none" with thinking on.
- ``max_tokens`` covers reasoning + answer: floor 16,000 with thinking, default 32,000, clamped so
  input + budget fits the 256K window.
- Every assistant message goes back with its ``reasoning_content`` (an empty string is valid);
  tool-call ids pass through untouched; empty text parts are never sent.
- Tool schemas are normalised to Moonshot Flavored JSON Schema and checked before sending.
- ``$web_search`` is a builtin function, used with thinking disabled.
- 401 errors name the base URL and the region rule.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigurationError, ToolSchemaError
from ..messages import Message
from ..pricing import rate_card_for
from . import mfjs
from .base import AnyTool, BuiltinTool, ModelRequest
from .openai import OpenAIModel

INTERNATIONAL = "https://api.moonshot.ai/v1"
CHINA = "https://api.moonshot.cn/v1"
WEB_SEARCH = BuiltinTool("$web_search")

THINKING_SAMPLER = {
    "temperature": 1.0,
    "top_p": 0.95,
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
NON_THINKING_TEMPERATURE = 0.6
MAX_TOOLS = 128
TOOL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]{2,63}$")
CONTEXT_WINDOWS = {
    "kimi-k2.6": 262_144,
    "kimi-k2.5": 262_144,
    "kimi-k2-thinking": 262_144,
    "kimi-k2-thinking-turbo": 262_144,
}


# histories whose rewritten form is kept for the next request (one per run in flight, the oldest
# dropped first)
_OUTGOING_SLOTS = 16


def _empty_text(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and not part.get("text")


def _kimi_message(message: Message, thinking: bool) -> Message:
    """One message as Kimi takes it (see ``KimiModel.outgoing_messages``): itself, or a copy."""
    role = message.get("role")
    fixed = message
    content = message.get("content")
    if isinstance(content, list):
        parts = [p for p in content if not _empty_text(p)]
        if len(parts) != len(content) or (not parts and role == "assistant"):
            fixed = {**fixed, "content": parts or ""}
    if role == "assistant":
        if thinking and "reasoning_content" not in message:
            # A missing field is a 400 with thinking on; "" is valid and keeps the prefix.
            fixed = {**fixed, "reasoning_content": ""}
        if fixed.get("content") is None:
            fixed = {**fixed, "content": ""}
    return fixed


def _is_web_search(tool: AnyTool) -> bool:
    return isinstance(tool, BuiltinTool) and tool.name == WEB_SEARCH.name


class KimiModel(OpenAIModel):
    """The Kimi chat-completions client. Defaults come from ``MOONSHOT_API_KEY`` and
    ``MOONSHOT_BASE_URL`` (else the international endpoint)."""

    provider = "moonshot"
    api_key_env = "MOONSHOT_API_KEY"
    base_url_env = "MOONSHOT_BASE_URL"
    default_base_url = INTERNATIONAL
    thinking_floor = 16_000

    def __init__(
        self,
        model: str = "kimi-k2.6",
        api_key: str | None = None,
        base_url: str | None = None,
        thinking: bool = True,
        *,
        keep_thinking: bool = True,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int = 32_000,
        context_window: int | None = None,
        rpm: int | None = 50,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        prompt_cache_key: str | None = None,
        idle_timeout: float | None = 90.0,
        first_byte_timeout: float | None = 180.0,
        **kwargs: Any,
    ) -> None:
        if thinking:
            for name, value in (("temperature", temperature), ("top_p", top_p)):
                if value is not None and value != THINKING_SAMPLER[name]:
                    raise ConfigurationError(
                        f"{model} with thinking enabled only accepts {name}="
                        f"{THINKING_SAMPLER[name]}; got {value}. Leave it unset, or pass "
                        "thinking=False to choose your own sampler"
                    )
        kwargs.setdefault("require_key", True)
        super().__init__(
            model,
            api_key=api_key,
            base_url=base_url,
            context_window=context_window or CONTEXT_WINDOWS.get(model, 262_144),
            default_max_tokens=max_tokens,
            rate_card=kwargs.pop("rate_card", None) or rate_card_for(model),
            rpm=rpm,
            tpm=tpm,
            max_concurrency=max_concurrency,
            send_reasoning=True,
            **kwargs,
        )
        self.thinking = thinking
        self.keep_thinking = keep_thinking
        self.temperature = temperature
        self.top_p = top_p
        self.prompt_cache_key = prompt_cache_key
        self.min_max_tokens = self.thinking_floor if thinking else 1
        # Kimi streams from its first token: a gap of 90 s between data events is a stall, and
        # 180 s covers time to first token on a full 256K window under load
        self.idle_timeout = idle_timeout
        self.first_byte_timeout = first_byte_timeout
        # id(history) -> (history, thinking, its messages as last sent, their rewritten form)
        self._outgoing: OrderedDict[
            int, tuple[Sequence[Message], bool, list[Message], list[Message]]
        ] = OrderedDict()
        self._checked_tools: tuple[AnyTool, ...] | None = None  # the last list found valid

    def _missing_key_message(self) -> str:
        return (
            "MOONSHOT_API_KEY is not set. Create a key at https://platform.moonshot.ai "
            "(international) or https://platform.moonshot.cn (China) and export it, or pass "
            "api_key=. Keys are region-bound: set MOONSHOT_BASE_URL to "
            f"{CHINA} for a .cn key"
        )

    async def estimate_token_count(self, messages: Sequence[Message]) -> int:
        """Kimi's own count of ``messages`` (``/tokenizers/estimate-token-count``)."""
        import json

        body = json.dumps({"model": self.name, "messages": list(messages)}).encode()
        url = f"{self.base_url}/tokenizers/estimate-token-count"
        async with self._transport.post(url, self._headers, body) as response:
            raw = await response.read()
            if response.status != 200:
                raise self._error(
                    response.status, raw, response.headers.get("x-trace-id"), response.headers
                )
        return int(json.loads(raw)["data"]["total_tokens"])

    # -- tools -----------------------------------------------------------------------------
    def wire_tool(self, tool: AnyTool) -> dict[str, Any]:
        if isinstance(tool, BuiltinTool):
            return {"type": "builtin_function", "function": {"name": tool.name}}
        if not TOOL_NAME.match(tool.name):
            raise ToolSchemaError(
                tool.name,
                ["the name must match ^[a-zA-Z_][a-zA-Z0-9_-]{2,63}$ (3-64 letters, digits, _ -)"],
            )
        parameters = mfjs.normalise(tool.parameters)
        problems = mfjs.check(parameters)
        if problems:
            raise ToolSchemaError(tool.name, problems)
        fn: dict[str, Any] = {
            "name": tool.name,
            "description": tool.description,
            "parameters": parameters,
        }
        if tool.strict:
            fn["strict"] = True
        return {"type": "function", "function": fn}

    # -- request ---------------------------------------------------------------------------
    def thinking_for(self, request: ModelRequest) -> bool:
        if request.thinking is not None:
            return request.thinking
        # $web_search is not supported together with thinking (seed 000)
        return self.thinking and not any(_is_web_search(t) for t in request.tools)

    def max_tokens_for(self, request: ModelRequest, input_estimate: int) -> int:
        wanted = request.max_tokens or self.default_max_tokens
        if self.thinking_for(request):
            wanted = max(wanted, self.thinking_floor)
        room = self.context_window - input_estimate
        return max(1, min(wanted, room))

    def outgoing_messages(self, messages: Sequence[Message], thinking: bool) -> list[Message]:
        """The history as Kimi takes it; the caller's messages are never mutated.

        - An assistant message gets ``reasoning_content: ""`` when it has none (thinking on)
          and ``content: ""`` for a missing content (contract items 10, 11).
        - An empty text part (``{"type": "text", "text": ""}``) is dropped from any message's
          content list, mixed with other parts or not: the API answers it with 400 ``text
          content is empty`` (contract item 11). The contract states that 400 of the part, not
          of a role, and the seeds send user content as the same part lists (seed 004), so user
          (and system, tool) messages are treated alike and the simulator rejects the part in
          every role. A list left with no parts is sent as ``""``, the form item 11 gives for
          no text. The rewrite is the same on every request, so cached prefixes still match.

        A run sends the same list again with messages appended: the part already rewritten for
        that list is reused (its messages compared in C, by identity first), so a step's cost
        does not grow with the history. A message is never edited in place once in a history
        (context strategies replace it, see ``ContextWindow.replace``); a replaced message, or
        any change in the prefix, is rewritten afresh.
        """
        memo = self._outgoing
        key = id(messages)
        entry = memo.get(key)
        start = 0
        out: list[Message] = []
        if entry is not None and entry[0] is messages and entry[1] == thinking:
            seen, sent = entry[2], entry[3]
            if len(seen) <= len(messages) and messages[: len(seen)] == seen:
                start = len(seen)
                out = list(sent)
            memo.move_to_end(key)
        out.extend(_kimi_message(m, thinking) for m in messages[start:])
        memo[key] = (messages, thinking, list(messages), out)
        if len(memo) > _OUTGOING_SLOTS:
            memo.popitem(last=False)
        return list(out)

    def build_body(self, request: ModelRequest, input_estimate: int) -> dict[str, Any]:
        thinking = self.thinking_for(request)
        tools = tuple(request.tools)
        if tools != self._checked_tools:  # a run offers the same list every step
            if len(tools) > MAX_TOOLS:
                raise ConfigurationError(
                    f"Kimi accepts at most {MAX_TOOLS} tools; got {len(tools)}"
                )
            names = [t.name for t in tools]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ConfigurationError(f"duplicate tool names: {', '.join(duplicates)}")
            self._checked_tools = tools
        choice = request.tool_choice
        if thinking and choice not in (None, "auto", "none"):
            raise ConfigurationError(
                f"tool_choice={choice!r} is rejected by Kimi while thinking is enabled (only "
                "'auto' or 'none'); pass thinking=False on this request to force a tool"
            )
        body = super().build_body(request, input_estimate)
        if thinking:
            body["thinking"] = {"type": "enabled", "keep": "all" if self.keep_thinking else None}
        else:
            body["thinking"] = {"type": "disabled"}
            body["temperature"] = (
                self.temperature if self.temperature is not None else NON_THINKING_TEMPERATURE
            )
            if self.top_p is not None:
                body["top_p"] = self.top_p
        if self.prompt_cache_key is not None:
            body["prompt_cache_key"] = self.prompt_cache_key
        body.pop("reasoning_effort", None)
        return body
