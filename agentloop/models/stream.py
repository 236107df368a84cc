"""Server-sent events and chat-completion chunks, parsed into deltas.

Hot path: every streamed token passes through here, so it works on bytes, keeps no per-line
objects beyond the decoded JSON, and reuses the delta types' slots.
"""

from __future__ import annotations

from typing import Any

from .. import _json
from ..errors import ProtocolError, error_from_response
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
        lines = buffer.split(b"\n")  # one C call for the whole read, not one find per line
        self._buffer = lines.pop()  # the unfinished last line (b"" when the read ended a line)
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
            elif line[:5] == b"data:":
                payload = line[6:] if line[5:6] == b" " else line[5:]
                if payload:  # an empty data line (a keep-alive of some servers) carries nothing
                    data.append(payload)
            # other fields (event:, id:, retry:) and comments (":") carry nothing for us
        return events

    def flush(self) -> list[bytes]:
        """Events left when the stream closes without a trailing blank line."""
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        return events


def parse_chunk(payload: bytes) -> dict[str, Any]:
    try:
        obj = _json.loads(payload)
    except (ValueError, RecursionError) as exc:
        snippet = payload[:80].decode(errors="replace")
        raise ProtocolError(f"malformed server-sent event: {snippet!r} ({exc})") from None
    if type(obj) is not dict:
        raise ProtocolError(
            f"malformed server-sent event: {_kind(obj)}, not a JSON object: {_snippet(obj)}"
        )
    if "error" in obj and "choices" not in obj:
        raise error_from_response(500, obj)
    return obj


# Every field is checked as it is used, so the common path costs a few type checks per chunk;
# a field of the wrong type raises one of these, and ``_chunk_problem`` (the slow path, once per
# failure) names it. null counts as absent everywhere, as OpenAI-compatible servers send it.
_SHAPE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError, OverflowError)


def chunk_deltas(obj: dict[str, Any], out: list[Delta]) -> None:
    """Append the deltas of one ``chat.completion.chunk`` to ``out``.

    Raises ``ProtocolError`` (retried like a cut stream) for a chunk of the wrong shape."""
    try:
        usage = obj.get("usage")
        choices = obj.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                # Pieces that arrive in the same network read are merged into the previous
                # delta of the same kind: fewer objects and events, same text.
                last = out[-1] if out else None
                reasoning = delta.get("reasoning_content")
                if type(reasoning) is str:
                    if type(last) is ReasoningDelta:
                        last.text += reasoning
                    else:
                        last = ReasoningDelta(reasoning)
                        out.append(last)
                elif reasoning is not None:
                    raise TypeError("reasoning_content")
                content = delta.get("content")
                if type(content) is str:
                    if content:
                        if type(last) is TextDelta:
                            last.text += content
                        else:
                            last = TextDelta(content)
                            out.append(last)
                elif content is not None:
                    raise TypeError("content")
                calls = delta.get("tool_calls")
                if calls:
                    if type(calls) is not list:
                        raise TypeError("tool_calls")
                    for call in calls:
                        fn = call.get("function") or {}
                        index = call.get("index")
                        call_id = call.get("id")
                        name = fn.get("name")
                        arguments = fn.get("arguments")
                        if index is None:
                            index = 0
                        elif type(index) is not int:
                            raise TypeError("index")
                        if arguments is None:
                            arguments = ""
                        elif type(arguments) is not str:
                            raise TypeError("arguments")
                        if (call_id is not None and type(call_id) is not str) or (
                            name is not None and type(name) is not str
                        ):
                            raise TypeError("id or name")
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
                if type(reason) is not str:
                    raise TypeError("finish_reason")
                out.append(FinishDelta(reason))
        if usage:
            out.append(UsageDelta(_usage(usage)))
    except _SHAPE_ERRORS as exc:
        raise _shape_error("a chunk", _chunk_problem(obj), obj, exc) from None


def message_deltas(obj: Any) -> list[Delta]:
    """The deltas equivalent to a whole non-streamed ``chat.completion``.

    Raises ``ProtocolError`` for a body of the wrong shape (no choices, no message, fields of
    another type), or the API error a ``200`` body carries."""
    deltas = _plain_message_deltas(obj)
    return deltas if deltas is not None else _checked_message_deltas(obj)


