"""The one-pass reading of a non-streamed body agrees with the checked one on every body."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agentloop.errors import APIError
from agentloop.models.stream import (
    _checked_message_deltas,
    _plain_message_deltas,
    message_deltas,
)

# each field either of its type, null, absent, or of a wrong type
_ODD = st.one_of(
    st.integers(-3, 3), st.floats(allow_nan=False), st.booleans(), st.just([]), st.just({})
)


def _mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid four times in five, so that most bodies get deep enough to be read."""
    return st.integers(0, 4).flatmap(lambda pick: _ODD if pick == 0 else valid)


_TEXT = _mostly(st.one_of(st.none(), st.text(max_size=8)))
_COUNT = st.one_of(
    _mostly(st.one_of(st.none(), st.integers(0, 50))), st.sampled_from(["7", "x", 1.5, -1])
)
_USAGE = _mostly(
    st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens": _COUNT,
            "completion_tokens": _COUNT,
            "cached_tokens": _COUNT,
            "prompt_tokens_details": st.one_of(
                _ODD, st.fixed_dictionaries({"cached_tokens": _COUNT})
            ),
            "completion_tokens_details": st.one_of(
                _ODD, st.fixed_dictionaries({"reasoning_tokens": _COUNT})
            ),
        },
    ),
)
_CALL = _mostly(
    st.fixed_dictionaries(
        {},
        optional={
            "id": _TEXT,
            "type": st.just("function"),
            "function": _mostly(
                st.fixed_dictionaries({}, optional={"name": _TEXT, "arguments": _TEXT})
            ),
        },
    ),
)
_MESSAGE = _mostly(
    st.fixed_dictionaries(
        {"role": st.just("assistant")},
        optional={
            "content": _TEXT,
            "reasoning_content": _TEXT,
            "tool_calls": _mostly(st.lists(_CALL, max_size=3)),
        },
    ),
)
_CHOICE = _mostly(
    st.fixed_dictionaries(
        {"index": st.just(0), "message": _MESSAGE},
        optional={"finish_reason": _TEXT, "usage": _USAGE},
    ),
)
_BODY = _mostly(
    st.fixed_dictionaries(
        {"choices": _mostly(st.lists(_CHOICE, min_size=1, max_size=2))},
        optional={
            "usage": _USAGE,
            "error": st.just({"message": "busy", "type": "engine_overloaded_error"}),
        },
    ),
)


def _checked(body: Any) -> tuple[str, Any]:
    try:
        return "deltas", _checked_message_deltas(body)
    except APIError as exc:
        return type(exc).__name__, exc.message


def _agree(body: Any, fast: list[Any] | None) -> None:
    """The fast reading (when it reads the body) and message_deltas give what the checked one
    gives: the same deltas, or the same error."""
    if fast is not None:
        assert ("deltas", fast) == _checked(body)
    try:
        got: tuple[str, Any] = ("deltas", message_deltas(body))
    except APIError as exc:
        got = (type(exc).__name__, exc.message)
    assert got == _checked(body)


@settings(max_examples=1500, deadline=None)
@given(_BODY)
def test_the_fast_reading_gives_what_the_checked_one_gives(body: Any) -> None:
    fast = _plain_message_deltas(body)
    event("read in one pass" if fast is not None else "read the checked way")
    _agree(body, fast)


def _usual() -> dict[str, Any]:
    return {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "hm",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "cached_tokens": 2},
    }


def test_the_usual_body_takes_the_fast_reading() -> None:
    assert _plain_message_deltas(_usual()) == _checked_message_deltas(_usual())


_PATHS = [
    ("choices",),
    ("choices", 0),
    ("choices", 0, "message"),
    ("choices", 0, "message", "content"),
    ("choices", 0, "message", "reasoning_content"),
    ("choices", 0, "message", "tool_calls"),
    ("choices", 0, "message", "tool_calls", 0),
    ("choices", 0, "message", "tool_calls", 0, "id"),
    ("choices", 0, "message", "tool_calls", 0, "function"),
    ("choices", 0, "message", "tool_calls", 0, "function", "name"),
    ("choices", 0, "message", "tool_calls", 0, "function", "arguments"),
    ("choices", 0, "finish_reason"),
    ("usage",),
    ("usage", "prompt_tokens"),
    ("usage", "completion_tokens"),
    ("usage", "cached_tokens"),
]


@pytest.mark.parametrize("path", _PATHS, ids=lambda p: ".".join(map(str, p)))
@pytest.mark.parametrize("value", [None, 5, -1, 1.5, True, "x", "7", [], {}, [1]])
def test_one_odd_field_reads_as_the_checked_way_reads_it(path: tuple[Any, ...], value: Any) -> None:
    body = _usual()
    where: Any = body
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    fast = _plain_message_deltas(body)
    _agree(body, fast)


pytestmark = pytest.mark.filterwarnings("ignore")
