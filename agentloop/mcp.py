"""MCP servers as tool sources, on the official SDK (``pip install "agentloop[mcp]"``).

``MCPServer.stdio(command, args)`` runs a server as a subprocess; ``MCPServer.http(url,
headers=...)`` talks streamable HTTP. Each is an async context manager that owns the connection;
inside it ``server.tools()`` are ordinary ``Tool``s, to give an ``Agent`` beside ``@tool``
functions::

    async with MCPServer.stdio(sys.executable, ["-m", "mcp_server_time"]) as time_server:
        agent = Agent(model, [*time_server.tools(), my_tool])

- Schemas: the model is offered the server's schema normalised to Moonshot Flavored JSON Schema
  (``models.mfjs.normalise``: ``$ref`` beside a description inlined, kimi-cli #2061); arguments
  are validated against the server's own schema before the call, as for ``@tool``, so invalid
  arguments go back to the model as ``invalid_arguments`` and the server is not called.
- Names: made valid for Kimi's rule (``^[a-zA-Z_][a-zA-Z0-9_-]{2,63}$``) with an optional
  ``prefix``; two of a server's tools that would share a name are a ``ConfigurationError``; each
  tool calls the server by the server's own name.
- Results: text, structured content (JSON), resources and images (a note naming what was
  returned), and ``isError`` (``ok=False``, error ``"tool_error"``) all become the tool message.
  Each call has ``timeout_s``. A server that crashes or disconnects answers the call with a
  ``"disconnected"`` error and is connected afresh on the next call.
- ``tools/list_changed``: the server's list is fetched again in the background and its
  ``generation`` moves; a ``Toolbox`` (an ``Agent``'s) holding its tools takes the new list at
  the start of the next step (``tools.Toolset``), so the tools prefix changes only then.
- Secrets: every environment value and header value given is a ``Secret``; ``redact`` takes them
  out of errors, results and logs, and ``repr`` shows only their names.
- Each tool's ``source`` is ``"mcp:<name>"`` (the server's name, or ``name=``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Collection, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import httpx2
import pydantic

try:
    import mcp_types
    from mcp import Client, StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp.shared.exceptions import MCPError
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError('MCP servers need the mcp extra: pip install "agentloop[mcp]"') from exc

from ._secret import Secret, redact
from .errors import ConfigurationError
from .models import mfjs
from .models.base import ToolSpec
from .models.kimi import TOOL_NAME
from .tools import Tool, ToolOutcome

log = logging.getLogger("agentloop.mcp")

_PREFIX = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]{0,40}$")
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_MAX_PAGES = 100  # a tools/list that never stops paging cannot hang a connection


class MCPConnectionError(ConfigurationError):
    """The server could not be started or reached, or did not answer its handshake."""


def tool_name(name: str, prefix: str | None = None) -> str:
    """The function name the model sees for the server's tool ``name``: ``prefix_name`` (with a
    prefix), characters outside ``[a-zA-Z0-9_-]`` made ``_``, a leading ``_`` when it starts
    otherwise than with a letter or ``_``, padded with ``_`` to 3 characters, and over 64 cut
    to 55 plus ``_`` and 8 hex digits of the full name (so long names stay distinct)."""
    full = f"{prefix}_{name}" if prefix else name
    if TOOL_NAME.match(full):
        return full
    fixed = _NOT_NAME.sub("_", full)
    if not fixed[:1].isascii() or not (fixed[:1].isalpha() or fixed[:1] == "_"):
        fixed = "_" + fixed
    fixed = fixed.ljust(3, "_")
    if len(fixed) > 64:
        fixed = fixed[:55] + "_" + hashlib.sha256(full.encode()).hexdigest()[:8]
    return fixed


def render(result: mcp_types.CallToolResult) -> str:
    """A tool result as the text of the tool message: each content block in order (text as
    itself; images, audio, binary resources and resource links as a note naming them), then the
    structured content as JSON unless a text block already holds it."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            kind = "image" if isinstance(block, mcp_types.ImageContent) else "audio"
            parts.append(
                f"[{kind} returned: {block.mime_type}, about {len(block.data) * 3 // 4:,} bytes; "
                f"not shown, {kind}s from tools are not passed to the model yet]"
            )
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            mime = f", {resource.mime_type}" if resource.mime_type else ""
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(f"[resource {resource.uri}{mime}]\n{resource.text}")
            else:
                parts.append(
                    f"[resource returned: {resource.uri}{mime}, about "
                    f"{len(resource.blob) * 3 // 4:,} bytes of binary data; not shown]"
                )
        elif isinstance(block, mcp_types.ResourceLink):
            mime = f", {block.mime_type}" if block.mime_type else ""
            about = f": {block.description}" if block.description else ""
            parts.append(f"[resource link: {block.uri} ({block.name}{mime}){about}]")
        else:  # a content type this version does not know
            parts.append(f"[{getattr(block, 'type', 'unknown')} content returned; not shown]")
    structured = result.structured_content
    if structured is not None and not any(_holds(p, structured) for p in parts):
        parts.append(json.dumps(structured, ensure_ascii=False))
    return "\n".join(parts)