def _plain_message_deltas(obj: Any) -> list[Delta] | None:
    """The deltas of a body of the usual shape, each field checked as it is read (one pass);
    None for anything else, which ``_checked_message_deltas`` then reads or names the problem
    of. For every body it reads, it gives what that would."""
    if type(obj) is not dict:
        return None
    choices = obj.get("choices")
    if type(choices) is not list or not choices:
        return None
    choice = choices[0]
    if type(choice) is not dict:
        return None
    message = choice.get("message")
    if type(message) is not dict:
        return None
    out: list[Delta] = []
    reasoning = message.get("reasoning_content")
    if reasoning is not None:
        if type(reasoning) is not str:
            return None
        out.append(ReasoningDelta(reasoning))
    content = message.get("content")
    if content is not None:
        if type(content) is not str:
            return None
        if content:
            out.append(TextDelta(content))
    calls = message.get("tool_calls")
    if calls:
        if type(calls) is not list:
            return None
        for index, call in enumerate(calls):
            if type(call) is not dict:
                return None
            fn = call.get("function") or {}
            if type(fn) is not dict:
                return None
            call_id = call.get("id")
            name = fn.get("name")
            arguments = fn.get("arguments")
            if (
                (call_id is not None and type(call_id) is not str)
                or (name is not None and type(name) is not str)
                or (arguments is not None and type(arguments) is not str)
            ):
                return None
            out.append(ToolCallDelta(index, call_id, name, arguments or ""))
    reason = choice.get("finish_reason")
    if reason is not None and type(reason) is not str:
        return None
    out.append(FinishDelta(reason))
    usage = obj.get("usage") or choice.get("usage")
    if usage:
        try:  # what _usage_problem refuses, _usage raises on
            out.append(UsageDelta(_usage(usage)))
        except _SHAPE_ERRORS:
            return None
    return out


def _checked_message_deltas(obj: Any) -> list[Delta]:
    """``message_deltas`` the slow way: the whole body checked first, to name what is wrong."""
    if type(obj) is dict and "error" in obj and "choices" not in obj:
        raise error_from_response(500, obj)
    problem = _body_problem(obj)
    if problem is not None:
        raise _shape_error("a response body", problem, obj, None)
    out: list[Delta] = []
    try:
        choice = obj["choices"][0]
        message = choice["message"]
        reasoning = message.get("reasoning_content")
        if reasoning is not None:
            out.append(ReasoningDelta(reasoning))
        content = message.get("content")
        if content:
            out.append(TextDelta(content))
        for index, call in enumerate(message.get("tool_calls") or []):
            fn = call.get("function") or {}
            arguments = fn.get("arguments") or ""
            out.append(ToolCallDelta(index, call.get("id"), fn.get("name"), arguments))
        out.append(FinishDelta(choice.get("finish_reason")))
        usage = obj.get("usage") or choice.get("usage")
        if usage:
            out.append(UsageDelta(_usage(usage)))
    except _SHAPE_ERRORS as exc:  # what _body_problem missed
        raise _shape_error("a response body", None, obj, exc) from None
    return out


def _usage(raw: Any) -> Usage:
    usage = Usage.from_wire(raw)
    if min(usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) < 0 or (
        usage.reasoning_tokens is not None and usage.reasoning_tokens < 0
    ):
        raise ValueError("a negative token count")
    return usage


# -- the slow path: what exactly is wrong ------------------------------------------------------
def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _snippet(obj: Any, limit: int = 200) -> str:
    try:
        text = _json.dumps(obj).decode(errors="replace")
    except (TypeError, ValueError):
        text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "…"


def _shape_error(what: str, problem: str | None, obj: Any, exc: Exception | None) -> ProtocolError:
    if problem is None:  # the checks below missed what the parser tripped on
        problem = f"unexpected {type(exc).__name__}: {exc}"
    return ProtocolError(f"{what} of the wrong shape ({problem}): {_snippet(obj)}")


def _not(path: str, value: Any, wanted: str) -> str:
    return f"{path} is {_kind(value)}, not {wanted}"


