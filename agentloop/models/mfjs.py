"""Moonshot Flavored JSON Schema (MFJS): the checker and the normaliser.

Kimi accepts a subset of JSON Schema as a tool's ``parameters``. ``check`` returns the list of
problems the API would reject a schema for (empty when it is accepted); ``normalise`` rewrites
an ordinary JSON Schema (pydantic's output, say) into MFJS: it strips the keywords MFJS does not
define (``title``, ``format``, ``$comment``, ``exclusiveMinimum`` ...), turns ``const`` into a
one-value ``enum``, infers missing ``type``s, drops keywords other than ``description`` and
``default`` beside ``anyOf``/``$ref``, and inlines a ``$ref`` whose siblings repeat its target's
keywords. The rules follow Moonshot's validator, walle, and its published test vectors
(``shared/conformance/walle``), which the test-suite runs in full.

The simulator uses ``check`` to reject tools the way the real API does; the Kimi client uses
``normalise`` + ``check`` before sending, so a bad schema fails locally with a clear message.

Validation levels. walle (MoonshotAI/walle, commit 196bb0c) validates at one of four levels:
``ultra`` (its ``default``; also the level its own test vectors run at), ``strict``, ``lite`` and
``loose`` (no checks). ``check`` takes the level; the default is ``strict`` because that is the
level the Kimi API enforces: walle's README describes ``strict`` as "the most permissive level
required by Moonshot AI server", its CLI validates at ``strict`` unless told otherwise, and its
Python example passes ``"validateLevel": "strict"``. ``ultra`` alone adds the "harmless" rules:
unsupported keywords, keywords per type and their ranges, nothing but ``description``/``title``
beside ``anyOf``/``$ref`` (so a ``default`` there passes at ``strict``), duplicates, and
``description``/``title`` given both beside a ``$ref`` and in its target (walle 97488ae; the
server answered that conflict with a 400 before, kimi-cli #1903). ``lite`` further drops the
reserved property names and the keyword rule for type arrays. The vectors in
``shared/conformance/walle`` are ``ultra`` cases; ``tests/test_conformance.py`` holds
per-level ones.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

JSONTypes = frozenset({"string", "number", "integer", "boolean", "null", "array", "object"})
COMMON = frozenset({"description", "title"})
ROOT_ONLY = frozenset({"$defs", "$id"})
SUPPORTED = frozenset(
    {
        "type",
        "properties",
        "additionalProperties",
        "items",
        "enum",
        "required",
        "anyOf",
        "description",
        "$defs",
        "$ref",
        "title",
        "$id",
        "default",
        "maxLength",
        "minLength",
        "maximum",
        "minimum",
        "maxItems",
        "minItems",
        "pattern",
    }
)
ALLOWED_BY_TYPE: dict[str, frozenset[str]] = {
    "object": COMMON
    | {"type", "properties", "required", "additionalProperties", "$ref", "anyOf", "default"},
    "array": COMMON | {"type", "items", "minItems", "maxItems", "$ref", "default"},
    "string": COMMON | {"type", "minLength", "maxLength", "pattern", "enum", "default"},
    "number": COMMON | {"type", "minimum", "maximum", "enum", "default"},
    "integer": COMMON | {"type", "minimum", "maximum", "enum", "default"},
    "boolean": COMMON | {"type", "enum", "default"},
    "null": COMMON | {"type", "enum", "default"},
}
RESERVED_PROPERTY_NAMES = frozenset({"$defs", "$ref", "anyOf", "required", "additionalProperties"})
LEVELS = {"lite": 1, "strict": 2, "ultra": 3}
SERVER_LEVEL = "strict"  # what the Kimi API enforces (see the module docstring for the evidence)


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits of the checker. Defaults are those of Moonshot's validator."""

    max_depth: int = 10
    max_enum_items: int = 500
    max_enum_string_length: int = 7500
    enum_string_check_threshold: int = 250
    max_any_of_items: int = 100
    max_schema_size: int = 15000
    max_total_properties: int = 1000


DEFAULT_LIMITS = Limits()


class _ParseError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _ParseError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _ParseError(f"number {text} is out of range")
    return value


