"""Context management: keeps a long run inside the window, cheaply.

Strategies are combined in a list on the ``Agent`` and run in order before every step. Each sees
the *measured* size of the next prompt (the last call's reported usage plus an estimate of what
was appended since) against the run's line: the window (or ``Budget.total_tokens``) minus the
next step's output budget. Triggers are shares of that line (``0.5``) or absolute token counts
(``100_000``).

Kimi caches byte-identical prompt prefixes and bills cached input at about a sixth of the
uncached price, so an edit near the start of the history makes the whole rest of the prompt
uncached once. The strategies therefore edit rarely and in big pieces: each fires on a
threshold, frees a lot at once, and leaves the history alone until the threshold is crossed
again. Rules every strategy keeps: the leading system messages and the task stay; an assistant
message is never separated from its tool results; kept turns keep their ``reasoning_content``.
``default_strategies`` says what a run gets when it names none, and why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .messages import Message

STUB_MARK = "[cleared to save context]"
SUMMARY_MARK = "[summary of earlier work]"
NOTES_MARK = "[notes from earlier work]"

COMPACTION_PROMPT = (
    "Context is running out, so the earlier part of this conversation will be replaced by your "
    "summary. Do not call tools now. Write a summary of the work so far that lets you continue "
    "the task without the removed turns: every fact found that bears on the task (with its "
    "source), what has been searched or tried, and what remains to do."
)


@dataclass(slots=True)
class ContextEdit:
    """What a strategy did (also sent as a ``ContextEdited`` event)."""

    strategy: str
    tokens_before: int
    tokens_after: int
    detail: str


class ContextWindow(Protocol):
    """What the agent gives a strategy: the history, its measured size, and the line."""

    messages: list[Message]

    @property
    def tokens(self) -> int: ...

    @property
    def limit(self) -> int: ...

    @property
    def window(self) -> int: ...

    def estimate(self, messages: Sequence[Message]) -> int: ...

    def replace(self, messages: list[Message]) -> None:
        """Swap in an edited history (the size is re-estimated)."""

    def summarise(self, messages: list[Message], max_tokens: int) -> Awaitable[str]:
        """One model call on ``messages`` (same tools, so the cached prefix still matches);
        returns the text answer. Its usage and cost count towards the run."""


@runtime_checkable
class ContextStrategy(Protocol):
    name: str

    def shape_result(self, content: str, tool_name: str, arguments: str) -> str:
        """Called once as a tool result enters the history (never rewrites it later)."""
        ...

    async def manage(self, ctx: ContextWindow) -> ContextEdit | None:
        """Called before every step; edit ``ctx`` and say what was done, or return None."""
        ...


def threshold(trigger: float, ctx: ContextWindow) -> int:
    """A trigger as tokens: a share of the line when ≤ 1, else an absolute count."""
    return int(trigger * ctx.limit) if trigger <= 1 else int(trigger)


# -- the shape of a history ------------------------------------------------------------------
def split_head(messages: Sequence[Message]) -> int:
    """Length of the head that always stays: leading system messages and the first user message
    (the task)."""
    for index, message in enumerate(messages):
        if message.get("role") == "user":
            return index + 1
    return len(messages)


def turns(messages: Sequence[Message], start: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of whole turns after the head: an assistant message with its tool
    results, or a user message. Cutting only at these boundaries never orphans a tool result."""
    spans: list[tuple[int, int]] = []
    begin = start
    for index in range(start + 1, len(messages) + 1):
        if index == len(messages) or messages[index].get("role") != "tool":
            spans.append((begin, index))
            begin = index
    return spans


def _calls_by_id(messages: Sequence[Message]) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            found[str(call.get("id"))] = (str(fn.get("name", "")), str(fn.get("arguments", "")))
    return found


def _clearable(message: Message) -> bool:
    content = message.get("content")
    return (
        message.get("role") == "tool"
        and isinstance(content, str)
        and not content.startswith(STUB_MARK)
        and not str(message.get("name", "")).startswith("$")  # provider builtins echo arguments
    )


def stub(message: Message, name: str, arguments: str, tokens: int) -> Message:
    """A tool message whose content says what was there and how to get it back."""
    shown = arguments if len(arguments) <= 300 else arguments[:300] + "…"
    text = (
        f"{STUB_MARK} {name} returned about {tokens:,} tokens here. If you need them again, "
        f"call {name} with {shown}"
    )
    return {**message, "content": text}


