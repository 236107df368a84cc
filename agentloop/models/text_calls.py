"""Tool calls a small model wrote as text (``<tool_call>{"name": .., "arguments": ..}</tool_call>``
or ``<tools>...</tools>``) instead of a structured call: turned into structured calls, which the
agent then validates like any other. Opt-in (``OpenAIModel(text_tool_calls=True)``): a model
that quotes such a tag in an answer would otherwise have it run."""

from __future__ import annotations

import json
import re
from typing import Any

from ..messages import Message

_TAG = re.compile(r"<(tool_call|tools|function_call)>\s*(.*?)\s*</\1>", re.DOTALL)


def _calls_in(payload: str) -> list[dict[str, Any]] | None:
    try:
        value = json.loads(payload, strict=False)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        calls.append({"name": item["name"], "arguments": text})
    return calls


def extract_text_tool_calls(message: Message, step_key: str) -> Message | None:
    """The assistant ``message`` with its text-written calls made structured, or None when it
    holds none (or already has structured calls). Ids are ``text_<key>_<n>``."""
    content = message.get("content")
    if message.get("tool_calls") or not isinstance(content, str) or "</" not in content:
        return None
    found: list[dict[str, Any]] = []
    kept: list[str] = []
    last = 0
    for match in _TAG.finditer(content):
        calls = _calls_in(match.group(2))
        if calls is None:
            continue  # not a call after all: leave the text as it is
        found.extend(calls)
        kept.append(content[last : match.start()])
        last = match.end()
    if not found:
        return None
    kept.append(content[last:])
    fixed: Message = {**message, "content": "".join(kept).strip()}
    fixed["tool_calls"] = [
        {
            "id": f"text_{step_key}_{index}",
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for index, call in enumerate(found)
    ]
    return fixed
