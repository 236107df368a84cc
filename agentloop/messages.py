"""Message and usage types shared by every layer.

Messages stay in wire form (plain dicts, exactly as the chat-completions API takes them): the
history a run keeps is byte-for-byte what is sent back, which is what Kimi's prefix cache and
its ``reasoning_content`` round-trip rule both need. ``Usage`` is the one typed record of
token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Message = dict[str, Any]


@dataclass(slots=True)
class Usage:
    """Token counts as billed. ``input_tokens`` includes ``cached_input_tokens``.

    ``estimated``: some of these counts are the client's estimate, not the server's (a response
    that carried no usage, as llama.cpp's streams never do); a sum is estimated if any part is."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int | None = None
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cached_input_tokens

    def copy(self) -> Usage:
        """A copy (``dataclasses.replace`` costs several times more, once per step)."""
        return Usage(
            self.input_tokens,
            self.cached_input_tokens,
            self.output_tokens,
            self.reasoning_tokens,
            self.estimated,
        )

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.cached_input_tokens += other.cached_input_tokens
        self.output_tokens += other.output_tokens
        if other.reasoning_tokens is not None:
            self.reasoning_tokens = (self.reasoning_tokens or 0) + other.reasoning_tokens
        if other.estimated:
            self.estimated = True

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Usage:
        """Parse a chat-completions ``usage`` object; ``cached_tokens`` may sit in two places."""
        cached = raw.get("cached_tokens")
        if cached is None:
            details = raw.get("prompt_tokens_details")
            if isinstance(details, dict):
                cached = details.get("cached_tokens")
        reasoning = None
        out_details = raw.get("completion_tokens_details")
        if isinstance(out_details, dict):
            reasoning = out_details.get("reasoning_tokens")
        return cls(
            input_tokens=int(raw.get("prompt_tokens") or 0),
            cached_input_tokens=int(cached or 0),
            output_tokens=int(raw.get("completion_tokens") or 0),
            reasoning_tokens=int(reasoning) if reasoning is not None else None,
        )


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def system(text: str) -> Message:
    return {"role": "system", "content": text}


def tool_result(tool_call_id: str, content: str, name: str | None = None) -> Message:
    msg: Message = {"role": "tool", "tool_call_id": tool_call_id, "content": content}
    if name is not None:
        msg["name"] = name
    return msg
