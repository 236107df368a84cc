"""Conformance of the schema normaliser and the simulator (issue 12), over real HTTP.

- The MFJS checker per walle validation level (``lite``, ``strict``, ``ultra``); the simulator
  enforces ``strict``, the API's level (see ``agentloop/models/mfjs.py`` for the evidence).
  LEVEL_VECTORS are data: each verdict was confirmed against walle itself (its libwalle build
  at commit 196bb0c, every level, the service limits of ``mfjs.DEFAULT_LIMITS`` and walle's
  own defaults); an expected error is a substring of both walle's message and ours.
- A documented pydantic-model parameter whose class has a docstring is sent without the
  ``$ref``/description conflict; defaults beside anyOf/$ref are sent as declared.
- Empty text parts are dropped from content lists, in every role.
- The simulator's window check and TPM admission count the tool schemas, as its usage does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from pydantic import BaseModel

from agentloop import Agent, KimiModel, tool
from agentloop.models import ModelRequest, ToolSpec, assemble, mfjs
from agentloop.sim import ScriptedPolicy, SimServer, ToolCall, Turn
from agentloop.sim.server import prompt_size

from .conftest import kimi

pytestmark = pytest.mark.anyio
SimFactory = Callable[..., Any]
LEVELS = ("lite", "strict", "ultra")


def obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


ADDRESS = {
    "type": "object",
    "description": "An address.",
    "properties": {"street": {"type": "string"}},
}
NOTE = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "description": "a note"}
NESTED = "must be at root level"
MULTI = "not allowed in combination with multiple types"
RESERVED = "reserved for JSON Schema keywords"
AFTER_REF = "conflicting keywords found after $ref expansion"
IN_ANY_OF = "conflicting keywords found in anyOf with parent"
BESIDE_ANY_OF = "not allowed at the same level as anyOf"
BESIDE_REF = "not allowed at the same level as $ref"

# (name, schema, lite, strict, ultra): None = accepted, else a substring of the error
LEVEL_VECTORS: list[tuple[str, dict[str, Any], str | None, str | None, str | None]] = [
    # accepted at lite and strict, rejected at ultra only
    ("default_beside_anyof", obj(note=NOTE), None, None, BESIDE_ANY_OF),
    (
        "default_beside_ref",
        {
            **obj(a={"$ref": "#/$defs/A", "default": {"street": "x"}}),
            "$defs": {"A": {"type": "object", "properties": {"street": {"type": "string"}}}},
        },
        None,
        None,
        BESIDE_REF,
    ),
    (
        "default_beside_root_anyof",
        {"anyOf": [obj(x={"type": "string"})], "default": {}},
        None,
        None,
        BESIDE_ANY_OF,
    ),
    (
        "description_beside_ref_and_in_target",
        {**obj(a={"$ref": "#/$defs/A", "description": "where to ship"}), "$defs": {"A": ADDRESS}},
        None,
        None,
        AFTER_REF,
    ),
    (
        "title_beside_ref_and_in_target",
        {
            **obj(a={"$ref": "#/$defs/A", "title": "A"}),
            "$defs": {"A": {**ADDRESS, "title": "Address"}},
        },
        None,
        None,
        AFTER_REF,
    ),
    (
        "description_in_chained_refs",
        {
            **obj(a={"$ref": "#/$defs/A"}),
            "$defs": {
                "A": {"$ref": "#/$defs/B", "description": "a"},
                "B": {"$ref": "#/$defs/C", "description": "b"},
                "C": {"type": "string"},
            },
        },
        None,
        None,
        AFTER_REF,
    ),
    (
        "description_on_anyof_and_branch",
        obj(a={"anyOf": [{"type": "string", "description": "s"}], "description": "a"}),
        None,
        None,
        IN_ANY_OF,
    ),
    (
        "min_length_beside_anyof",
        obj(a={"anyOf": [{"type": "string"}], "minLength": 1}),
        None,
        None,
        BESIDE_ANY_OF,
    ),
    (
        "format_unsupported",
        obj(when={"type": "string", "format": "date-time"}),
        None,
        None,
        "unsupported keywords: format",
    ),
    (
        "exclusive_minimum_unsupported",
        obj(n={"type": "integer", "exclusiveMinimum": 0}),
        None,
        None,
        "unsupported keywords: exclusiveMinimum",
    ),
    (
        "keyword_of_another_type",
        obj(s={"type": "string", "minimum": 1}),
        None,
        None,
        "invalid keywords: minimum",
    ),
    (
        "enum_null_pair_with_max_length",
        obj(s={"type": ["string", "null"], "enum": ["a", None], "maxLength": 3}),
        None,
        None,
        "invalid keywords: maxLength",
    ),
    (
        "negative_min_length",
        obj(s={"type": "string", "minLength": -1}),
        None,
        None,
        "minLength must be non-negative",
    ),
    (
        "minimum_above_maximum",
        obj(n={"type": "number", "minimum": 5, "maximum": 1}),
        None,
        None,
        "cannot be greater than maximum",
    ),
    (
        "duplicate_types",
        obj(s={"type": ["string", "string"]}),
        None,
        None,
        "duplicate types in type array",
    ),
    (
        "duplicate_required",
        {**obj(a={"type": "string"}), "required": ["a", "a"]},
        None,
        None,
        "duplicate items in required array",
    ),
    (
        "required_on_untyped_object",
        {"properties": {"a": {"type": "string"}}, "required": ["a"]},
        None,
        None,
        "required keyword must be used with object",
    ),
    (
        "empty_property_name",
        obj(**{"": {"type": "string"}}),
        None,
        None,
        "property name cannot be empty",
    ),
    (
        "defs_below_root",
        obj(a={"type": "object", "$defs": {"X": {"type": "string"}}}),
        None,
        None,
        NESTED,
    ),
    # accepted at lite only
    ("reserved_property_name", obj(required={"type": "string"}), None, RESERVED, RESERVED),
    (
        "keyword_beside_type_array",
        obj(s={"type": ["string", "null"], "minLength": 1}),
        None,
        MULTI,
        MULTI,
    ),
    # rejected at every level
    (
        "property_named_ref",  # walle walks properties like a schema: "$ref" must be a string
        obj(**{"$ref": {"type": "string"}}),
        "$ref must be a string",
        RESERVED,
        RESERVED,
    ),
    *[
        (name, schema, expect, expect, ultra or expect)
        for name, schema, expect, ultra in [
            (
                "type_beside_anyof",
                obj(a={"type": "string", "anyOf": [{"type": "string"}]}),
                "type should be defined in anyOf items",
                None,
            ),
            (
                "type_beside_ref",
                {**obj(a={"type": "object", "$ref": "#/$defs/A"}), "$defs": {"A": ADDRESS}},
                "type should be defined in the referenced schema",
                None,
            ),
            (
                "external_ref",
                obj(a={"$ref": "https://example.com/a.json"}),
                "references must start with #/$defs/",
                None,
            ),
            (
                "required_not_in_properties",
                {**obj(a={"type": "string"}), "required": ["b"]},
                "required property 'b' is not defined in properties",
                None,
            ),
            (
                "default_clashes_with_target",
                {
                    **obj(a={"$ref": "#/$defs/A", "default": "x"}),
                    "$defs": {"A": {"type": "string", "default": "y"}},
                },
                AFTER_REF,
                BESIDE_REF,
            ),
            (
                "default_in_parent_and_branch",
                obj(a={"anyOf": [{"type": "string", "default": "x"}], "default": "y"}),
                IN_ANY_OF,
                BESIDE_ANY_OF,
            ),
            ("enum_without_type", obj(a={"enum": ["x", "y"]}), "type is not defined", None),
            (
                "recursion_without_end",
                {
                    **obj(a={"$ref": "#/$defs/N"}),
                    "required": ["a"],
                    "$defs": {"N": {**obj(n={"$ref": "#/$defs/N"}), "required": ["n"]}},
                },
                "infinite recursion",
                None,
            ),
        ]
    ],
]
VECTOR_IDS = [v[0] for v in LEVEL_VECTORS]


def verdict(problems: list[str], expect: str | None) -> bool:
    return not problems if expect is None else any(expect in p for p in problems)


@pytest.mark.parametrize(
    ("name", "schema", "lite", "strict", "ultra"), LEVEL_VECTORS, ids=VECTOR_IDS
)
def test_level_vector(
    name: str, schema: dict[str, Any], lite: str | None, strict: str | None, ultra: str | None
) -> None:
    for level, expect in zip(LEVELS, (lite, strict, ultra), strict=True):
        problems = mfjs.check(schema, level=level)
        assert verdict(problems, expect), (level, expect, problems)
    assert mfjs.check(schema) == mfjs.check(schema, level="strict")  # the API's level
    assert mfjs.check(schema, level="loose") == []


def test_the_level_vectors_cover_every_boundary() -> None:
    kinds = {
        (lite is None, strict is None, ultra is None) for _, _, lite, strict, ultra in LEVEL_VECTORS
    }
    assert kinds == {(True, True, False), (True, False, False), (False, False, False)}


async def raw_tools(sim: SimServer, parameters: dict[str, Any]) -> httpx2.Response:
    body = {
        "model": "kimi-k2.6",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "probe", "parameters": parameters}}],
    }
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer sk-sim"}) as client:
        return await client.post(f"{sim.base_url}/chat/completions", json=body)


@pytest.mark.parametrize(
    ("name", "schema", "lite", "strict", "ultra"), LEVEL_VECTORS, ids=VECTOR_IDS
)
async def test_simulator_enforces_the_strict_level_over_http(
    sim: SimServer,
    name: str,
    schema: dict[str, Any],
    lite: str | None,
    strict: str | None,
    ultra: str | None,
) -> None:
    response = await raw_tools(sim, schema)
    if strict is None:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert message.startswith("Invalid request: tool probe parameters: ") and strict in message


# -- 1. a documented model parameter whose class has a docstring ------------------------------
class Address(BaseModel):
    """A postal address."""

    street: str
    city: str = "Paris"


class Point(BaseModel):
    x: int = 0
    y: int = 0


ORIGIN = Point(x=1)
SHIPPED: list[Any] = []


@tool
def ship(
    address: Address,
    origin: Point = ORIGIN,
    note: str | None = None,
    back: Address | None = None,
) -> str:
    """Ship a parcel.

    Args:
        address: where to ship the parcel.
        origin: where it leaves from.
        note: an optional note for the driver.
        back: where to return it.
    """
    SHIPPED.append((address, origin, note, back))
    return f"shipped to {address.street}, {address.city}"


def test_documented_model_parameter_no_longer_raises() -> None:
    sent = KimiModel(api_key="sk-x", rpm=None).wire_tool(ship.spec)["function"]["parameters"]
    address = sent["properties"]["address"]
    assert "$ref" not in address and address["type"] == "object"
    assert address["description"] == "where to ship the parcel.\n\nA postal address."
    assert mfjs.check(sent, level="strict") == mfjs.check(sent, level="lite") == []
    # nothing left of the conflict the API rejected before walle 97488ae (kimi-cli #1903)
    assert not [p for p in mfjs.check(sent, level="ultra") if "conflicting" in p]


async def test_documented_model_parameter_over_http(sim_factory: SimFactory) -> None:
    args = {"address": {"street": "1 Main St"}, "note": "ring twice"}
    sim = await sim_factory(
        strict=True,
        policy=ScriptedPolicy(
            [Turn(tool_calls=[ToolCall("ship", json.dumps(args))]), Turn(content="sent")]
        ),
    )
    SHIPPED.clear()
    result = await Agent(kimi(sim), tools=[ship]).run("ship it")
    assert result.stop_reason == "completed" and result.output == "sent", result.error
    assert sim.stats.by_status == {200: 2}
    address, origin, note, back = SHIPPED[0]
    assert address == Address(street="1 Main St") and origin == Point(x=1)
    assert note == "ring twice" and back is None
    sent = sim.stats.bodies[0]["tools"][0]["function"]["parameters"]
    assert sent["properties"]["address"]["description"].endswith("A postal address.")


# -- 2. defaults beside anyOf and $ref are sent and accepted ---------------------------------
async def test_defaults_beside_anyof_and_ref_are_sent_over_http(sim: SimServer) -> None:
    await assemble(kimi(sim).stream(ModelRequest([{"role": "user", "content": "hi"}], [ship.spec])))
    assert sim.stats.by_status == {200: 1}
    props = sim.stats.bodies[-1]["tools"][0]["function"]["parameters"]["properties"]
    assert props["origin"] == {
        "$ref": "#/$defs/Point",
        "default": {"x": 1, "y": 0},
        "description": "where it leaves from.",
    }
    assert props["note"]["default"] is None and "anyOf" in props["note"]
    assert props["back"]["default"] is None and props["back"]["anyOf"][0] == {
        "$ref": "#/$defs/Address"
    }
    # the tool's own schema (used to validate arguments) is untouched
    assert ship.parameters["properties"]["note"]["title"] == "Note"


async def test_a_schema_only_ultra_refuses_is_sent_as_given(sim: SimServer) -> None:
    schema = {
        "type": "object",
        "properties": {"mode": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": "x"}},
    }
    probe = ToolSpec("probe", "Probe.", copy.deepcopy(schema))
    await assemble(kimi(sim).stream(ModelRequest([{"role": "user", "content": "hi"}], [probe])))
    assert sim.stats.bodies[-1]["tools"][0]["function"]["parameters"] == schema
    assert sim.stats.by_status == {200: 1}


# -- 3. empty text parts ---------------------------------------------------------------------
CALL = {
    "id": "functions.lookup:0",
    "type": "function",
    "function": {"name": "lookup", "arguments": "{}"},
}
EMPTY = {"type": "text", "text": ""}


def history() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [EMPTY, {"type": "text", "text": "look it up"}]},
        {
            "role": "assistant",
            "reasoning_content": "",
            "content": [{"type": "text", "text": "Looking."}, EMPTY],
            "tool_calls": [CALL],
        },
        {"role": "tool", "tool_call_id": CALL["id"], "content": "r"},
        {"role": "user", "content": [EMPTY]},
    ]


async def test_empty_text_parts_are_rejected_in_every_role_by_the_simulator(sim: SimServer) -> None:
    clean = kimi(sim).outgoing_messages(history(), thinking=True)
    assert (await post(sim, {"model": "kimi-k2.6", "messages": clean})).status_code == 200
    for index in range(4):  # user, assistant (mixed with text), tool, user
        messages = copy.deepcopy(clean)
        text = messages[index]["content"]
        messages[index]["content"] = [EMPTY, *(text if isinstance(text, list) else [])] + (
            [{"type": "text", "text": text}] if isinstance(text, str) and text else []
        )
        response = await post(sim, {"model": "kimi-k2.6", "messages": messages})
        assert response.status_code == 400, index
        assert response.json()["error"]["message"] == "Invalid request: text content is empty"


async def test_empty_text_parts_are_dropped_over_http(sim_factory: SimFactory) -> None:
    sim = await sim_factory(strict=True)
    messages = history()
    before = copy.deepcopy(messages)
    await assemble(kimi(sim).stream(ModelRequest(messages)))
    assert sim.stats.by_status == {200: 1}
    sent = sim.stats.bodies[-1]["messages"]
    assert sent[0]["content"] == [{"type": "text", "text": "look it up"}]
    assert sent[1]["content"] == [{"type": "text", "text": "Looking."}]
    assert sent[2] == before[2]
    assert sent[3]["content"] == ""  # nothing left: the form contract item 11 gives for no text
    assert messages == before  # the caller's history is not mutated


def test_outgoing_messages_leaves_clean_messages_alone() -> None:
    model = KimiModel(api_key="sk-x", rpm=None)
    clean = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "reasoning_content": "", "content": "a"},
    ]
    out = model.outgoing_messages(clean, thinking=True)
    assert all(a is b for a, b in zip(out, clean, strict=True))
    bare = model.outgoing_messages([{"role": "assistant", "content": []}], thinking=False)
    assert bare == [{"role": "assistant", "content": ""}]


def test_outgoing_messages_reuses_the_sent_prefix_and_rewrites_what_changed() -> None:
    model = KimiModel(api_key="sk-x", rpm=None)
    needs_fix = {"role": "assistant", "content": None}  # no reasoning, no content: rewritten
    history: list[dict[str, Any]] = [{"role": "user", "content": "task"}, needs_fix]
    first = model.outgoing_messages(history, thinking=True)
    assert first[1] == {"role": "assistant", "content": "", "reasoning_content": ""}
    history.append({"role": "tool", "tool_call_id": "c", "content": "r"})
    second = model.outgoing_messages(history, thinking=True)
    assert second[1] is first[1]  # the prefix's rewrite is reused, not made again
    assert second[2] is history[2] and len(second) == 3
    assert second is not first  # a fresh list each time: the caller may keep or change it
    # a context strategy replaces a message (ContextWindow.replace): rewritten afresh
    history[1:2] = [{"role": "assistant", "content": [{"type": "text", "text": ""}]}]
    third = model.outgoing_messages(history, thinking=True)
    assert third[1] == {"role": "assistant", "content": "", "reasoning_content": ""}
    assert third[1] is not first[1]
    # a shorter list (messages dropped) and the other thinking mode are rewritten too
    del history[1:]
    assert model.outgoing_messages(history, thinking=True) == [history[0]]
    history.append(needs_fix)
    assert model.outgoing_messages(history, thinking=False)[1] == {
        "role": "assistant",
        "content": "",
    }
    # another list with equal messages gets the same rewrite; the memo keeps a few lists only
    for n in range(40):
        other = [{"role": "user", "content": f"t{n}"}, {"role": "assistant", "content": None}]
        assert model.outgoing_messages(other, thinking=True)[1]["reasoning_content"] == ""
    assert len(model._outgoing) <= 16


# -- 4. the window and TPM count the tool schemas --------------------------------------------
BIG_TOOLS = [
    ToolSpec(f"tool_{i}", "Does a thing. " * 280, {"type": "object", "properties": {}})
    for i in range(4)
]  # about 1K tokens each
WINDOW = 8_192  # moonshot-v1-8k


def small_model_body(tools: bool, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "moonshot-v1-8k",
        "thinking": {"type": "disabled"},
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "word " * 1_600}],  # about 2K tokens
    }
    if tools:
        model = KimiModel(api_key="sk-x", rpm=None)
        body["tools"] = [model.wire_tool(t) for t in BIG_TOOLS]
    return body


async def post(sim: SimServer, body: dict[str, Any]) -> httpx2.Response:
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer sk-sim"}) as client:
        return await client.post(f"{sim.base_url}/chat/completions", json=body)


def test_prompt_size_counts_tools_and_messages() -> None:
    bare, full = small_model_body(False, 1), small_model_body(True, 1)
    assert prompt_size(full) - prompt_size(bare) > 3_500
    assert prompt_size({"messages": [], "tools": []}) == 0


async def test_window_check_counts_tool_schemas_over_http(sim: SimServer) -> None:
    room = WINDOW - prompt_size(small_model_body(False, 1))
    fits_without_tools = small_model_body(False, room)
    assert (await post(sim, fits_without_tools)).status_code == 200
    response = await post(sim, small_model_body(True, room))
    assert response.status_code == 400
    assert (
        response.json()["error"]["message"] == f"Your request exceeded model token limit: {WINDOW}"
    )
    # the client leaves room for the tools it sends, and the simulator agrees with its count
    model = kimi(sim, model="moonshot-v1-8k", thinking=False, context_window=WINDOW)
    request = ModelRequest(small_model_body(False, 1)["messages"], BIG_TOOLS, max_tokens=room)
    reply = await assemble(model.stream(request))
    body = sim.stats.bodies[-1]
    assert reply.usage.input_tokens == prompt_size(body)
    assert prompt_size(body) + body["max_tokens"] <= WINDOW


async def test_tpm_admission_counts_tool_schemas_over_http(sim_factory: SimFactory) -> None:
    full = small_model_body(True, 100)
    reported = prompt_size(full)
    # room for one request with its tools and its completion, not for a second prompt
    probe = await sim_factory(policy=ScriptedPolicy([Turn(content="ok")]))
    first = (await post(probe, full)).json()["usage"]
    assert first["prompt_tokens"] == reported
    sim = await sim_factory(
        policy=ScriptedPolicy([Turn(content="ok")]),
        tpm=2 * reported + first["completion_tokens"] - 1,
    )
    assert (await post(sim, full)).status_code == 200
    second = await post(sim, full)
    assert second.status_code == 429 and "TPM" in second.json()["error"]["message"]
    # a prompt without the tools still fits: only the tools' tokens push the second one out
    assert (await post(sim, small_model_body(False, 100))).status_code == 200
    # a limit below the prompt with its tools refuses it at once; without them it fits
    tight = await sim_factory(tpm=reported - 1)
    assert (await post(tight, full)).status_code == 429
    assert (await post(tight, small_model_body(False, 100))).status_code == 200
