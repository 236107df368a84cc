"""The fast argument check accepts exactly what jsonschema accepts, for the schemas it takes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from agentloop import tool
from agentloop._fastcheck import compile_check
from agentloop.tools import load_arguments

TYPES = ["string", "integer", "number", "boolean", "null", "array", "object"]

simple_type = st.one_of(
    st.sampled_from(TYPES),
    st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True),
)
simple_schema = st.one_of(
    st.builds(lambda t: {"type": t}, simple_type),
    st.builds(lambda t: {"type": t, "description": "d", "default": None}, simple_type),
    st.just({}),
    st.just(True),
    st.builds(
        lambda ts: {"anyOf": [{"type": t} for t in ts]},
        st.lists(st.sampled_from(TYPES), min_size=1, max_size=3),
    ),
)
names = st.sampled_from(["a", "b", "query", "n", "flag"])


@st.composite
def object_schemas(draw: st.DrawFn) -> dict[str, Any]:
    properties = draw(st.dictionaries(names, simple_schema, max_size=4))
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    schema["required"] = draw(st.lists(names, max_size=3, unique=True))
    extra = draw(st.sampled_from([None, True, False]))
    if extra is not None:
        schema["additionalProperties"] = extra
    return schema


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1.0, -2.0, 0.0, 3.5])
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=8,
)
arguments = st.one_of(st.dictionaries(names, json_values, max_size=5), json_values)


@settings(max_examples=600, deadline=None)
@given(object_schemas(), arguments)
def test_fast_check_agrees_with_jsonschema(schema: dict[str, Any], value: Any) -> None:
    check = compile_check(schema)
    assert check is not None, schema  # every generated schema is in the subset
    assert check(value) == Draft202012Validator(schema).is_valid(value), (schema, value)


def test_schemas_beyond_the_subset_get_no_fast_check() -> None:
    for schema in (
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
        {"type": "object", "properties": {"s": {"type": "string", "enum": ["a"]}}},
        {"type": "object", "patternProperties": {"^x": {}}},
        {"type": "object", "properties": {"o": {"$ref": "#/$defs/O"}}, "$defs": {"O": {}}},
        {"type": "array"},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "object", "properties": {"a": False}},
    ):
        assert compile_check(schema) is None, schema


def test_a_tool_refuses_what_the_fast_check_refuses_with_the_validators_reasons() -> None:
    @tool
    def lookup(query: str, limit: int = 3) -> str:
        """Look up."""
        return query

    assert lookup._accepts is not None  # a @tool schema takes the fast path
    ok, problem = lookup.parse('{"query": "x", "limit": 2.0}')
    assert problem is None and ok == {"query": "x", "limit": 2.0}
    for raw, why in (
        ('{"query": 1}', "is not of type 'string'"),
        ('{"limit": 2}', "'query' is a required property"),
        ('{"query": "x", "limit": true}', "is not of type 'integer'"),
        ('{"query": "x", "other": 1}', "Additional properties are not allowed"),
    ):
        _, problem = lookup.parse(raw)
        assert problem is not None and why in problem.content, (raw, problem)


def test_load_arguments_keeps_the_stdlib_parsers_answers() -> None:
    # what orjson would refuse or round goes to the exact, lenient stdlib parser
    assert load_arguments('{"n": 123456789012345678901234567890}')[0] == {
        "n": 123456789012345678901234567890
    }
    assert load_arguments('{"s": "a\nb"}') == ({"s": "a\nb"}, False)
    assert load_arguments('{"x": NaN}')[0]["x"] != 0
    assert load_arguments('{"a": 1, "a": 2}') == ({"a": 2}, True)
    assert load_arguments('  {"q": "é"}  ') == ({"q": "é"}, True)


VALUES = [None, True, False, 0, 1, -5, 2**70, 1.0, -2.0, 0.5, "", "x", [], [1], {}, {"a": 1}]


def test_each_type_and_union_matches_jsonschema_on_every_kind_of_value() -> None:
    shapes = [{"type": t} for t in TYPES] + [
        {"type": ["integer", "null"]},
        {"type": ["number", "string"]},
        {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        {"anyOf": [{"type": "boolean"}], "type": "integer"},
    ]
    for shape in shapes:
        for required in ([], ["v"]):
            schema = {
                "type": "object",
                "properties": {"v": shape},
                "required": required,
                "additionalProperties": False,
            }
            check = compile_check(schema)
            assert check is not None
            validator = Draft202012Validator(schema)
            for value in VALUES:
                for arguments in ({"v": value}, {}, {"w": value}, value):
                    assert check(arguments) == validator.is_valid(arguments), (schema, arguments)