def parse(text: str) -> Any:
    """Parse schema text strictly (no NaN/Infinity/overflow), as the API's JSON decoder does."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def check(schema: Any, limits: Limits = DEFAULT_LIMITS, *, level: str = SERVER_LEVEL) -> list[str]:
    """Every reason the Kimi API would reject ``schema`` (a dict, or JSON text); [] if accepted.

    ``level`` is walle's validation level: ``"strict"`` (the API's, the default), ``"lite"``,
    ``"ultra"`` (walle's default and its test vectors' level) or ``"loose"`` (accepts all)."""
    if level == "loose":
        return []
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}: use lite, strict, ultra or loose")
    if isinstance(schema, (str, bytes)):
        try:
            schema = parse(schema if isinstance(schema, str) else schema.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            return [f"JSON schema parsing error: {exc}"]
        if schema is not None and not isinstance(schema, dict):
            return ["JSON schema parsing error: the schema must be a JSON object"]
    if schema is None or not isinstance(schema, dict):
        return ["schema must be a dict"]
    if not schema:
        return []
    return _Checker(schema, limits, LEVELS[level]).run()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integral(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and math.floor(value) == value


class _Checker:
    def __init__(self, root: dict[str, Any], limits: Limits, level: int) -> None:
        self.root = root
        self.limits = limits
        self.ultra = level >= LEVELS["ultra"]
        self.strict = level >= LEVELS["strict"]
        self.problems: list[str] = []
        self.refs: set[str] = set()
        self.total_properties = 0

    def fail(self, path: str, message: str) -> None:
        where = f" at {path}" if path else ""
        self.problems.append(f"{message}{where}")

    def run(self) -> list[str]:
        size = len(json.dumps(self.root, separators=(",", ":"), ensure_ascii=False))
        if size > self.limits.max_schema_size:
            self.fail(
                "",
                f"schema exceeds maximum allowed size ({size} > "
                f"{self.limits.max_schema_size} characters)",
            )
        depth = self.node(self.root, "", 0, is_root=True)
        if depth > self.limits.max_depth:
            self.fail("", f"schema depth exceeds maximum limit of {self.limits.max_depth}")
        self.check_refs()
        # A schema can break one rule in several places; report each message once.
        return list(dict.fromkeys(self.problems))

    # -- one schema node -------------------------------------------------------------------
    def node(self, schema: dict[str, Any], path: str, depth: int, *, is_root: bool = False) -> int:
        if depth > self.limits.max_depth:
            self.fail(path, f"schema depth exceeds maximum limit of {self.limits.max_depth}")
            return depth
        max_depth = depth
        unsupported = sorted(k for k in schema if k not in SUPPORTED)
        if unsupported and self.ultra:
            self.fail(path, f"unsupported keywords: {', '.join(unsupported)}")
        if not is_root and self.ultra:
            for key in sorted(ROOT_ONLY & schema.keys()):
                if "type" in schema:
                    self.fail(path, f"keyword {key} must be at root level")
        if "$defs" in schema:  # walle walks $defs wherever they stand
            max_depth = max(max_depth, self.defs(schema["$defs"], path, depth))
        self.type_and_keywords(schema, path, is_root)
        for key in sorted(schema):
            self.keyword(key, schema[key], schema, path, is_root)
        self.any_of_conflicts(schema, path)

        ref = schema.get("$ref")
        if isinstance(ref, str):
            max_depth = max(max_depth, depth + self.ref_depth(ref))
        props = schema.get("properties")
        if isinstance(props, dict):
            self.total_properties += len(props)
            if self.total_properties > self.limits.max_total_properties:
                self.fail(
                    path,
                    "total number of properties keys across all objects exceeds "
                    f"maximum limit of {self.limits.max_total_properties}",
                )
            for name, sub in props.items():
                if isinstance(sub, dict):
                    max_depth = max(
                        max_depth, self.node(sub, f"{path}/properties/{name}", depth + 1)
                    )
        for key in ("items", "additionalProperties"):
            sub = schema.get(key)
            if isinstance(sub, dict):
                max_depth = max(max_depth, self.node(sub, f"{path}/{key}", depth))
        any_of = schema.get("anyOf")
        if isinstance(any_of, list):
            for i, sub in enumerate(any_of):
                if isinstance(sub, dict):
                    max_depth = max(max_depth, self.node(sub, f"{path}/anyOf/{i}", depth))
        return max_depth

    def defs(self, defs: Any, path: str, depth: int) -> int:
        if not isinstance(defs, dict):
            return depth  # reported by the $defs keyword check
        max_depth = depth
        for name in sorted(defs):
            sub = defs[name]
            if isinstance(sub, dict):
                max_depth = max(max_depth, self.node(sub, f"{path}/$defs/{name}", depth))
        return max_depth

    def type_and_keywords(self, schema: dict[str, Any], path: str, is_root: bool) -> None:
        if "type" not in schema:
            return
        if "anyOf" in schema:
            self.fail(
                path,
                "when using anyOf, type should be defined in anyOf items instead of "
                "the parent schema",
            )
        if "$ref" in schema:
            self.fail(
                path,
                "when using $ref, type should be defined in the referenced schema "
                "instead of the parent schema",
            )
        raw = schema["type"]
        if isinstance(raw, str):
            if raw not in JSONTypes:
                self.fail(path, f"invalid type: {raw!r}")
                return
            types = [raw]
        elif isinstance(raw, list):
            if not raw:
                self.fail(path, "type array cannot be empty")
                return
            if not all(isinstance(t, str) and t in JSONTypes for t in raw):
                self.fail(path, "invalid type in type array")
                return
            types = list(raw)
            if len(set(types)) != len(types) and self.ultra:
                self.fail(path, "duplicate types in type array")
        else:
            self.fail(path, "type must be string or array of strings")
            return

        if len(types) > 1:
            allowed_enum = False
            if "enum" in schema:
                for t in types:
                    if t in ("object", "array"):
                        self.fail(path, f"type {t} is not allowed in combination with enum")
                        return
                allowed_enum = len(types) == 2
            if not allowed_enum and self.strict:
                for key in sorted(schema):
                    if key == "type" or key in COMMON or (is_root and key in ROOT_ONLY):
                        continue
                    self.fail(
                        path, f"keyword {key} is not allowed in combination with multiple types"
                    )
                    return
        if not self.ultra:
            return  # keywords per type and their ranges are checked at ultra only
        # the keywords every listed type allows
        allowed = frozenset.intersection(*(ALLOWED_BY_TYPE[t] for t in types))
        allowed |= ROOT_ONLY if is_root else frozenset()
        invalid = [k for k in schema if k not in allowed]
        if invalid:
            self.fail(path, f"invalid keywords: {', '.join(invalid)}")
        if "minLength" in allowed:
            self.range(schema, path, "minLength", "maxLength", integer=True, non_negative=True)
        if "minItems" in allowed:
            self.range(schema, path, "minItems", "maxItems", integer=True, non_negative=True)
        if "minimum" in allowed:
            self.range(
                schema, path, "minimum", "maximum", integer="integer" in types, non_negative=False
            )

    def range(
        self,
        schema: dict[str, Any],
        path: str,
        low: str,
        high: str,
        *,
        integer: bool,
        non_negative: bool,
    ) -> None:
        values: dict[str, float] = {}
        for key in (low, high):
            if key not in schema or schema[key] is None:
                continue
            value = schema[key]
            if not _is_number(value):
                kind = "an integer" if integer else "a number"
                self.fail(path, f"{key} must be {kind}")
                continue
            if non_negative and value < 0:
                self.fail(path, f"{key} must be non-negative")
                continue
            if integer and not _is_integral(value):
                self.fail(path, f"{key} ({value}) is not a valid integer")
                continue
            if not math.isfinite(value):
                self.fail(path, f"{key}: invalid number: NaN or Infinity not allowed")
                continue
            values[key] = value
        if low in values and high in values and values[low] > values[high]:
            self.fail(
                path, f"{low} ({values[low]:g}) cannot be greater than {high} ({values[high]:g})"
            )

    # -- keywords --------------------------------------------------------------------------
    def keyword(
        self, key: str, value: Any, schema: dict[str, Any], path: str, is_root: bool
    ) -> None:
        kpath = f"{path}/{key}"
        if key == "properties":
            if not isinstance(value, dict):
                self.fail(kpath, "properties must be an object")
                return
            for name, sub in value.items():
                if name == "" and self.ultra:
                    self.fail(kpath, "property name cannot be empty")
                elif name in RESERVED_PROPERTY_NAMES and self.strict:
                    self.fail(kpath, f"property name '{name}' is reserved for JSON Schema keywords")
                if not isinstance(sub, dict):
                    self.fail(kpath, f"property schema for '{name}' must be an object")
        elif key == "required":
            self.required(value, schema, kpath)
        elif key == "enum":
            self.enum(value, schema, kpath)
        elif key == "items":
            if not isinstance(value, dict):
                self.fail(kpath, "items must be an object")
        elif key == "$ref":
            self.ref(value, schema, kpath, is_root)
        elif key == "description":
            if not isinstance(value, str):
                self.fail(kpath, "description must be a string")
        elif key == "anyOf":
            self.any_of(value, schema, kpath, is_root)
        elif key == "additionalProperties":
            if not isinstance(value, (bool, dict)):
                self.fail(kpath, "additionalProperties must be a boolean or an object")
        elif key == "$defs":
            self.defs_names(value, kpath)
        elif key == "$id":
            if value is not None and not isinstance(value, str):
                self.fail(kpath, "$id must be a string")
        elif key == "pattern" and value is not None and not isinstance(value, str):
            self.fail(kpath, "pattern must be a string")

    def required(self, value: Any, schema: dict[str, Any], path: str) -> None:
        if not isinstance(value, list):
            self.fail(path, "required must be an array")
            return
        if not value:
            return
        if not all(isinstance(v, str) for v in value):
            self.fail(path, "items in required array must be strings")
            return
        props = schema.get("properties")
        if self.ultra:
            if "" in value:
                self.fail(path, "property names in required array cannot be empty")
                return
            if len(set(value)) != len(value):
                self.fail(path, "duplicate items in required array")
            typ = schema.get("type")
            if typ != "object" and typ != ["object"]:
                self.fail(path, "required keyword must be used with object")
                return
            if not isinstance(props, dict):
                self.fail(path, "required specified but 'properties' keyword is missing")
                return
        if not isinstance(props, dict):
            props = {}  # below ultra, a required name without properties is simply undefined
        for name in value:
            if name not in props:
                self.fail(path, f"required property '{name}' is not defined in properties")

    def enum(self, value: Any, schema: dict[str, Any], path: str) -> None:
        if not isinstance(value, list):
            self.fail(path, "enum must be an array")
            return
        if not value:
            self.fail(path, "enum array cannot be empty")
            return
        if len(value) > self.limits.max_enum_items:
            self.fail(path, f"enum array cannot have more than {self.limits.max_enum_items} items")
            return
        raw = schema.get("type")
        if raw is None:
            self.fail(path, "type is not defined beside enum")
            return
        types = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else None
        if types is None or not all(isinstance(t, str) for t in types):
            self.fail(path, "type array must be an array of strings")
            return
        if len(types) > 2 or (len(types) == 2 and "null" not in types):
            self.fail(
                path,
                "when type is array and enum is specified, only 2 types are "
                "supported: null and one of string/integer/number/boolean",
            )
            return
        if len(types) == 2:
            other = next(t for t in types if t != "null")
            if other not in ("string", "integer", "number", "boolean"):
                self.fail(path, f"invalid type combination with enum: {other} + null")
                return
        for item in value:
            if not any(self.matches(item, t, path) for t in types):
                self.fail(path, f"enum value ({item!r}) does not match any type in {types}")
                return
        if any(t in ("string", "number", "integer") for t in types) and (
            len(value) > self.limits.enum_string_check_threshold
        ):
            total = sum(
                len(v) if isinstance(v, str) else len(str(v))
                for v in value
                if isinstance(v, str) or _is_number(v)
            )
            if total > self.limits.max_enum_string_length:
                self.fail(
                    path,
                    f"total string length of enum values ({total}) exceeds "
                    f"maximum limit of {self.limits.max_enum_string_length}",
                )

    def matches(self, value: Any, typ: str, path: str) -> bool:
        if typ == "string":
            return isinstance(value, str)
        if typ in ("number", "integer"):
            if not _is_number(value):
                self.fail(path, f"enum value {value!r} is not a valid {typ}")
                return False
            if not math.isfinite(value):
                self.fail(path, "invalid number: NaN or Infinity not allowed")
                return False
            if typ == "integer" and not _is_integral(value):
                self.fail(path, f"enum value {value!r} is not a valid integer")
                return False
            return True
        if typ == "boolean":
            return isinstance(value, bool)
        if typ == "null":
            return value is None
        if typ == "array":
            return isinstance(value, list)
        return isinstance(value, dict)

    def siblings(self, schema: dict[str, Any], own: str, path: str, is_root: bool) -> None:
        if not self.ultra:
            return  # below ultra anything may stand beside anyOf/$ref (a default, say)
        for key in sorted(schema):
            if key == own or key in COMMON or (is_root and key in ROOT_ONLY):
                continue
            self.fail(path, f"keyword '{key}' is not allowed at the same level as {own}")

    def ref(self, value: Any, schema: dict[str, Any], path: str, is_root: bool) -> None:
        if not isinstance(value, str):
            self.fail(path, "$ref must be a string")
            return
        if value == "#":
            self.refs.add(value)
            return
        if not value.startswith("#/$defs/"):
            self.fail(
                path, "references must start with #/$defs/ (only internal references are supported)"
            )
            return
        if value == "#/$defs/":
            self.fail(path, "definition name cannot be empty")
            return
        if "$defs" not in self.root:
            self.fail(path, f"$defs not found for reference: {value}")
            return
        self.siblings(schema, "$ref", path.rsplit("/", 1)[0], is_root)
        self.refs.add(value)

    def any_of(self, value: Any, schema: dict[str, Any], path: str, is_root: bool) -> None:
        if not isinstance(value, list):
            self.fail(path, "anyOf must be an array")
            return
        if not 1 <= len(value) <= self.limits.max_any_of_items:
            self.fail(path, f"anyOf must have 1-{self.limits.max_any_of_items} items")
            return
        if not all(isinstance(v, dict) for v in value):
            self.fail(path, "schema in anyOf must be an object")
            return
        self.siblings(schema, "anyOf", path.rsplit("/", 1)[0], is_root)

    def any_of_conflicts(self, schema: dict[str, Any], path: str) -> None:
        branches = schema.get("anyOf")
        if not isinstance(branches, list):
            return
        # description/title on both sides clash at ultra only (walle 97488ae)
        exempt = frozenset() if self.ultra else COMMON
        outer = {k for k in schema if k != "anyOf" and k not in exempt}
        for branch in branches:
            if isinstance(branch, dict):
                clash = sorted(outer & {k for k in branch if k not in exempt})
                if clash:
                    self.fail(
                        path, "conflicting keywords found in anyOf with parent: " + ", ".join(clash)
                    )
                    return

    def defs_names(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            self.fail(path, "$defs must be an object")
            return
        for name, sub in value.items():
            if name == "":
                self.fail(path, "$defs property name cannot be empty")
            elif "/" in name:
                self.fail(path, f"$defs property name '{name}' cannot contain '/' character")
            if not isinstance(sub, dict):
                self.fail(path, f"$defs schema must be object: {name}")
                continue
            for key in _keys_with_slash(sub):
                self.fail(path, f"$defs property name '{key}' cannot contain '/' character")

    # -- references ------------------------------------------------------------------------
    def resolve(self, ref: str) -> dict[str, Any] | None:
        if ref == "#":
            return self.root
        node: Any = self.root
        for part in ref[2:].split("/"):
            if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                return None
            node = node[part]
        return node if isinstance(node, dict) else None

    def ref_depth(self, ref: str) -> int:
        if ref == "#":
            return 0  # a self-reference adds no nesting of its own
        target = self.resolve(ref)
        return _nesting(target, self, {ref}) if target is not None else 0

    def check_refs(self) -> None:
        broken = False
        for ref in sorted(self.refs):
            if self.resolve(ref) is None:
                self.fail("", f"invalid $ref path: {ref}")
                broken = True
        if broken:
            return
        needs_termination = not self.terminates(self.root, set())
        self.walk_refs(self.root, needs_termination, "")

    def terminates(self, schema: dict[str, Any], seen: set[str]) -> bool:
        """Whether some finite instance of ``schema`` exists (a required cycle has none)."""
        kind: str | None = None
        raw = schema.get("type")
        if isinstance(raw, str):
            if raw not in ("object", "array"):
                return True
            kind = raw
        elif isinstance(raw, list):
            for t in raw:
                if isinstance(t, str) and t not in ("object", "array"):
                    return True
                kind = t
        if kind == "array":
            items = schema.get("items")
            if not isinstance(items, dict) or not items or self.terminates(items, seen):
                return True
        if kind == "object":
            required = schema.get("required")
            props = schema.get("properties")
            if not required or not isinstance(props, dict) or not props:
                return True
            names = {r for r in required if isinstance(r, str)}
            for name, sub in props.items():
                if name in names and isinstance(sub, dict) and self.terminates(sub, seen):
                    return True
        branches = schema.get("anyOf")
        if isinstance(branches, list):
            if not branches:
                return True
            collected: set[str] = set()
            for branch in branches:
                branch_seen = set(seen)
                if isinstance(branch, dict) and self.terminates(branch, branch_seen):
                    seen |= branch_seen
                    return True
                collected |= branch_seen
            seen |= collected
        ref = schema.get("$ref")
        if isinstance(ref, str):
            if ref in seen:
                return False
            seen.add(ref)
            target = self.resolve(ref)
            return target is not None and self.terminates(target, seen)
        return not schema

    def walk_refs(self, schema: dict[str, Any], needs_termination: bool, path: str) -> None:
        if "$ref" in schema and not isinstance(schema["$ref"], str):
            # walle walks a properties object like a schema, so a property named "$ref"
            # fails here even at lite, where reserved names are otherwise allowed
            self.fail(f"{path}/$ref", "$ref must be a string")
            return
        if isinstance(schema.get("$ref"), str):
            expanded = self.expand(schema, path)
            if expanded is not None:
                self.ref_context(schema, expanded, path)
                if needs_termination and not self.terminates(expanded, set()):
                    self.fail(
                        path,
                        "detected infinite recursion without termination condition "
                        "(a required property refers back to itself)",
                    )
                    return
        for key, value in schema.items():
            if key == "$defs":
                continue
            if isinstance(value, dict):
                need = needs_termination
                if key == "additionalProperties" or (
                    key == "properties" and schema.get("required") == []
                ):
                    need = False
                self.walk_refs(value, need, f"{path}/{key}")
            elif key == "anyOf" and isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        self.walk_refs(item, needs_termination, f"{path}/anyOf/{i}")

    def expand(self, schema: dict[str, Any], path: str) -> dict[str, Any] | None:
        """Follow a chain of pure ``$ref`` schemas; keep the annotations met on the way (the
        outermost wins; at ultra an annotation met twice on the way is a conflict)."""
        seen = {schema["$ref"]}
        current = self.resolve(schema["$ref"])
        if current is None:
            return None
        current = dict(current)
        kept: dict[str, Any] = {}
        while isinstance(current.get("$ref"), str):
            if any(k != "$ref" and k not in COMMON for k in current):
                break
            nxt = current["$ref"]
            if nxt in seen:
                break
            seen.add(nxt)
            target = self.resolve(nxt)
            if target is None:
                return None
            for k in current:
                if k in COMMON:
                    if k in kept and self.ultra:
                        self.fail(
                            path,
                            f"conflicting keywords found after $ref expansion: keyword '{k}' "
                            "appears at multiple levels in a chained $ref",
                        )
                        return None
                    kept.setdefault(k, current[k])
            current = dict(target)
        current.update(kept)
        return current

    def ref_context(self, parent: dict[str, Any], expanded: dict[str, Any], path: str) -> None:
        # description/title beside the $ref and in its target clash at ultra only (walle 97488ae)
        exempt = frozenset() if self.ultra else COMMON
        outer = {k for k in parent if k != "$ref"}
        clash = sorted((outer & expanded.keys()) - exempt)
        if clash:
            self.fail(path, "conflicting keywords found after $ref expansion: " + ", ".join(clash))
            return
        if ("type" in parent and "anyOf" in expanded) or ("type" in expanded and "anyOf" in parent):
            self.fail(
                path,
                "invalid schema after $ref expansion: when using anyOf, type should "
                "be defined in anyOf items instead of the parent schema",
            )
            return
        branches = expanded.get("anyOf")
        if isinstance(branches, list):
            for branch in branches:
                if isinstance(branch, dict):
                    clash = sorted((outer & branch.keys()) - exempt - {"anyOf"})
                    if clash:
                        self.fail(
                            path,
                            "conflicting keywords found in anyOf after ref expansion: "
                            + ", ".join(clash),
                        )
                        return


def _keys_with_slash(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if "/" in key:
                yield key
            yield from _keys_with_slash(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys_with_slash(item)


def _nesting(schema: dict[str, Any], checker: _Checker, seen: set[str]) -> int:
    """Property-nesting depth of ``schema``, following references once each."""
    depth = 0
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref not in seen:
        target = checker.resolve(ref)
        if target is not None:
            depth = _nesting(target, checker, seen | {ref})
    props = schema.get("properties")
    if isinstance(props, dict):
        for sub in props.values():
            if isinstance(sub, dict):
                depth = max(depth, 1 + _nesting(sub, checker, set(seen)))
    for key in ("additionalProperties", "items"):
        sub = schema.get(key)
        if isinstance(sub, dict):
            depth = max(depth, _nesting(sub, checker, set(seen)))
    branches = schema.get("anyOf")
    if isinstance(branches, list):
        for sub in branches:
            if isinstance(sub, dict):
                depth = max(depth, _nesting(sub, checker, set(seen)))
    return depth


# -- normalisation ---------------------------------------------------------------------------
_DROP = frozenset(
    {
        "format",
        "$comment",
        "$schema",
        "examples",
        "example",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "prefixItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "minContains",
        "maxContains",
        "contains",
        "multipleOf",
        "uniqueItems",
        "readOnly",
        "writeOnly",
        "deprecated",
        "discriminator",
        "minProperties",
        "maxProperties",
        "propertyNames",
        "patternProperties",
        "dependentRequired",
        "dependentSchemas",
        "contentEncoding",
        "contentMediaType",
    }
)


def _enum_type(values: list[Any]) -> str | None:
    kinds: set[str] = set()
    for v in values:
        if isinstance(v, bool):
            kinds.add("boolean")
        elif isinstance(v, int):
            kinds.add("integer")
        elif isinstance(v, float):
            kinds.add("number")
        elif isinstance(v, str):
            kinds.add("string")
        else:
            return None
    if kinds == {"integer", "number"}:
        return "number"
    return kinds.pop() if len(kinds) == 1 else None


def normalise(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a JSON Schema object into MFJS; the input is not modified.

    The result is meant for ``check`` at the API's level (``strict``): it keeps a ``default``
    beside ``anyOf``/``$ref`` (accepted there, rejected only at ``ultra``), so the model still
    sees every default the tool declares, and it leaves no keyword both beside a ``$ref`` and in
    its target (see ``_merge_ref_siblings``)."""
    out = _norm(copy.deepcopy(schema), is_root=True)
    if out.get("type") == "object" and "properties" not in out and "required" in out:
        out.pop("required")
    _merge_ref_siblings(out)
    return out


