"""The HTTP seam: the one place that knows which HTTP library carries our bytes.

Model clients call ``Transport.post`` and get status, headers and a body they can read whole or
iterate. ``Httpx2Transport`` is the default; ``AiohttpTransport`` (``transport_aiohttp.py``, the
``fast`` extra) is the other, chosen by instance or by name (``transport="aiohttp"``). Another
library can be swapped in by implementing the same two methods.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import httpx2

from .._secret import header_pairs
from ..errors import (
    APIConnectionError,
    ConfigurationError,
    NothingListeningError,
    StreamInterruptedError,
)
from ..limits import current_loop


class RawResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def iter_bytes(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...


class Transport(Protocol):
    def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, timed: bool = False
    ) -> AbstractAsyncContextManager[RawResponse]:
        """POST ``body``. ``timed``: the caller bounds every wait for the response itself
        (``OpenAIModel``'s first-byte and idle timeouts), so the transport adds no read
        timeout of its own; connecting and sending keep theirs."""
        ...

    async def aclose(self) -> None: ...


class _Httpx2Response:
    __slots__ = ("_response",)

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx2.TransportError as exc:
            raise StreamInterruptedError(
                f"the connection broke mid-stream ({type(exc).__name__}: {exc})"
            ) from None

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx2.TransportError as exc:
            raise APIConnectionError(
                f"the connection broke while reading the response ({type(exc).__name__})"
            ) from None


class _Post:
    """One POST as an async context manager (a class, not ``@asynccontextmanager``: no
    generator to start and finalise per request). It sends on the least loaded of the loop's
    clients and counts itself in that client's load until the response is closed."""

    __slots__ = (
        "_body",
        "_headers",
        "_loads",
        "_response",
        "_shard",
        "_timed",
        "_transport",
        "_url",
    )

    def __init__(
        self,
        transport: Httpx2Transport,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timed: bool,
    ) -> None:
        self._transport = transport
        self._url = url
        self._headers = headers
        self._body = body
        self._timed = timed
        self._response: httpx2.Response | None = None
        self._loads: list[int] | None = None
        self._shard = 0

    async def __aenter__(self) -> RawResponse:
        transport = self._transport
        pools = transport._pools
        if pools.loop is not (loop := current_loop()):  # one identity check per request
            pools = await transport._pools_for(loop)
        loads = pools.in_flight
        shard = loads.index(min(loads))
        client = pools.clients[shard]
        loads[shard] += 1
        self._loads, self._shard = loads, shard
        try:
            request = client.build_request(
                "POST", self._url, headers=list(header_pairs(self._headers)), content=self._body
            )
            if self._timed:  # no read timeout: a buffered generation may be silent for minutes
                request.extensions["timeout"] = {**request.extensions["timeout"], "read": None}
            try:
                self._response = await client.send(request, stream=True)
            except httpx2.TransportError as exc:
                # The message names the host, never the request headers (the key lives there).
                if isinstance(exc, httpx2.ConnectError) and _refused(exc):
                    raise NothingListeningError(
                        f"connection refused by {request.url.host}:{request.url.port}"
                    ) from None
                raise APIConnectionError(
                    f"could not reach {request.url.host}:{request.url.port} "
                    f"({type(exc).__name__}: {exc})"
                ) from None
        except BaseException:
            self._release()
            raise
        return _Httpx2Response(self._response)

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._response is not None:
                await self._response.aclose()
        finally:
            self._release()

    def _release(self) -> None:
        if self._loads is not None:
            self._loads[self._shard] -= 1
            self._loads = None


def _refused(exc: BaseException) -> bool:
    """Whether a failed connect was refused (nothing listens there), not unreachable or slow."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ConnectionRefusedError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


class _Pools:
    """The clients of one event loop: their pooled connections are sockets of that loop."""

    __slots__ = ("__weakref__", "clients", "closer", "in_flight", "loop")

    def __init__(self, loop: object, clients: list[httpx2.AsyncClient]) -> None:
        self.loop = loop
        self.clients = clients
        self.in_flight = [0] * len(clients)
        self.closer: AsyncGenerator[None, None] | None = None


async def _close_with_loop(
    clients: list[httpx2.AsyncClient], owner: weakref.ref[_Pools]
) -> AsyncGenerator[None, None]:
    """Parked at its ``yield`` for the life of the loop: asyncio.run, anyio.run and trio close a
    loop's unfinished async generators before the loop itself, so the clients are closed on
    their own loop, not dropped with live sockets. A transport dropped while its loop runs is
    closed through the loop's finalizer hook (no reference back to the ``_Pools``: a cycle would
    let the GC finalize the sockets first). A bare ``loop.close()`` leaves them to the GC."""
    try:
        yield
    finally:
        pools = owner()
        if pools is not None:
            pools.loop = None  # never handed out again: a later request here builds anew
        for client in clients:
            await client.aclose()


class Httpx2Transport:
    """httpx2 over a few independent connection pools ("shards").

    httpcore's pool scans all of its connections for every request, so one pool with N open
    connections costs O(N) CPU per request: at 500 concurrent runs that scan was 75% of the
    client's CPU. Each request goes to the shard with the fewest requests in flight (the first
    on ties, so sequential calls keep reusing one connection), which keeps every pool small.

    A pooled connection belongs to the event loop that opened it, and ``run_sync`` starts a new
    loop per call, so the shards are built per loop: a request on another loop than the last
    one's takes the shards its thread built for that loop, or builds new ones. A ``client=`` of
    the caller's own is never replaced (we can neither copy its settings nor know who else holds
    it): using it on a second loop raises ``ConfigurationError``.
    """

    def __init__(
        self,
        *,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_connections: int = 1024,
        shards: int = 16,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        self._client = client
        self._new_client: Callable[[], httpx2.AsyncClient] | None = None
        self._shards = 1
        if client is None:
            self._shards = max(1, min(shards, max_connections))
            per_shard = max(1, max_connections // self._shards)
            self._new_client = functools.partial(
                httpx2.AsyncClient,
                verify=httpx2.create_ssl_context(),  # one CA store (about 1 MB) for every loop
                timeout=httpx2.Timeout(timeout, connect=connect_timeout),
                limits=httpx2.Limits(
                    max_connections=per_shard, max_keepalive_connections=per_shard
                ),
            )
        # The last loop's pools (None matches no loop); each thread keeps its own in _local.
        self._pools = _Pools(None, [client] if client is not None else [])
        self._local = threading.local()
        self._claim = threading.Lock()

    async def _pools_for(self, loop: object) -> _Pools:
        pools: _Pools | None = getattr(self._local, "pools", None)
        if pools is None or pools.loop is not loop:
            if self._new_client is None:
                pools = self._claim_client(loop)
            else:
                pools = _Pools(loop, [self._new_client() for _ in range(self._shards)])
                pools.closer = _close_with_loop(pools.clients, weakref.ref(pools))
                await pools.closer.asend(None)  # the first step registers it with this loop
            self._local.pools = pools
        self._pools = pools
        return pools

    def _claim_client(self, loop: object) -> _Pools:
        with self._claim:
            pools = self._pools  # always the caller's client's, unbound until first used
            if pools.loop is None:
                pools.loop = loop
            if pools.loop is loop:
                return pools
        raise ConfigurationError(
            "the httpx2.AsyncClient passed as client= was first used in another event loop "
            "(one that has ended, or runs in another thread), and its connections belong to "
            "that loop: create the client inside the loop that uses it, or leave out client= "
            "and let agentloop own the connection pools (it builds them per loop)"
        )

    def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, timed: bool = False
    ) -> _Post:
        return _Post(self, url, headers, body, timed)

    async def aclose(self) -> None:
        """Close this loop's pools (other loops' close when their loop ends)."""
        if self._client is not None:
            await self._client.aclose()
            return
        loop = current_loop()
        for pools in (self._pools, getattr(self._local, "pools", None)):
            if pools is not None and pools.loop is loop and pools.closer is not None:
                await pools.closer.aclose()  # runs its finally: closes the clients
                return


TRANSPORTS = ("httpx2", "aiohttp")


def make_transport(transport: Transport | str | None, *, timeout: float) -> Transport:
    """The transport a model client uses: an instance as given, else one built by name
    (None is the default, httpx2)."""
    if transport is None or transport == "httpx2":
        return Httpx2Transport(timeout=timeout)
    if transport == "aiohttp":
        from .transport_aiohttp import AiohttpTransport  # imported only when chosen

        return AiohttpTransport(timeout=timeout)
    if isinstance(transport, str):
        raise ConfigurationError(
            f"unknown transport {transport!r}: choose one of {', '.join(TRANSPORTS)} "
            "or pass a Transport instance"
        )
    return transport