def _string(value: Any, path: str) -> str | None:
    return None if value is None or type(value) is str else _not(path, value, "a string")


def _usage_problem(usage: Any, path: str) -> str | None:
    if not usage:
        return None
    if type(usage) is not dict:
        return _not(path, usage, "an object")
    details = usage.get("completion_tokens_details")
    fields: list[tuple[str, Any]] = [
        (f"{path}.{name}", usage.get(name))
        for name in ("prompt_tokens", "completion_tokens", "cached_tokens")
    ]
    if usage.get("cached_tokens") is None and type(usage.get("prompt_tokens_details")) is dict:
        fields.append(
            (
                f"{path}.prompt_tokens_details.cached_tokens",
                usage["prompt_tokens_details"].get("cached_tokens"),
            )
        )
    if type(details) is dict:
        fields.append(
            (f"{path}.completion_tokens_details.reasoning_tokens", details.get("reasoning_tokens"))
        )
    for where, value in fields:
        # as Usage.from_wire reads them: a falsy count is 0, but reasoning_tokens only if None
        if value is None or (not value and not where.endswith("reasoning_tokens")):
            continue
        try:
            count = int(value)
        except _SHAPE_ERRORS:
            return f"{where} is {_kind(value)}, not a token count"
        if count < 0:
            return f"{where} is {value!r}, not a token count"
    return None


def _calls_problem(calls: Any, path: str, streamed: bool) -> str | None:
    if not calls:
        return None
    if type(calls) is not list:
        return _not(path, calls, "an array")
    for i, call in enumerate(calls):
        where = f"{path}[{i}]"
        if type(call) is not dict:
            return _not(where, call, "an object")
        fn = call.get("function")
        if fn and type(fn) is not dict:
            return _not(f"{where}.function", fn, "an object")
        fn = fn or {}
        index = call.get("index")
        if streamed and index is not None and type(index) is not int:
            return _not(f"{where}.index", index, "an integer")
        problem = (
            _string(call.get("id"), f"{where}.id")
            or _string(fn.get("name"), f"{where}.function.name")
            or _string(fn.get("arguments"), f"{where}.function.arguments")
        )
        if problem:
            return problem
    return None


def _chunk_problem(obj: dict[str, Any]) -> str | None:
    choices = obj.get("choices")
    if choices:
        if type(choices) is not list:
            return _not("choices", choices, "an array")
        choice = choices[0]
        if type(choice) is not dict:
            return _not("choices[0]", choice, "an object")
        delta = choice.get("delta")
        if delta:
            if type(delta) is not dict:
                return _not("choices[0].delta", delta, "an object")
            problem = (
                _string(delta.get("reasoning_content"), "choices[0].delta.reasoning_content")
                or _string(delta.get("content"), "choices[0].delta.content")
                or _calls_problem(delta.get("tool_calls"), "choices[0].delta.tool_calls", True)
            )
            if problem:
                return problem
        problem = _string(choice.get("finish_reason"), "choices[0].finish_reason")
        if problem:
            return problem
        if obj.get("usage") is None:
            problem = _usage_problem(choice.get("usage"), "choices[0].usage")
            if problem:
                return problem
    return _usage_problem(obj.get("usage"), "usage")


def _body_problem(obj: Any) -> str | None:
    if type(obj) is not dict:
        return _not("the body", obj, "an object")
    choices = obj.get("choices")
    if choices is None:
        return "choices is missing"
    if type(choices) is not list:
        return _not("choices", choices, "an array")
    if not choices:
        return "choices is empty"
    choice = choices[0]
    if type(choice) is not dict:
        return _not("choices[0]", choice, "an object")
    message = choice.get("message")
    if message is None:
        return "choices[0].message is missing"
    if type(message) is not dict:
        return _not("choices[0].message", message, "an object")
    return (
        _string(message.get("reasoning_content"), "choices[0].message.reasoning_content")
        or _string(message.get("content"), "choices[0].message.content")
        or _calls_problem(message.get("tool_calls"), "choices[0].message.tool_calls", False)
        or _string(choice.get("finish_reason"), "choices[0].finish_reason")
        or _usage_problem(obj.get("usage") or choice.get("usage"), "usage")
    )
