"""An aiohttp transport (the ``fast`` extra): ``pip install 'agentloop[fast]'``.

The same seam as ``Httpx2Transport`` (``transport.py``): status, headers and a body read whole or
iterated, the library's errors turned into agentloop's (``NothingListeningError``,
``APIConnectionError``, ``StreamInterruptedError``), a session per event loop closed on its own
loop. aiohttp runs on asyncio only. Choose it with ``KimiModel(..., transport="aiohttp")`` or
``transport=AiohttpTransport(...)``; httpx2 stays the default.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Mapping

from .._secret import header_pairs
from ..errors import (
    APIConnectionError,
    ConfigurationError,
    NothingListeningError,
    StreamInterruptedError,
)
from ..limits import current_loop
from .transport import RawResponse, _refused

try:
    import aiohttp
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "the aiohttp transport needs aiohttp: pip install 'agentloop[fast]'"
    ) from exc


class _AiohttpResponse:
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            raise StreamInterruptedError(
                f"the connection broke mid-stream ({type(exc).__name__}: {exc})"
            ) from None

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except aiohttp.ClientError as exc:
            raise APIConnectionError(
                f"the connection broke while reading the response ({type(exc).__name__})"
            ) from None


class _Session:
    """The session of one event loop: its pooled connections are sockets of that loop."""

    __slots__ = ("__weakref__", "closer", "loop", "session")

    def __init__(self, loop: object, session: aiohttp.ClientSession) -> None:
        self.loop = loop
        self.session = session
        self.closer: AsyncGenerator[None, None] | None = None


async def _close_with_loop(
    session: aiohttp.ClientSession, owner: weakref.ref[_Session]
) -> AsyncGenerator[None, None]:
    """Parked at its ``yield`` for the life of the loop (as ``transport._close_with_loop``):
    the loop closes its unfinished async generators before itself, so the session is closed on
    its own loop, not dropped with live sockets."""
    try:
        yield
    finally:
        held = owner()
        if held is not None:
            held.loop = None  # never handed out again: a later request here builds anew
        await session.close()


class AiohttpTransport:
    """aiohttp with one ``ClientSession`` per event loop (``run_sync`` starts a new loop per
    call, and a pooled connection belongs to the loop that opened it).

    aiohttp's connector keeps idle connections per host in a list it pops from, so one pool
    stays cheap at many connections: no shards, unlike ``Httpx2Transport``.
    """

    def __init__(
        self,
        *,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_connections: int = 1024,
    ) -> None:
        self._max_connections = max(1, max_connections)
        # ``connect`` bounds the wait for a pooled slot plus the connect (httpx2's pool and
        # connect timeouts), ``sock_read`` each read (httpx2's read timeout); no total.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=connect_timeout, sock_read=timeout
        )
        self._timed = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=connect_timeout, sock_read=None
        )
        self._ssl: ssl.SSLContext | None = None  # one CA store for every loop, made on first use
        self._held = _Session(None, None)  # type: ignore[arg-type]  # matches no loop
        self._local = threading.local()
        self._ssl_lock = threading.Lock()

    def _ssl_context(self) -> ssl.SSLContext:
        with self._ssl_lock:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return self._ssl

    async def _session_for(self, loop: object) -> _Session:
        held: _Session | None = getattr(self._local, "held", None)
        if held is None or held.loop is not loop:
            if not isinstance(loop, asyncio.AbstractEventLoop):
                raise ConfigurationError(
                    "the aiohttp transport runs on asyncio only: use the default httpx2 "
                    "transport under trio"
                )
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ssl=self._ssl_context()
            )
            session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, raise_for_status=False
            )
            held = _Session(loop, session)
            held.closer = _close_with_loop(session, weakref.ref(held))
            await held.closer.asend(None)  # the first step registers it with this loop
            self._local.held = held
        self._held = held
        return held

    async def _session(self) -> aiohttp.ClientSession:
        held = self._held
        if held.loop is not (loop := current_loop()):  # one identity check per request
            held = await self._session_for(loop)
        return held.session

    def post(
        self, url: str, headers: Mapping[str, str], body: bytes, *, timed: bool = False
    ) -> _Post:
        return _Post(self, url, headers, body, self._timed if timed else self._timeout)

    async def get(self, url: str, headers: Mapping[str, str]) -> bytes:
        """GET a small JSON resource (``/models``): the body of a 200, else an APIError."""
        session = await self._session()
        try:
            async with session.get(url, headers=headers.items()) as response:
                raw = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _unreachable(url, exc) from None
        if response.status != 200:
            raise APIConnectionError(f"GET {url} answered {response.status}")
        return raw

    async def aclose(self) -> None:
        """Close this loop's session (other loops' close when their loop ends)."""
        loop = current_loop()
        for held in (self._held, getattr(self._local, "held", None)):
            if held is not None and held.loop is loop and held.closer is not None:
                await held.closer.aclose()  # runs its finally: closes the session
                return


class _Post:
    """One POST as an async context manager: the response, released on exit (back to the pool
    when read to its end, else closed). A class, not ``@asynccontextmanager``: no generator to
    start and finalise per request."""

    __slots__ = ("_body", "_headers", "_response", "_timeout", "_transport", "_url")

    def __init__(
        self,
        transport: AiohttpTransport,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self._transport = transport
        self._url = url
        self._headers = headers
        self._body = body
        self._timeout = timeout
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> RawResponse:
        session = await self._transport._session()
        try:
            self._response = await session.post(
                self._url,
                headers=header_pairs(self._headers),  # aiohttp takes pairs from anything
                data=self._body,
                timeout=self._timeout,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _unreachable(self._url, exc) from None
        return _AiohttpResponse(self._response)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.release()


def _unreachable(url: str, exc: BaseException) -> APIConnectionError:
    # The message names the host, never the request headers (the key lives there).
    target = _host_port(url)
    if isinstance(exc, aiohttp.ClientConnectorError) and (
        isinstance(exc.os_error, ConnectionRefusedError) or _refused(exc)
    ):
        return NothingListeningError(f"connection refused by {target}")
    return APIConnectionError(f"could not reach {target} ({type(exc).__name__}: {exc})")


def _host_port(url: str) -> str:
    from yarl import URL

    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"