# -- strategies ------------------------------------------------------------------------------
class _Strategy:
    """Defaults for the two hooks: leave results as they come, never edit the history."""

    def shape_result(self, content: str, tool_name: str, arguments: str) -> str:
        return content

    async def manage(self, ctx: ContextWindow) -> ContextEdit | None:
        return None


def _clear(
    edited: list[Message], index: int, calls: dict[str, tuple[str, str]], ctx: ContextWindow
) -> int:
    """Stub the tool result at ``index`` in place; returns the tokens freed."""
    message = edited[index]
    tokens = ctx.estimate([message])
    name, arguments = calls.get(str(message.get("tool_call_id")), ("the tool", "{}"))
    edited[index] = stub(message, name, arguments, tokens)
    return tokens - ctx.estimate([edited[index]])


@dataclass
class TruncateResults(_Strategy):
    """Cuts a tool result longer than its cap as it arrives, keeping its head and tail (``head``
    is the head's share) with a note of what was cut. It never touches the history afterwards,
    so it costs no cache. The cap is ``max_tokens``, or ``max_share`` of the line if that is
    less: a fixed 10K-token cap would be more than a small model's whole window."""

    max_tokens: int = 10_000
    head: float = 0.7
    max_share: float = 0.25
    name: str = "truncate_results"
    # the line of the run, learnt before each step (results arrive after it)
    _line: int | None = field(default=None, init=False, repr=False, compare=False)

    async def manage(self, ctx: ContextWindow) -> ContextEdit | None:
        self._line = ctx.limit
        return None

    def cap(self) -> int:
        """The most tokens a result keeps."""
        if self._line is None:
            return self.max_tokens
        return max(1, min(self.max_tokens, int(self.max_share * self._line)))

    def shape_result(self, content: str, tool_name: str, arguments: str) -> str:
        limit = self.cap() * 4  # chars; the estimate the agent uses is bytes/4
        if len(content) <= limit:
            return content
        keep_head = int(limit * self.head)
        keep_tail = limit - keep_head
        cut = len(content) - keep_head - keep_tail
        note = (
            f"\n[… {cut:,} characters (about {cut // 4:,} tokens) cut from the middle of this "
            f"result to save context; ask {tool_name} for a narrower or later part if you need "
            "it …]\n"
        )
        return content[:keep_head] + note + content[len(content) - keep_tail :]


@dataclass
class ClearToolResults(_Strategy):
    """Past ``trigger``, replaces every tool result but the last ``keep`` by a stub naming the
    call that made it. It fires only if that frees at least ``clear_at_least`` (same units as
    ``trigger``), so the history is rewritten rarely and in big pieces; when too little is left
    to clear it stands aside for the next strategy (compaction, usually)."""

    trigger: float = 0.4
    keep: int = 3
    clear_at_least: float = 0.15
    name: str = "clear_tool_results"

    async def manage(self, ctx: ContextWindow) -> ContextEdit | None:
        before = ctx.tokens
        if before < threshold(self.trigger, ctx):
            return None
        messages = ctx.messages
        head = split_head(messages)
        candidates = [i for i in range(head, len(messages)) if _clearable(messages[i])]
        if self.keep:
            candidates = candidates[: -self.keep]
        if not candidates:
            return None
        calls = _calls_by_id(messages)
        edited = list(messages)
        freed = sum(_clear(edited, index, calls, ctx) for index in candidates)
        if freed < threshold(self.clear_at_least, ctx):
            return None
        ctx.replace(edited)
        return ContextEdit(self.name, before, ctx.tokens, f"cleared {len(candidates)} tool results")