def _merge_ref_siblings(root: dict[str, Any]) -> None:
    """Inline each ``$ref`` whose siblings repeat a keyword of its target.

    pydantic writes a documented model parameter as ``{"$ref": ..., "description": <the
    parameter's>}`` while the model's ``$defs`` entry carries the class docstring. walle rejects
    that pair at ``ultra``, and so did the API until walle 97488ae (kimi-cli #1903, #2061:
    "conflicting keywords found after $ref expansion: description"). The site becomes a copy of
    its target with the site's keywords on top; two different descriptions are combined, the
    parameter's first (it says what this argument is for, the class docstring what the type
    is), so the model reads everything it would have read beside the reference. Only the tree
    outside ``$defs`` is rewritten, the part walle checks references in (a model's own fields
    stay references inside its definition); a target being inlined already (a recursive model)
    keeps its reference. Definitions nothing refers to any more are dropped.
    """
    defs = root.get("$defs")
    if not isinstance(defs, dict):
        return
    inlined = False

    def resolve(ref: str) -> dict[str, Any] | None:
        target = defs.get(ref[len("#/$defs/") :]) if ref.startswith("#/$defs/") else None
        return target if isinstance(target, dict) else None

    def visit(node: dict[str, Any], stack: frozenset[str]) -> None:
        nonlocal inlined
        ref = node.get("$ref")
        target = resolve(ref) if isinstance(ref, str) and ref not in stack else None
        if isinstance(ref, str) and target is not None and node is not root:
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            if siblings.keys() & target.keys():
                merged = copy.deepcopy(target)
                for key, value in siblings.items():
                    old = merged.get(key)
                    if key == "description" and isinstance(old, str) and old and old != value:
                        merged[key] = f"{value}\n\n{old}"
                    else:
                        merged[key] = value
                node.clear()
                node.update(merged)
                inlined = True
                visit(node, stack | {ref})  # the copy's own fields are now outside $defs
                return
        props = node.get("properties")
        if isinstance(props, dict):
            for sub in props.values():
                if isinstance(sub, dict):
                    visit(sub, stack)
        for key in ("items", "additionalProperties"):
            sub = node.get(key)
            if isinstance(sub, dict):
                visit(sub, stack)
        branches = node.get("anyOf")
        if isinstance(branches, list):
            for branch in branches:
                if isinstance(branch, dict):
                    visit(branch, stack)

    visit(root, frozenset())
    if inlined:
        used: set[str] = set()
        _collect_refs({k: v for k, v in root.items() if k != "$defs"}, used)
        todo = list(used)
        while todo:
            found: set[str] = set()
            _collect_refs(defs.get(todo.pop()), found)
            todo += found - used
            used |= found
        kept = {k: v for k, v in defs.items() if k in used}
        if kept:
            root["$defs"] = kept
        else:
            root.pop("$defs")


