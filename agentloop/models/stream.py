"""Server-sent events and chat-completion chunks, parsed into deltas.

Hot path: every streamed token passes through here, so it works on bytes, keeps no per-line
objects beyond the decoded JSON, and reuses the delta types' slots.
"""

from __future__ import annotations

from typing import Any

from .. import _json
from ..errors import StreamInterruptedError, error_from_response
from ..messages import Usage
from .base import Delta, FinishDelta, ReasoningDelta, TextDelta, ToolCallDelta, UsageDelta

DONE = b"[DONE]"


class SSEDecoder:
    """Incremental SSE decoder: feed bytes, get the ``data`` payload of each complete event."""

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                payload = line[5:]
                self._data.append(payload[1:] if payload.startswith(b" ") else payload)
            # other fields (event:, id:, retry:) and comments (":") carry nothing for us
        self._buffer = buffer[start:]
        return events

    def flush(self) -> list[bytes]:
        """Events left when the stream closes without a trailing blank line."""
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        return events


def parse_chunk(payload: bytes) -> dict[str, Any]:
    try:
        obj = _json.loads(payload)
    except ValueError as exc:
        snippet = payload[:80].decode(errors="replace")
        raise StreamInterruptedError(f"malformed server-sent event: {snippet!r} ({exc})") from None
    if not isinstance(obj, dict):
        raise StreamInterruptedError("malformed server-sent event: not a JSON object")
    if "error" in obj and "choices" not in obj:
        err = error_from_response(500, obj)
        raise err
    return obj


def chunk_deltas(obj: dict[str, Any], out: list[Delta]) -> None:
    """Append the deltas of one ``chat.completion.chunk`` to ``out``."""
    usage = obj.get("usage")
    choices = obj.get("choices")
    if choices:
        choice = choices[0]
        delta = choice.get("delta")
        if delta:
            # Pieces that arrive in the same network read are merged into the previous delta
            # of the same kind: fewer objects and events, same text.
            last = out[-1] if out else None
            reasoning = delta.get("reasoning_content")
            if reasoning is not None:
                if type(last) is ReasoningDelta:
                    last.text += reasoning
                else:
                    last = ReasoningDelta(reasoning)
                    out.append(last)
            content = delta.get("content")
            if content:
                if type(last) is TextDelta:
                    last.text += content
                else:
                    last = TextDelta(content)
                    out.append(last)
            calls = delta.get("tool_calls")
            if calls:
                for call in calls:
                    fn = call.get("function") or {}
                    index = call.get("index", 0)
                    call_id = call.get("id")
                    name = fn.get("name")
                    arguments = fn.get("arguments") or ""
                    if (
                        type(last) is ToolCallDelta
                        and last.index == index
                        and call_id is None
                        and name is None
                    ):
                        last.arguments += arguments
                    else:
                        last = ToolCallDelta(index, call_id, name, arguments)
                        out.append(last)
        if usage is None:
            usage = choice.get("usage")  # Kimi may put streamed usage inside the choice
        reason = choice.get("finish_reason")
        if reason is not None:
            out.append(FinishDelta(reason))
    if usage:
        out.append(UsageDelta(Usage.from_wire(usage)))


def message_deltas(obj: dict[str, Any]) -> list[Delta]:
    """The deltas equivalent to a whole non-streamed ``chat.completion``."""
    out: list[Delta] = []
    choices = obj.get("choices") or []
    if choices:
        choice = choices[0]
        message = choice.get("message") or {}
        reasoning = message.get("reasoning_content")
        if reasoning is not None:
            out.append(ReasoningDelta(reasoning))
        content = message.get("content")
        if content:
            out.append(TextDelta(content))
        for index, call in enumerate(message.get("tool_calls") or []):
            fn = call.get("function") or {}
            out.append(
                ToolCallDelta(index, call.get("id"), fn.get("name"), fn.get("arguments") or "")
            )
        usage = obj.get("usage") or choice.get("usage")
        out.append(FinishDelta(choice.get("finish_reason")))
    else:
        usage = obj.get("usage")
    if usage:
        out.append(UsageDelta(Usage.from_wire(usage)))
    return out
