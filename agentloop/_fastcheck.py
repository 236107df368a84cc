"""A fast acceptance check for the argument schemas most tools have.

A ``@tool`` function's schema is nearly always a flat object of simply typed properties. For
those, checking a call's arguments by hand costs about a microsecond against some twenty for
jsonschema's validator, which then only runs to explain a refusal. The check is built only
for schemas made of the keywords below and accepts exactly what Draft 2020-12 accepts for
them (tests/test_fastcheck.py holds it to jsonschema on generated schemas and values); any
other keyword means no fast check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "deprecated"})
_OBJECT_KEYWORDS = _ANNOTATIONS | {"type", "properties", "required", "additionalProperties"}


def _is_integer(value: Any) -> bool:
    kind = type(value)
    return kind is int or (kind is float and value.is_integer())


def _is_number(value: Any) -> bool:
    kind = type(value)
    return kind is int or kind is float


# by exact type: bool is not an integer, and subclasses never come out of a JSON parser
_TYPE_CHECKS: dict[str, Check] = {
    "string": lambda v: type(v) is str,
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "array": lambda v: type(v) is list,
    "object": lambda v: type(v) is dict,
}


def _simple(schema: Any) -> Check | None:
    """A check for a property schema made of ``type`` (one name or a list), ``anyOf`` of such
    schemas, and annotations; None for anything else."""
    if schema is True or schema == {}:
        return lambda _v: True
    if type(schema) is not dict or not set(schema) <= _ANNOTATIONS | {"type", "anyOf"}:
        return None
    checks: list[Check] = []
    if "type" in schema:
        names = schema["type"]
        names = [names] if type(names) is str else names
        if type(names) is not list or not names or any(n not in _TYPE_CHECKS for n in names):
            return None
        kinds = [_TYPE_CHECKS[n] for n in names]
        checks.append(kinds[0] if len(kinds) == 1 else lambda v: any(k(v) for k in kinds))
    if "anyOf" in schema:
        options = schema["anyOf"]
        if type(options) is not list or not options:
            return None
        parts = [_simple(option) for option in options]
        if any(part is None for part in parts):
            return None
        alternatives: list[Check] = parts  # type: ignore[assignment]
        checks.append(lambda v: any(part(v) for part in alternatives))
    if not checks:
        return lambda _v: True
    if len(checks) == 1:
        return checks[0]
    first, second = checks
    return lambda v: first(v) and second(v)


def compile_check(schema: Any) -> Check | None:
    """True only for arguments the schema accepts; None when the schema is beyond the subset
    (then only the full validator decides)."""
    if type(schema) is not dict or schema.get("type") != "object":
        return None
    if not set(schema) <= _OBJECT_KEYWORDS:
        return None
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if type(properties) is not dict or type(required) is not list or type(extra) is not bool:
        return None
    if any(type(name) is not str for name in required):
        return None
    checks: dict[str, Check] = {}
    for name, sub in properties.items():
        check = _simple(sub)
        if check is None:
            return None
        checks[name] = check
    needed = tuple(dict.fromkeys(required))

    def accepts(value: Any) -> bool:
        if type(value) is not dict:
            return False
        for name in needed:
            if name not in value:
                return False
        for name, item in value.items():
            check = checks.get(name)
            if check is None:
                if not extra:
                    return False
            elif not check(item):
                return False
        return True

    return accepts