def _holds(text: str, value: Any) -> bool:
    """Whether ``text`` already says ``value`` (as JSON; a bare ``{"result": x}``, the SDK's
    wrapping of a function's plain return value, as ``x`` too)."""
    wrapped = value["result"] if isinstance(value, dict) and list(value) == ["result"] else None
    if wrapped is not None and text == wrapped:
        return True
    try:
        parsed = json.loads(text)
    except ValueError:
        return False
    return bool(parsed == value or (wrapped is not None and parsed == wrapped))


@dataclass(eq=False)
class _Connection:
    """One live connection: its client, and the event that ends it."""

    client: Client
    gone: anyio.Event = field(default_factory=anyio.Event)


class MCPServer:
    """One MCP server's connection and tools. Build with ``MCPServer.stdio`` or
    ``MCPServer.http``; use it as an async context manager; ``tools()`` inside it."""

    def __init__(
        self,
        *,
        stdio: tuple[str, list[str], dict[str, Secret], str | None] | None = None,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
        prefix: str | None = None,
        timeout_s: float | None = 60.0,
        connect_timeout_s: float = 30.0,
        exclude: Collection[str] = (),
    ) -> None:
        if (stdio is None) == (url is None):
            raise ConfigurationError("use MCPServer.stdio(...) or MCPServer.http(...)")
        if prefix is not None and not _PREFIX.match(prefix):
            raise ConfigurationError(
                f"MCP prefix {prefix!r} must start with a letter or _ and hold only letters, "
                "digits, _ and - (at most 41 characters)"
            )
        if timeout_s is not None and timeout_s <= 0:
            raise ConfigurationError(f"timeout_s must be positive; got {timeout_s}")
        self._stdio = stdio
        self._url = url
        self._headers = {k: Secret(v) for k, v in (headers or {}).items()}
        for value in (headers or {}).values():  # "Bearer <token>": the token alone is secret too
            scheme, _, token = value.partition(" ")
            if token and scheme.isalpha():
                Secret(token.strip())
        self._given_name = name
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.exclude = frozenset(exclude)
        self.name = name or (Path(stdio[0]).name if stdio else "http")
        self._tools: list[Tool] = []
        self._listing: list[mcp_types.Tool] = []
        self._generation = 0
        self._connection: _Connection | None = None
        self._connecting = anyio.Lock()
        self._group: anyio.abc.TaskGroup | None = None
        self._closing = False
        self.connections = 0  # connections made so far (a reconnect adds one)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def stdio(
        cls,
        command: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
        prefix: str | None = None,
        timeout_s: float | None = 60.0,
        connect_timeout_s: float = 30.0,
        exclude: Collection[str] = (),
    ) -> MCPServer:
        """A server run as ``command args`` (its stdin/stdout the connection). ``env`` is added
        to a minimal environment (PATH, HOME, ...) and its values are secrets; ``timeout_s``
        bounds each call; ``exclude`` leaves out tools by the server's own names."""
        secrets = {k: Secret(v) for k, v in (env or {}).items()}
        return cls(
            stdio=(command, list(args), secrets, os.fspath(cwd) if cwd is not None else None),
            name=name,
            prefix=prefix,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            exclude=exclude,
        )

    @classmethod
    def http(
        cls,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
        prefix: str | None = None,
        timeout_s: float | None = 60.0,
        connect_timeout_s: float = 30.0,
        exclude: Collection[str] = (),
    ) -> MCPServer:
        """A server at ``url`` over streamable HTTP; ``headers`` (e.g. ``Authorization``) are
        sent with every request and their values are secrets."""
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"an MCP server URL must be http(s); got {url!r}")
        return cls(
            url=url,
            headers=headers,
            name=name,
            prefix=prefix,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            exclude=exclude,
        )

    @classmethod
    def parse(cls, spec: str, **options: Any) -> MCPServer:
        """A server from one command-line word: an http(s) URL, or a command line (``python``
        alone is this interpreter), as ``agentloop run --mcp`` takes it."""
        if spec.startswith(("http://", "https://")):
            return cls.http(spec, **options)
        words = shlex.split(spec)
        if not words:
            raise ConfigurationError("--mcp needs a command or a URL")
        command = sys.executable if words[0] in ("python", "python3") else words[0]
        return cls.stdio(command, words[1:], **options)

    def __repr__(self) -> str:
        if self._stdio is not None:
            command, args, env, _ = self._stdio
            shown = shlex.join([command, *args])
            secrets = f", env={sorted(env)}" if env else ""
            return f"MCPServer.stdio({shown!r}{secrets}, name={self.name!r})"
        headers = f", headers={sorted(self._headers)}" if self._headers else ""
        return f"MCPServer.http({self._url!r}{headers}, name={self.name!r})"

    # -- the tool source -------------------------------------------------------------------
    @property
    def source(self) -> str:
        return f"mcp:{self.name}"

    @property
    def generation(self) -> int:
        """Moves each time the tool list changes (after ``tools/list_changed`` or a reconnect)."""
        return self._generation

    def tools(self) -> list[Tool]:
        """The server's tools as agent tools (as last listed)."""
        if self._group is None:
            raise ConfigurationError(f"{self!r} is not open: use it in `async with`")
        return list(self._tools)

    # -- lifetime --------------------------------------------------------------------------
    async def __aenter__(self) -> MCPServer:
        if self._group is not None:
            raise ConfigurationError(f"{self!r} is already open")
        self._closing = False
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        try:
            await self._connect()
        except BaseException as exc:
            await self._close(exc)
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self._close(error)

    async def _close(self, error: BaseException | None) -> None:
        self._closing = True
        group, self._group = self._group, None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.gone.set()
        if group is not None:
            if error is not None:
                group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)

    async def _connect(self) -> _Connection:
        """The live connection, made now if there is none (one attempt at a time)."""
        async with self._connecting:
            if self._connection is not None:
                return self._connection
            if self._group is None or self._closing:
                raise MCPConnectionError(f"{self!r} is closed")
            ready = anyio.Event()
            outcome: list[_Connection | BaseException] = []
            scope = anyio.CancelScope()
            self._group.start_soon(self._hold, ready, outcome, scope)
            with anyio.move_on_after(self.connect_timeout_s) as timer:
                await ready.wait()
            if timer.cancelled_caught:
                scope.cancel()
                raise MCPConnectionError(
                    f"MCP server {self.name!r} did not answer within {self.connect_timeout_s:g}s"
                )
            result = outcome[0]
            if isinstance(result, ConfigurationError):
                raise result  # e.g. two tools that would share a name: the user's to fix
            if isinstance(result, BaseException):
                raise MCPConnectionError(
                    redact(f"cannot connect to MCP server {self.name!r}: {_describe(result)}")
                ) from None
            self._connection = result
            return result

    async def _hold(
        self,
        ready: anyio.Event,
        outcome: list[_Connection | BaseException],
        scope: anyio.CancelScope,
    ) -> None:
        """The task that owns one connection, from opening it to closing it (anyio wants a
        transport entered and exited in one task)."""
        connection: _Connection | None = None
        with scope:
            try:
                async with AsyncExitStack() as stack:
                    group = await stack.enter_async_context(anyio.create_task_group())
                    stack.callback(group.cancel_scope.cancel)  # runs before the group exits

                    async def on_message(message: Any) -> None:
                        if isinstance(message, mcp_types.ToolListChangedNotification):
                            group.start_soon(self._relist, connection)

                    client = await stack.enter_async_context(
                        Client(await self._transport(stack), message_handler=on_message, cache=None)
                    )
                    connection = _Connection(client)
                    self._take(await self._list(client))
                    if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                        group.start_soon(self._listen, connection)
                    self.connections += 1
                    outcome.append(connection)
                    ready.set()
                    if self._closing:  # closed while this connection was being made
                        connection.gone.set()
                    await connection.gone.wait()
            except Exception as exc:
                if not outcome:
                    outcome.append(exc)
                else:
                    log.warning("agentloop: MCP server %r: %s", self.name, redact(_describe(exc)))
            finally:
                if self._connection is connection:
                    self._connection = None
                ready.set()

    async def _transport(self, stack: AsyncExitStack) -> Any:
        if self._stdio is not None:
            command, args, env, cwd = self._stdio
            return StdioServerParameters(
                command=command,
                args=args,
                env={k: v.reveal() for k, v in env.items()} or None,
                cwd=cwd,
            )
        assert self._url is not None
        http = create_mcp_http_client(headers={k: v.reveal() for k, v in self._headers.items()})
        await stack.enter_async_context(http)
        return streamable_http_client(self._url, http_client=http)

    async def _list(self, client: Client) -> list[mcp_types.Tool]:
        listed: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        if self._given_name is None and client.server_info is not None:
            self.name = client.server_info.name or self.name
        return listed

    def _take(self, listed: list[mcp_types.Tool]) -> None:
        """Make the agent tools of a listing; move ``generation`` when they differ."""
        tools = self._build(listed)
        if [t.spec for t in tools] != [t.spec for t in self._tools]:
            self._generation += 1
        self._tools = tools
        self._listing = listed

    def _build(self, listed: list[mcp_types.Tool]) -> list[Tool]:
        tools: list[Tool] = []
        names: dict[str, str] = {}
        for item in listed:
            if item.name in self.exclude:
                continue
            shown = tool_name(item.name, self.prefix)
            if shown in names:
                raise ConfigurationError(
                    f"MCP server {self.name!r}: tools {names[shown]!r} and {item.name!r} would "
                    f"both be called {shown!r}; leave one out with exclude=[...]"
                )
            names[shown] = item.name
            tools.append(self._tool(item, shown))
        return tools

    def _tool(self, item: mcp_types.Tool, shown: str) -> Tool:
        original = item.name
        schema = dict(item.input_schema) or {"type": "object", "properties": {}}
        hints = item.annotations
        repeat_safe = bool(hints and (hints.read_only_hint or hints.idempotent_hint))

        async def call(**arguments: Any) -> ToolOutcome:
            return await self._call(original, arguments)

        call.__name__ = shown
        try:
            made = Tool.from_schema(
                call,
                schema,  # validation: the server's own schema
                name=shown,
                description=item.description or item.title or original,
                timeout_s=self.timeout_s,
                strict=False,  # the server's schema is not ours to close
                repeat_safe=repeat_safe,
                source=self.source,
                toolset=self,
            )
        except Exception as exc:  # jsonschema's SchemaError: the server sent a broken schema
            raise ConfigurationError(
                f"MCP server {self.name!r}: tool {original!r} has an invalid input schema "
                f"({_describe(exc)}); leave it out with exclude=[{original!r}]"
            ) from None
        # the wire: Moonshot Flavored JSON Schema
        made.spec = ToolSpec(shown, made.description, mfjs.normalise(schema), False)
        return made

    async def _relist(self, connection: _Connection | None) -> None:
        if connection is None or connection.gone.is_set():
            return
        try:
            self._take(await self._list(connection.client))
        except Exception as exc:
            log.warning(
                "agentloop: MCP server %r: the new tool list is not used: %s",
                self.name,
                redact(_describe(exc)),
            )

    async def _listen(self, connection: _Connection) -> None:
        """On 2026-07-28 connections, change events come over ``subscriptions/listen``."""
        try:
            async with connection.client.listen(tools_list_changed=True) as events:
                async for _ in events:
                    await self._relist(connection)
        except Exception as exc:  # the server does not offer it, or the connection ended
            log.debug("agentloop: MCP server %r: no change events: %s", self.name, exc)

    # -- calls -----------------------------------------------------------------------------
    async def _call(self, original: str, arguments: dict[str, Any]) -> ToolOutcome:
        """Call the server's tool ``original`` with validated arguments."""
        try:
            connection = await self._connect()
        except MCPConnectionError as exc:
            return ToolOutcome(f"Error: {exc}. Try again later.", False, "disconnected")
        try:
            result = await connection.client.call_tool(original, arguments)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                return self._lost(connection, exc)
            return ToolOutcome(
                redact(f"Error: MCP server {self.name!r} refused the call: {exc.message}"),
                False,
                "exception",
            )
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream) as exc:
            return self._lost(connection, exc)
        except (OSError, httpx2.TransportError) as exc:
            return self._lost(connection, exc)
        except pydantic.ValidationError as exc:
            return ToolOutcome(
                redact(f"Error: MCP server {self.name!r} sent a malformed result: {exc}"),
                False,
                "exception",
            )
        text = redact(render(result))
        if result.is_error:
            return ToolOutcome(
                text or "Error: the tool failed (no details given).", False, "tool_error"
            )
        return ToolOutcome(text or "(the tool returned no content)", True)

    def _lost(self, connection: _Connection, exc: BaseException) -> ToolOutcome:
        connection.gone.set()
        if self._connection is connection:
            self._connection = None
        return ToolOutcome(
            redact(
                f"Error: the MCP server {self.name!r} disconnected ({_describe(exc)}); the call "
                "may not have run. It is reconnected on the next call: try again."
            ),
            False,
            "disconnected",
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["MCPConnectionError", "MCPServer", "render", "tool_name"]
