"""Property tests of schema generation and argument validation (hypothesis)."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agentloop import tool
from agentloop.models import mfjs
from agentloop.tools import parse_docstring


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    y: float


received: list[dict[str, Any]] = []


@tool
def place(
    name: str,
    count: int,
    weights: list[float],
    mode: Literal["fast", "slow"] | None = None,
    color: Color = Color.RED,
    at: Point | None = None,
) -> str:
    """Place things.

    Args:
        name: what to place.
        count: how many.
        weights: one weight per thing.
        mode: how to place them.
        color: their color.
        at: where.
    """
    # the function's own type hints hold for everything that reaches it
    assert isinstance(name, str) and isinstance(count, int) and not isinstance(count, bool)
    assert all(isinstance(w, float) for w in weights)
    assert mode in (None, "fast", "slow") and isinstance(color, Color)
    assert at is None or isinstance(at, Point)
    received.append({"name": name, "count": count})
    return "ok"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
near_valid = st.fixed_dictionaries(
    {
        "name": st.text(max_size=5) | json_values,
        "count": st.integers() | json_values,
        "weights": st.lists(
            st.floats(allow_nan=False, allow_infinity=False) | st.integers(), max_size=3
        )
        | json_values,
        "mode": st.sampled_from(["fast", "slow", None, "other"]),
        "color": st.sampled_from(["red", "blue", "green", 1]),
        "at": st.none()
        | st.fixed_dictionaries(
            {"x": st.integers(), "y": st.floats(allow_nan=False, allow_infinity=False)}
        )
        | json_values,
    },
    optional={"extra": json_values},
)


def test_schema_is_strict_and_valid_mfjs() -> None:
    schema = place.parameters
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "count", "weights"}
    assert schema["properties"]["count"]["description"] == "how many."
    assert mfjs.check(mfjs.normalise(schema)) == []


@settings(max_examples=300, deadline=None)
@given(near_valid)
def test_valid_arguments_reach_the_function_and_invalid_never_do(args: dict[str, Any]) -> None:
    import json

    received.clear()
    parsed, problem = place.parse(json.dumps(args))
    if problem is None:
        assert parsed is not None
        assert anyio.run(place.invoke, parsed) == "ok"
        assert received == [{"name": args["name"], "count": args["count"]}]
    else:
        assert problem.error == "invalid_arguments" and "Fix them" in problem.content
        assert received == []


@given(
    st.dictionaries(
        st.from_regex(r"[a-z]{1,8}", fullmatch=True),
        st.from_regex(r"[a-z ]{1,20}", fullmatch=True),
        max_size=4,
    )
)
def test_google_docstrings_round_trip(params: dict[str, str]) -> None:
    lines = ["Summary line.", "", "Args:"]
    lines += [f"    {name}: {text.strip() or 'x'}" for name, text in params.items()]
    _, parsed = parse_docstring("\n".join(lines))
    assert parsed == {name: (text.strip() or "x") for name, text in params.items()}


def test_numpy_docstring() -> None:
    doc = """Do it.

    Parameters
    ----------
    query : str
        what to look for.
    limit : int
        how many.
    """
    summary, params = parse_docstring(doc)
    assert summary == "Do it." and params == {"query": "what to look for.", "limit": "how many."}
