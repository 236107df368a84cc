"""Property tests of schema generation and argument validation (hypothesis)."""

from __future__ import annotations

import warnings
from enum import Enum
from typing import Annotated, Any, Literal

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, validator

from agentloop import tool
from agentloop.models import mfjs
from agentloop.tools import Tool, parse_docstring


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


flat_received: list[tuple[Any, ...]] = []


@tool
def flat(name: str, count: int, ratio: float, on: bool = False) -> str:
    """Take plain values.

    Args:
        name: a name.
        count: a count.
        ratio: a ratio.
        on: a switch.
    """
    flat_received.append((name, count, ratio, on))
    return "ok"


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "name": st.text(max_size=4) | json_values,
            "count": st.integers() | st.floats(allow_nan=False) | json_values,
            "ratio": st.integers() | st.floats(allow_nan=False, allow_infinity=False) | json_values,
        },
        optional={"on": st.booleans() | json_values},
    )
)
def test_plain_parameters_get_what_the_pydantic_model_would_give(args: dict[str, Any]) -> None:
    """A tool of bare str/int/float/bool parameters skips its pydantic model when the values
    already have those exact types; every other value still goes through the model, so the
    function gets what it always got (an int for 3.0, a float for 3)."""
    import json

    flat_received.clear()
    parsed, problem = flat.parse(json.dumps(args))
    if problem is not None:
        assert flat_received == []
        return
    assert parsed is not None
    assert anyio.run(flat.invoke, parsed) == "ok"
    expected = flat._arguments_model.model_validate(args)  # type: ignore[union-attr]
    want = (expected.name, expected.count, expected.ratio, expected.on)  # type: ignore[attr-defined]
    assert flat_received == [want]
    assert [type(v) for v in flat_received[0]] == [str, int, float, bool]


@tool
def bounded(count: Annotated[int, Field(ge=0)]) -> str:
    """Bounded.

    Args:
        count: at least 0.
    """
    return "ok"


def test_only_bare_plain_parameters_skip_the_model() -> None:
    assert flat._plain_types == {"name": str, "count": int, "ratio": float, "on": bool}
    assert place._plain_types is None and bounded._plain_types is None


def test_a_parse_shared_with_the_history_is_handed_out_once() -> None:
    """prepare_calls' parse is reused for the call's run, but only once: a second parse of the
    same text gets its own value (the tool may change what it was given)."""
    from agentloop.tools import history_arguments

    raw = '{"name": "a", "count": 1, "ratio": 0.5}'
    assert history_arguments(raw) == raw
    first, _ = flat.parse(raw)
    second, _ = flat.parse(raw)
    assert first == second and first is not second


class _Stripped(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True, str_to_lower=True)
    name: str


with warnings.catch_warnings():
    warnings.simplefilter("ignore")

    class _V1(BaseModel):
        name: str

        @validator("name")
        def upper(cls, v: str) -> str:
            return v.upper()


@pytest.mark.parametrize(("model", "want"), [(_Stripped, "bob"), (_V1, "  BOB ")])
def test_a_callers_own_arguments_model_is_always_applied(model: type[BaseModel], want: str) -> None:
    """A ``Tool`` given its own ``arguments_model`` whose config or validators change values
    never takes the plain path (found in review)."""
    got: list[str] = []

    def fn(name: str) -> str:
        got.append(name)
        return name

    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    t = Tool(fn, name="t", description="d", parameters=schema, arguments_model=model)
    assert t._plain_types is None
    arguments, problem = t.parse('{"name": "  Bob "}')
    assert problem is None and arguments is not None
    anyio.run(t.invoke, arguments)
    assert got == [want]
