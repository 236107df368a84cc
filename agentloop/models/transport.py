"""The HTTP seam: the one place that knows which HTTP library carries our bytes.

Model clients call ``Transport.post`` and get status, headers and a body they can read whole or
iterate. ``Httpx2Transport`` is the default; another library (aiohttp, say) can be measured and
swapped in by implementing the same two methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import httpx2

from ..errors import APIConnectionError, StreamInterruptedError


class RawResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def iter_bytes(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...


class Transport(Protocol):
    def post(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> AbstractAsyncContextManager[RawResponse]: ...

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


class Httpx2Transport:
    """httpx2 with one pooled AsyncClient per transport."""

    def __init__(
        self,
        *,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_connections: int = 1000,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        self._client = client or httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout, connect=connect_timeout),
            limits=httpx2.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    @asynccontextmanager
    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> AsyncIterator[RawResponse]:
        request = self._client.build_request("POST", url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx2.TransportError as exc:
            # Note: the message names the host, never the request headers (the key lives there).
            raise APIConnectionError(
                f"could not reach {request.url.host}:{request.url.port} "
                f"({type(exc).__name__}: {exc})"
            ) from None
        try:
            yield _Httpx2Response(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
