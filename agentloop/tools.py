"""Tools: the ``@tool`` decorator, schemas from type hints, validation and execution.

A tool's JSON schema is built once from the function's type hints (through pydantic) and its
docstring (Google or NumPy style argument descriptions). It is strict: ``additionalProperties:
false`` and every parameter without a default is required. Arguments are validated with a
jsonschema validator compiled once per tool, then converted to the annotated Python types by a
pydantic model built once per tool, before the function runs. Every failure becomes a
``ToolOutcome`` with a message the model can act on.

A ``Toolbox`` holds an agent's tools and runs the tool calls of one step: concurrently, each
within its ``timeout_s``. Tools that come from a ``Toolset`` (an MCP server, whose list can change
while it runs) are followed: when the toolset's ``generation`` moves, the toolbox takes its new
list the next time the loop reads ``specs``, which it does once at the start of every step.
A sync function runs in a worker thread; when its call times out or the run stops, the thread is
abandoned (Python cannot stop a thread) and ``stop_requested()`` turns true inside it, so a
long-running function can check it and return early.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast, get_type_hints, overload

import anyio
import pydantic
from jsonschema import Draft202012Validator

from . import _json
from ._deadline import now as loop_time
from ._deadline import watchdog
from ._fastcheck import compile_check
from ._journal import Journal
from .errors import ConfigurationError
from .messages import Message
from .models.base import AnyTool, BuiltinTool, ToolSpec

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("agentloop.tools")

_GOOGLE_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:\s*$")
_NUMPY_HEADER = re.compile(r"^\s*(Parameters|Params)\s*$")
_SECTION_END = re.compile(r"^\s*(Returns|Return|Raises|Yields|Examples?|Notes?)\s*:?\s*$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(summary, {argument: description}) from a Google- or NumPy-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip() or _GOOGLE_SECTION.match(line) or _NUMPY_HEADER.match(line):
            break
        summary_lines.append(line.strip())
    params: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if _GOOGLE_SECTION.match(line):
            i += 1
            current: str | None = None
            indent: int | None = None
            while i < len(lines) and not _SECTION_END.match(lines[i]):
                raw = lines[i]
                if raw.strip():
                    here = len(raw) - len(raw.lstrip())
                    match = re.match(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", raw)
                    if match and (indent is None or here <= indent):
                        indent = here
                        current = match.group(1).lstrip("*")
                        params[current] = match.group(3).strip()
                    elif current:
                        params[current] = (params[current] + " " + raw.strip()).strip()
                i += 1
            continue
        if _NUMPY_HEADER.match(line) and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
            i += 2
            current = None
            while i < len(lines) and not (
                i + 1 < len(lines) and lines[i + 1].strip() and set(lines[i + 1].strip()) == {"-"}
            ):
                raw = lines[i]
                if raw.strip() and not raw.startswith((" ", "\t")):
                    current = raw.split(":")[0].strip()
                    params[current] = ""
                elif raw.strip() and current:
                    params[current] = (params[current] + " " + raw.strip()).strip()
                i += 1
            continue
        i += 1
    return " ".join(summary_lines), params


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Close every object: additionalProperties false (what strict mode means)."""
    if schema.get("type") == "object" and "properties" in schema:
        schema.setdefault("additionalProperties", False)
    for key in ("properties", "$defs"):
        for sub in (schema.get(key) or {}).values():
            if isinstance(sub, dict):
                _strict(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _strict(schema[key])
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or []:
            if isinstance(sub, dict):
                _strict(sub)
    return schema


@dataclass(slots=True)
class ToolOutcome:
    """What became of one tool call."""

    content: str
    ok: bool
    error: str | None = None  # "invalid_json", "arguments_too_large", "invalid_arguments",
    # "unknown_tool", "timeout", "exception", "retry_limit", "interrupted"; from MCP servers
    # (agentloop.mcp) also "tool_error" (the server's isError) and "disconnected"
    duration_s: float = 0.0


# -- argument text as the model sends it -----------------------------------------------------
# Caps on one call's argument text: over either, the call is not run and the model is told why.
MAX_ARGUMENT_CHARS = 100_000
MAX_ARGUMENT_DEPTH = 64  # nested objects and arrays, the outermost object counting as 1
_SHOWN_CHARS = 200  # how much of unparsable arguments the model is shown
_CONTROL = re.compile(r"[\x00-\x1f]")
_LONG_NUMBER = re.compile(r"\d{19}")  # may be an integer past 64 bits, which orjson rounds


class ArgumentsError(ValueError):
    """Argument text that cannot be used: ``kind`` is the outcome's error code."""

    def __init__(self, kind: str, reason: str, advice: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.advice = advice

    def outcome(self, name: str) -> ToolOutcome:
        return ToolOutcome(
            f"Error: the arguments of {name} {self.reason}; the call was not run (the "
            f"conversation keeps it with {{}} as its arguments). {self.advice}",
            False,
            self.kind,
        )


def _too_deep() -> ArgumentsError:
    return ArgumentsError(
        "arguments_too_large",
        f"are nested more than {MAX_ARGUMENT_DEPTH} levels deep",
        "Send flatter arguments.",
    )


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def load_arguments(raw: str) -> tuple[Any, bool]:
    """Parse a call's argument text within the caps: (value, whether it was strict JSON).
    Literal control characters inside strings (which Kimi emits) are accepted, as by
    ``json.loads(strict=False)``; blank text is ``{}``. Raises ``ArgumentsError``."""
    if len(raw) > MAX_ARGUMENT_CHARS:
        raise ArgumentsError(
            "arguments_too_large",
            f"are {len(raw):,} characters long, over the limit of {MAX_ARGUMENT_CHARS:,}",
            "Send smaller arguments, or split the work over several calls.",
        )
    if not raw.strip():
        return {}, raw == ""
    # orjson first (strict JSON, exact below 19 digits): what it refuses or may round (control
    # characters in strings, NaN, integers past 64 bits, deep nesting) goes to the stdlib parser
    if not _LONG_NUMBER.search(raw):
        try:
            value = _json.loads(raw)
        except (ValueError, RecursionError):
            pass
        else:
            if isinstance(value, dict | list) and _deeper_than(value, MAX_ARGUMENT_DEPTH):
                raise _too_deep()
            return value, True
    try:
        value = json.loads(raw, strict=False)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:
        shown = raw
        if len(raw) > _SHOWN_CHARS:
            shown = f"{raw[:_SHOWN_CHARS]}… ({len(raw):,} characters)"
        raise ArgumentsError(
            "invalid_json",
            f"are not valid JSON ({exc})",
            f"You sent: {shown}. Send a JSON object matching the tool's parameters.",
        ) from None
    if isinstance(value, dict | list) and _deeper_than(value, MAX_ARGUMENT_DEPTH):
        raise _too_deep()
    strict = True
    if _CONTROL.search(raw):  # legal between tokens, not inside strings
        try:
            json.loads(raw)
        except ValueError:
            strict = False
    return value, strict


def history_arguments(raw: str) -> str:
    """The argument text to keep in the history for ``raw``: itself when it is a strict JSON
    object within the caps (or empty), the same object as strict JSON when it only parsed
    leniently, else ``"{}"`` — never text the API refuses (kimi-cli #1378, #2165)."""
    try:
        value, strict = load_arguments(raw)
    except ArgumentsError:
        return "{}"
    if not isinstance(value, dict):
        return "{}"
    if strict:
        _parsed.last = (raw, value)  # the call is parsed again to run it: see _parse_once
        return raw
    return _json.dumps(value).decode()


# The last argument text history_arguments parsed in this thread, and its value. prepare_calls
# parses a step's arguments and the tool parses them again to run the call; for the common
# single call the second parse takes this instead. Taken only for the same string object, and
# once (the tool may mutate its arguments), so a miss (another run in between, a second call)
# only parses again.
_parsed = threading.local()


def _parse_once(raw: str) -> Any:
    last: tuple[str, Any] | None = getattr(_parsed, "last", None)
    if last is not None and last[0] is raw:
        _parsed.last = None
        return last[1]
    return load_arguments(raw)[0]


def prepare_calls(message: Message, step: int) -> list[dict[str, Any]]:
    """Fit the tool calls of the assistant ``message`` to be kept in the history (in place)
    and return the calls to run, in the same order.

    In the history, arguments become ``history_arguments``; an empty id, or one an earlier call
    of the message already has, becomes ``call_<step>_<index>`` (``index`` counting from 0 in
    the message; ``_2``, ``_3``… appended if the model sent that id itself), in the history and
    in the calls to run alike, so each call can be answered exactly once. The calls to run keep
    the model's argument text, so a tool error can say what was wrong, and carry the model's
    own id as ``model_id`` when it was replaced."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return []
    taken = {call["id"] for call in calls if call["id"]}
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        fn = call["function"]
        call_id = call["id"]
        fresh = None
        if not call_id or call_id in seen:
            fresh = base = f"call_{step}_{index}"
            n = 1
            while fresh in taken:
                n += 1
                fresh = f"{base}_{n}"
            taken.add(fresh)
        seen.add(fresh or call_id)
        arguments = history_arguments(fn["arguments"])
        if fresh is None and arguments == fn["arguments"]:
            kept.append(call)
            run.append(call)
            continue
        kept.append({**call, "id": fresh or call_id, "function": {**fn, "arguments": arguments}})
        runnable = {**call, "id": fresh or call_id}
        if fresh is not None:
            runnable["model_id"] = call_id
        run.append(runnable)
    message["tool_calls"] = kept
    return run


# Set inside a sync tool's worker thread (anyio copies the context into it); see stop_requested.
_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "agentloop_tool_stop", default=None
)


def stop_requested() -> bool:
    """True inside a sync tool whose call has timed out or whose run has stopped: its result
    will not be used, so it should return as soon as it can."""
    event = _STOP.get()
    return event is not None and event.is_set()


class Toolset(Protocol):
    """A source of tools whose list can change while an agent runs (``agentloop.mcp.MCPServer``).

    ``generation`` moves whenever ``tools()`` would return a different list. Each of its tools
    has ``toolset`` set to it, so a ``Toolbox`` given those tools follows the changes."""

    @property
    def generation(self) -> int: ...

    def tools(self) -> list[Tool]: ...


class Tool:
    """A callable the model can use. Build with ``@tool`` or ``Tool.from_schema``.

    A function may return a ``ToolOutcome`` to report its own result and success (how an MCP
    server's ``isError`` reaches the model); any other value is rendered as the result."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        description: str,
        parameters: dict[str, Any],
        arguments_model: type[pydantic.BaseModel] | None,
        timeout_s: float | None = 60.0,
        strict: bool = True,
        max_failures: int = 3,
        max_result_chars: int | None = None,
        repeat_safe: bool = True,
        source: str | None = None,
        toolset: Toolset | None = None,
        needs_approval: bool | Callable[[dict[str, Any]], bool] = False,
    ) -> None:
        self.fn = fn
        self.name = name
        self.description = description
        self.parameters = parameters
        self.timeout_s = timeout_s
        self.strict = strict
        self.max_failures = max_failures
        self.max_result_chars = max_result_chars
        # False: a call interrupted by a crash is not run again when its durable run resumes;
        # the model is told its outcome is unknown (for tools that act rather than read)
        self.repeat_safe = repeat_safe
        # where the tool comes from, for events and telemetry: None for a Python function,
        # "mcp:<server>" for a tool of an MCP server
        self.source = source
        self.toolset = toolset  # the Toolset that made it, whose changes a Toolbox follows
        # True, or a callable deciding per call from its arguments: such a call pauses the run
        # (stop_reason "approval_required") until a person decides (``Agent.run(approvals=)``)
        self.needs_approval = needs_approval
        self._arguments_model = arguments_model
        # parameter -> its type, when every parameter is a bare str/int/float/bool: arguments
        # of exactly those types pass to the function as they are, without a pydantic model
        # (which would only hand them back): about a tenth of a step's client CPU
        self._plain_types = _plain_types(arguments_model)
        Draft202012Validator.check_schema(parameters)
        self._validator = Draft202012Validator(parameters)  # compiled once per tool
        self._accepts = compile_check(parameters)  # the fast path for the common schemas
        self._is_async = inspect.iscoroutinefunction(fn)
        self.spec = ToolSpec(name, description, parameters, strict)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    async def __call__(self, **kwargs: Any) -> Any:
        """Call the underlying function directly (no validation)."""
        result = self.fn(**kwargs)
        if inspect.isawaitable(result):
            return await result
        return result

    @classmethod
    def from_schema(
        cls,
        fn: Callable[..., Any],
        parameters: dict[str, Any],
        *,
        name: str | None = None,
        description: str | None = None,
        **options: Any,
    ) -> Tool:
        """A tool from a raw JSON schema and a callable taking the arguments as keywords."""
        return cls(
            fn,
            name=name or fn.__name__,
            description=description or (fn.__doc__ or ""),
            parameters=parameters,
            arguments_model=None,
            **options,
        )

    def asks_approval(self, raw_arguments: str) -> bool:
        """Whether this call must wait for a person. Arguments that do not parse never run, so
        they need no approval (the model is told what is wrong instead)."""
        rule = self.needs_approval
        if not callable(rule):
            return bool(rule)
        arguments, problem = self.parse(raw_arguments)
        return problem is None and bool(rule(arguments or {}))

    def validation_errors(self, arguments: Any) -> list[str]:
        if self._accepts is not None and self._accepts(arguments):
            return []
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: list(e.path))
        return [
            f"{'/' + '/'.join(map(str, e.path)) if e.path else '(root)'}: {e.message}"
            for e in errors
        ]

    def _plain(self, arguments: dict[str, Any]) -> bool:
        """Whether the arguments are what the function takes as they are (see _plain_types)."""
        types = self._plain_types
        if types is None:
            return False
        for key, value in arguments.items():  # noqa: SIM110 (a loop: no generator per call)
            if types.get(key) is not type(value):
                return False
        return True

    def parse(self, raw: str) -> tuple[dict[str, Any] | None, ToolOutcome | None]:
        """Parse and validate raw argument text; on failure, the outcome to send back."""
        try:
            arguments = _parse_once(raw)
        except ArgumentsError as exc:
            return None, exc.outcome(self.name)
        problems = self.validation_errors(arguments)
        if problems:
            return None, ToolOutcome(
                f"Error: invalid arguments for {self.name}: "
                + "; ".join(problems)
                + ". Fix them and call the tool again.",
                False,
                "invalid_arguments",
            )
        if self._arguments_model is not None and not self._plain(arguments):
            # the schema can admit what the Python types cannot take (an integral float past
            # 64 bits for an int, say): that too is the model's to fix, not a tool failure
            try:
                self._arguments_model.model_validate(arguments)
            except pydantic.ValidationError as exc:
                found = "; ".join(
                    f"/{'/'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
                )
                return None, ToolOutcome(
                    f"Error: invalid arguments for {self.name}: {found}. Fix them and call the "
                    "tool again.",
                    False,
                    "invalid_arguments",
                )
        return arguments, None

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        """Run the function on validated arguments (sync functions in a worker thread)."""
        kwargs = arguments
        if self._arguments_model is not None and not self._plain(arguments):
            model = self._arguments_model.model_validate(arguments)
            kwargs = {k: getattr(model, k) for k in type(model).model_fields}
        if self._is_async:
            return await self.fn(**kwargs)
        stop = threading.Event()
        token = _STOP.set(stop)
        try:
            # abandon_on_cancel: a timeout or a stopped run returns at once, without the thread
            return await anyio.to_thread.run_sync(lambda: self.fn(**kwargs), abandon_on_cancel=True)
        finally:
            stop.set()
            _STOP.reset(token)


_PLAIN: tuple[type, ...] = (str, int, float, bool)


def _plain_types(model: type[pydantic.BaseModel] | None) -> dict[str, type] | None:
    """Each field's type if every field is a bare ``str``/``int``/``float``/``bool`` with no
    constraint, alias or validator (a value of exactly that type is what pydantic would give
    back: it turns an int into a float and an integral float into an int, so other types go
    through the model); None otherwise."""
    if model is None or model.model_config:  # a config may strip, lower, forbid, be strict
        return None
    decorators = model.__pydantic_decorators__
    if (
        decorators.field_validators
        or decorators.model_validators
        or decorators.validators  # v1-style @validator
        or decorators.root_validators
    ):
        return None
    types: dict[str, type] = {}
    for name, info in model.model_fields.items():
        plain = any(info.annotation is t for t in _PLAIN)
        if (
            not plain
            or info.metadata
            or info.alias not in (None, name)
            or info.validation_alias is not None
        ):
            return None
        types[name] = cast(type, info.annotation)
    return types


def _build(
    fn: Callable[..., Any], name: str | None, description: str | None, **options: Any
) -> Tool:
    summary, docs = parse_docstring(fn.__doc__)
    hints = get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(
                f"tool {fn.__name__}: *args/**kwargs cannot be described "
                "to a model; list the parameters"
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, pydantic.Field(default, description=docs.get(param.name)))
    model = pydantic.create_model(f"{fn.__name__}_arguments", **fields)
    schema = model.model_json_schema()
    schema.pop("title", None)
    schema.setdefault("properties", {})
    schema["type"] = "object"
    return Tool(
        fn,
        name=name or fn.__name__,
        description=description or summary,
        parameters=_strict(schema),
        arguments_model=model,
        **options,
    )


@overload
def tool(fn: F, /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = 60.0,
    strict: bool = True,
    max_failures: int = 3,
    max_result_chars: int | None = None,
    repeat_safe: bool = True,
    needs_approval: bool | Callable[[dict[str, Any]], bool] = False,
) -> Callable[[F], Tool]: ...


def tool(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Turn a typed function (sync or async) into a ``Tool``; usable bare or with options."""
    if fn is not None:
        return _build(fn, None, None)

    def wrap(f: Callable[..., Any]) -> Tool:
        return _build(f, options.pop("name", None), options.pop("description", None), **options)

    return wrap


class Toolbox:
    """An agent's tools, by name, and the running of one step's tool calls."""

    def __init__(
        self,
        items: Sequence[Tool | BuiltinTool | Callable[..., Any]],
        *,
        max_result_chars: int = 40_000,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.now = now  # the agent's Clock, for durations
        self.builtins: dict[str, BuiltinTool] = {}
        # the items in order; a toolset's tools stand where its first tool was given
        self._entries: list[Tool | Toolset] = []
        # per toolset: the names given (None: all of its tools were, so follow its whole list)
        self._followed: dict[int, tuple[Toolset, frozenset[str] | None]] = {}
        given: list[Tool] = []
        for item in items:
            if isinstance(item, BuiltinTool):  # run by the provider, e.g. Kimi's $web_search
                self.builtins[item.name] = item
                continue
            t = item if isinstance(item, Tool) else tool(item)
            given.append(t)
            if t.toolset is None:
                self._entries.append(t)
            elif id(t.toolset) not in self._followed:
                self._entries.append(t.toolset)
                self._followed[id(t.toolset)] = (t.toolset, None)
        for key, (toolset, _) in self._followed.items():
            names = frozenset(t.name for t in given if t.toolset is toolset)
            whole = {t.name for t in toolset.tools()} <= names
            self._followed[key] = (toolset, None if whole else names)
        self.max_result_chars = max_result_chars
        self.tools: dict[str, Tool] = {}
        self._specs: list[AnyTool] = []
        self._seen: dict[int, int] = {}
        self._assemble(given, strict=True)

    @property
    def specs(self) -> list[AnyTool]:
        """The tools as the model is offered them; a toolset's changes are taken here."""
        if self._followed and any(
            toolset.generation != self._seen[key] for key, (toolset, _) in self._followed.items()
        ):
            self._assemble(None, strict=False)
        return self._specs

    def _assemble(self, given: list[Tool] | None, *, strict: bool) -> None:
        """Build ``tools`` and ``specs``: from the tools ``given`` (at first), else from the
        entries with each toolset's current list. ``strict``: two tools of one name are a
        ``ConfigurationError``; on a refresh the later one is left out (and logged)."""
        tools: dict[str, Tool] = {}
        self._seen = {key: toolset.generation for key, (toolset, _) in self._followed.items()}
        if given is None:
            given = []
            for entry in self._entries:
                if isinstance(entry, Tool):
                    given.append(entry)
                    continue
                _, names = self._followed[id(entry)]
                given.extend(t for t in entry.tools() if names is None or t.name in names)
        for t in given:
            if t.name in tools:
                first = tools[t.name]
                where = ""
                if first.source or t.source:
                    where = f" (from {first.source or 'Python'} and {t.source or 'Python'})"
                    where += "; give an MCP server a prefix= to keep its names apart"
                if strict:
                    raise ConfigurationError(f"two tools are named {t.name!r}{where}")
                log.warning("agentloop: a second tool named %r is left out%s", t.name, where)
                continue
            tools[t.name] = t
        self.tools = tools
        specs: list[AnyTool] = [t.spec for t in tools.values()]
        specs.extend(self.builtins.values())
        self._specs = specs

    async def run(
        self,
        calls: Sequence[dict[str, Any]],
        failures: dict[str, int],
        outcomes: list[ToolOutcome | None],
        journal: Journal | None = None,
    ) -> None:
        """Run a step's calls concurrently, putting each call's outcome at its index in
        ``outcomes`` as it finishes (so a stop keeps the ones that did). ``failures`` counts
        each tool's failures in a row across the run. The journal runs each call of a tool
        (or, resuming a durable run, gives back its recorded outcome)."""
        journal = journal or Journal(self.now)
        if len(calls) == 1:  # the common single call: no task group, no closure
            outcomes[0] = await self._execute(calls[0], failures, journal)
            return

        async def run_one(index: int) -> None:
            outcomes[index] = await self._execute(calls[index], failures, journal)

        async with anyio.create_task_group() as group:
            for index in range(len(calls)):
                group.start_soon(run_one, index)

    async def _execute(
        self, call: dict[str, Any], failures: dict[str, int], journal: Journal
    ) -> ToolOutcome:
        fn = call["function"]
        name = fn["name"]
        builtin = self.builtins.get(name)
        if builtin is not None:  # declared by the agent: the provider ran it
            try:
                load_arguments(fn["arguments"])
            except ArgumentsError as exc:
                return exc.outcome(name)
            return ToolOutcome(builtin.answer(fn["arguments"]), True)
        target = self.tools.get(name)
        if target is None:
            known = ", ".join([*self.tools, *self.builtins]) or "none"
            return ToolOutcome(
                f"Error: there is no tool named {name!r}. Available tools: {known}.",
                False,
                "unknown_tool",
            )
        if failures.get(name, 0) >= target.max_failures:
            return ToolOutcome(
                f"Error: {name} has failed {target.max_failures} times in a row; do "
                "not call it again — continue without it.",
                False,
                "retry_limit",
            )

        async def work() -> ToolOutcome:
            started = self.now()
            outcome = await self._invoke(target, fn["arguments"])
            outcome.duration_s = self.now() - started
            return outcome

        outcome = await journal.tool_call(call, target, work)
        failures[name] = 0 if outcome.ok else failures.get(name, 0) + 1
        return outcome

    async def _invoke(self, target: Tool, raw_arguments: str) -> ToolOutcome:
        arguments, problem = target.parse(raw_arguments)
        if problem is not None:
            return problem
        assert arguments is not None
        limit = target.timeout_s
        dog = watchdog()
        try:
            with dog.until(math.inf if limit is None else loop_time() + limit) as timer:
                try:
                    value = await target.invoke(arguments)
                except Exception as exc:  # its own failure (its own TimeoutError too) goes back
                    return ToolOutcome(
                        f"Error: {target.name} raised {type(exc).__name__}: {exc}",
                        False,
                        "exception",
                    )
        finally:
            dog.close()
        if timer.cancelled_caught:
            return ToolOutcome(
                f"Error: {target.name} timed out after {target.timeout_s:g}s.", False, "timeout"
            )
        limit = target.max_result_chars or self.max_result_chars
        if isinstance(value, ToolOutcome):  # the tool reported its own outcome
            value.content = render_result(value.content, limit)
            return value
        return ToolOutcome(render_result(value, limit), True)


def render_result(value: Any, limit: int | None) -> str:
    """A tool's return value as message text, cut to ``limit`` characters with a note."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, pydantic.BaseModel):
        text = value.model_dump_json()
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = str(value)
    if limit is not None and len(text) > limit:
        dropped = len(text) - limit
        text = text[:limit] + f"\n[truncated: {dropped} more characters not shown]"
    return text


__all__ = [
    "MAX_ARGUMENT_CHARS",
    "MAX_ARGUMENT_DEPTH",
    "ArgumentsError",
    "Tool",
    "ToolOutcome",
    "Toolbox",
    "Toolset",
    "history_arguments",
    "load_arguments",
    "parse_docstring",
    "prepare_calls",
    "render_result",
    "stop_requested",
    "tool",
]