def _collect_refs(node: Any, names: set[str]) -> None:
    """The ``$defs`` names that ``node`` refers to."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            names.add(ref[len("#/$defs/") :])
        for value in node.values():
            _collect_refs(value, names)
    elif isinstance(node, list):
        for item in node:
            _collect_refs(item, names)


def _norm(node: dict[str, Any], *, is_root: bool = False) -> dict[str, Any]:
    if "allOf" in node and isinstance(node["allOf"], list) and len(node["allOf"]) == 1:
        # pydantic wraps a described $ref as allOf: [{$ref}]
        inner = node.pop("allOf")[0]
        if isinstance(inner, dict):
            for k, v in inner.items():
                node.setdefault(k, v)
    if "oneOf" in node and "anyOf" not in node:
        node["anyOf"] = node.pop("oneOf")
    for key in _DROP:
        node.pop(key, None)
    node.pop("title", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if not is_root:
        node.pop("$id", None)

    props = node.get("properties")
    if isinstance(props, dict):
        node["properties"] = {k: _norm(v) if isinstance(v, dict) else v for k, v in props.items()}
    for key in ("items", "additionalProperties"):
        sub = node.get(key)
        if isinstance(sub, dict):
            node[key] = _norm(sub)
    if isinstance(node.get("anyOf"), list):
        node["anyOf"] = [_norm(b) if isinstance(b, dict) else b for b in node["anyOf"]]
    defs = node.get("$defs")
    if is_root and isinstance(defs, dict):
        node["$defs"] = {k: _norm(v) if isinstance(v, dict) else v for k, v in defs.items()}

    # Beside anyOf/$ref keep the annotations: the description and the default (the API takes a
    # default there, walle's strict level; only ultra refuses it); drop the rest, which would
    # clash with the branches or the target. Validation of arguments uses the original schema.
    for own in ("anyOf", "$ref"):
        if own in node:
            for key in list(node):
                if key not in (own, "description", "default") and not (
                    is_root and key in ROOT_ONLY
                ):
                    node.pop(key)
            break
    if "type" not in node and "anyOf" not in node and "$ref" not in node:
        if "properties" in node or "additionalProperties" in node:
            node["type"] = "object"
        elif "items" in node:
            node["type"] = "array"
        elif isinstance(node.get("enum"), list):
            inferred = _enum_type(node["enum"])
            if inferred:
                node["type"] = inferred
            else:
                # mixed-type enum: one anyOf branch per type
                groups: dict[str, list[Any]] = {}
                for v in node.pop("enum"):
                    groups.setdefault(_enum_type([v]) or "null", []).append(v)
                node["anyOf"] = [
                    {"type": t} if t == "null" else {"type": t, "enum": vs}
                    for t, vs in groups.items()
                ]
    typ = node.get("type")
    if isinstance(typ, list) and len(typ) == 1:
        node["type"] = typ = typ[0]
    if isinstance(typ, str) and typ in ALLOWED_BY_TYPE:
        allowed = ALLOWED_BY_TYPE[typ] | (ROOT_ONLY if is_root else frozenset())
        for key in [k for k in node if k not in allowed]:
            node.pop(key)
        if typ == "object" and isinstance(node.get("required"), list):
            props = node.get("properties")
            names: dict[str, Any] = props if isinstance(props, dict) else {}
            node["required"] = [r for r in node["required"] if r in names]
            if not names and not node["required"]:
                node.pop("required")
    return node