@dataclass
class Compact(_Strategy):
    """Past ``trigger``, asks the model to summarise the work so far (one extra call with the
    same tools and prefix, so it is mostly cached input) and replaces everything after the task
    by that summary, keeping the last ``keep_turns`` turns whole. If the history is too long for
    the summary call, the call gets a copy with old tool results cleared, then old turns dropped,
    until it fits."""

    trigger: float = 0.85
    keep_turns: int = 0
    max_summary_tokens: int = 8_000
    prompt: str = COMPACTION_PROMPT
    name: str = "compact"

    async def manage(self, ctx: ContextWindow) -> ContextEdit | None:
        before = ctx.tokens
        if before < threshold(self.trigger, ctx):
            return None
        messages = ctx.messages
        head = split_head(messages)
        spans = turns(messages, head)
        kept_from = spans[-self.keep_turns][0] if 0 < self.keep_turns <= len(spans) else None
        if kept_from is not None and kept_from <= head:
            return None
        request = _fit(
            [*messages, {"role": "user", "content": self.prompt}],
            head,
            ctx,
            ctx.window - self.max_summary_tokens,
        )
        summary = (await ctx.summarise(request, self.max_summary_tokens)).strip()
        if not summary:
            return None  # nothing usable came back; the next strategy (or step) decides
        edited = [
            *messages[:head],
            {"role": "user", "content": f"{SUMMARY_MARK}\n{summary}\n\nContinue the task."},
        ]
        if kept_from is not None:
            edited.extend(messages[kept_from:])
        ctx.replace(edited)
        return ContextEdit(
            self.name, before, ctx.tokens, f"summarised {len(messages) - len(edited) + 1} messages"
        )


@dataclass
class DiscardAll(_Strategy):
    """Past ``trigger``, restarts from the task plus notes: the visible text the model wrote in
    the dropped turns (and earlier notes), capped at ``max_note_tokens`` (the newest kept).
    Cheapest of all, and forgets whatever the model only saw in tool results or thought."""

    trigger: float = 0.85
    max_note_tokens: int = 16_000
    name: str = "discard_all"
    notes: Callable[[Sequence[Message]], str] | None = field(default=None, repr=False)

    async def manage(self, ctx: ContextWindow) -> ContextEdit | None:
        before = ctx.tokens
        if before < threshold(self.trigger, ctx):
            return None
        messages = ctx.messages
        head = split_head(messages)
        dropped = messages[head:]
        if not dropped:
            return None
        text = self.notes(dropped) if self.notes else _visible_notes(dropped)
        limit = self.max_note_tokens * 4
        if len(text) > limit:
            text = "…" + text[-limit:]
        edited = [*messages[:head]]
        if text:
            edited.append(
                {"role": "user", "content": f"{NOTES_MARK}\n{text}\n\nContinue the task."}
            )
        ctx.replace(edited)
        return ContextEdit(self.name, before, ctx.tokens, f"discarded {len(dropped)} messages")


def _visible_notes(messages: Sequence[Message]) -> str:
    lines: list[str] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            continue
        if message.get("role") == "assistant":
            lines.append(content.strip())
        elif message.get("role") == "user" and content.startswith((NOTES_MARK, SUMMARY_MARK)):
            lines.append(content.split("\n", 1)[-1].removesuffix("\n\nContinue the task."))
    return "\n".join(lines)


def _fit(messages: list[Message], head: int, ctx: ContextWindow, budget: int) -> list[Message]:
    """A copy of ``messages`` that fits ``budget`` tokens: old tool results stubbed first
    (oldest first), then whole old turns dropped. The last message (the instruction) stays."""
    if ctx.estimate(messages) <= budget:
        return messages
    fitted = list(messages)
    calls = _calls_by_id(messages)
    size = ctx.estimate(fitted)
    for index in range(head, len(fitted) - 1):
        if size <= budget:
            return fitted
        if _clearable(fitted[index]):
            size -= _clear(fitted, index, calls, ctx)
    spans = turns(fitted[:-1], head)
    while size > budget and spans:
        start, end = spans.pop(0)
        size -= ctx.estimate(fitted[start:end])
        fitted[start:end] = [{}] * (end - start)  # placeholders keep later spans' indices valid
    return [m for m in fitted if m]


def default_strategies() -> list[ContextStrategy]:
    """The default: cut huge results on arrival; summarise the work so far past 50% of the line.

    It is the cheapest list that finishes correctly on both searches of ``bench/long_search.py``
    (facts spread out with short reasoning, and facts found early with 1–3K tokens of reasoning
    per step). Compaction leaves only the task and a short summary, so the prompt stays small
    between edits; clearing tool results (the former default, with compaction past 70%) keeps
    every assistant turn and its reasoning, rewrites the history 2–2.5× as often, and cannot keep
    long reasoning under the line on its own."""
    return [TruncateResults(), Compact(trigger=0.5)]


__all__ = [
    "COMPACTION_PROMPT",
    "ClearToolResults",
    "Compact",
    "ContextEdit",
    "ContextStrategy",
    "ContextWindow",
    "DiscardAll",
    "TruncateResults",
    "default_strategies",
]
