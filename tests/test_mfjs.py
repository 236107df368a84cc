"""The MFJS checker against Moonshot's published validator vectors, and the normaliser."""

from __future__ import annotations

import json
from enum import Enum
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from agentloop.models import mfjs

from .conftest import SHARED, require_shared, shared_missing

WALLE = SHARED / "conformance" / "walle"
# The vectors come from walle's test-suite, which runs with a deeper enum cap and a smaller depth
# cap than the service defaults, at its "test" level (ultra's rules); the checker takes the same
# limits and level. Per-level vectors live in test_conformance.py.
SUITE_LIMITS = mfjs.Limits(
    max_depth=5, max_enum_items=1000, max_schema_size=100_000, max_enum_string_length=75_000
)


def _vectors(kind: str) -> list[tuple[str, str]]:
    if shared_missing(WALLE):  # one placeholder case, which skips (or fails) saying why
        return [("walle-missing", "")]
    out = []
    for path in sorted(WALLE.glob(f"*/{kind}.jsonl")):
        for i, line in enumerate(path.read_text().splitlines()):
            if line.strip():
                out.append((f"{path.parent.name}:{i}", line))
    return out


VALID = _vectors("valid")
INVALID = _vectors("invalid")


def test_vector_count() -> None:
    require_shared(WALLE)
    assert len(VALID) + len(INVALID) == 395


@pytest.mark.parametrize(("name", "line"), VALID, ids=[n for n, _ in VALID])
def test_accepts_valid(name: str, line: str) -> None:
    require_shared(WALLE)
    assert mfjs.check(line, SUITE_LIMITS, level="ultra") == []


@pytest.mark.parametrize(("name", "line"), INVALID, ids=[n for n, _ in INVALID])
def test_rejects_invalid_naming_the_problem(name: str, line: str) -> None:
    require_shared(WALLE)
    case = json.loads(line)
    problems = mfjs.check(case["schema"], SUITE_LIMITS, level="ultra")
    assert problems, "accepted an invalid schema"
    assert any(case["expect"] in p for p in problems), problems


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str = Field(description="street and number")
    city: str


class Order(BaseModel):
    id: int = Field(gt=0, description="order id")
    color: Color
    mode: Literal["fast", "slow"] = "fast"
    note: str | None = None
    address: Address
    tags: list[str] = []
    when: str = Field(default="", json_schema_extra={"format": "date-time"})


def test_pydantic_schema_is_invalid_raw_and_valid_normalised() -> None:
    raw = Order.model_json_schema()
    assert mfjs.check(raw, level="ultra"), "pydantic output was expected to carry titles etc."
    normalised = mfjs.normalise(raw)
    assert mfjs.check(normalised) == []
    text = json.dumps(normalised)
    assert '"title"' not in text and "exclusiveMinimum" not in text and '"format"' not in text
    assert "$defs" in normalised and normalised["properties"]["address"] == {
        "$ref": "#/$defs/Address"
    }
    assert normalised["properties"]["mode"]["enum"] == ["fast", "slow"]


def test_normalise_fills_types_and_moves_siblings() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"enum": [1, 2]},
            "b": {"properties": {"x": {"type": "string"}}},
            "c": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "d": {"const": "k"},
            "e": {"enum": ["x", 1]},
        },
    }
    out = mfjs.normalise(schema)
    assert mfjs.check(out) == []
    assert out["properties"]["a"]["type"] == "integer"
    assert out["properties"]["b"]["type"] == "object"
    # a default beside anyOf is kept: the API (walle strict) takes it, only ultra refuses it
    assert out["properties"]["c"]["default"] is None
    assert mfjs.check(out, level="ultra") == [
        "keyword 'default' is not allowed at the same level as anyOf at /properties/c"
    ]
    assert out["properties"]["d"] == {"enum": ["k"], "type": "string"}
    out["properties"]["c"]["default"] = "changed"
    assert schema["properties"]["c"]["default"] is None  # input untouched


def test_check_levels_and_unknown_level() -> None:
    schema = {"type": "object", "properties": {"required": {"type": "string"}}}
    assert mfjs.check(schema, level="lite") == []
    assert mfjs.check(schema) == mfjs.check(schema, level="strict") != []  # strict by default
    assert mfjs.check({"type": "bogus"}, level="loose") == []
    with pytest.raises(ValueError, match="unknown level"):
        mfjs.check(schema, level="ultraviolet")


class Place(BaseModel):
    """A place on a map."""

    name: str
    near: Place | None = None


class Trip(BaseModel):
    """A trip."""

    start: Place = Field(description="where the trip starts")
    end: Place | None = Field(default=None, description="where it ends")


def test_described_ref_to_described_model_is_inlined_with_both_descriptions() -> None:
    out = mfjs.normalise(Trip.model_json_schema())
    for level in ("lite", "strict"):
        assert mfjs.check(out, level=level) == []
    # inlined: no description beside a $ref whose target has one, at any level
    assert [p for p in mfjs.check(out, level="ultra") if "conflicting" in p] == []
    start = out["properties"]["start"]
    assert "$ref" not in start and start["type"] == "object"
    assert start["description"] == "where the trip starts\n\nA place on a map."
    # the recursive field stays a reference, so the definition stays
    assert start["properties"]["near"]["anyOf"][0] == {"$ref": "#/$defs/Place"}
    assert set(out["$defs"]) == {"Place"}
    # an Optional reference has nothing to merge: its description stands beside anyOf
    end = out["properties"]["end"]
    assert end["anyOf"][0] == {"$ref": "#/$defs/Place"} and end["default"] is None


def test_inlining_drops_definitions_nothing_refers_to() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/A", "description": "the a"}},
        "$defs": {
            "A": {
                "type": "object",
                "description": "An A.",
                "properties": {"b": {"$ref": "#/$defs/B"}},
            },
            "B": {"type": "string", "description": "A B."},
        },
    }
    out = mfjs.normalise(schema)
    assert out["properties"]["a"]["description"] == "the a\n\nAn A."
    assert set(out["$defs"]) == {"B"}  # A is inlined; B is still referred to
    same = mfjs.normalise(
        {
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/A", "description": "An A."}},
            "$defs": {"A": {"type": "string", "description": "An A."}},
        }
    )
    assert same["properties"]["a"] == {"type": "string", "description": "An A."}
    assert "$defs" not in same
